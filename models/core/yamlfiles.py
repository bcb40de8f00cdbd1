"""YAML read with bounds: a size limit, and the document's size *after* aliases are expanded.

A few hundred bytes of nested anchors and aliases (a "billion laughs" document) expand to billions
of nodes: PyYAML builds them as shared references cheaply, but everything that walks the result
(validation, JSON dumps, MLflow params) expands them, for minutes and gigabytes. The composed node
graph is measured before anything is constructed, and recursive aliases are refused too.
"""

from __future__ import annotations

from typing import Any

from slimflow.models.core.errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB of YAML
MAX_NODES = 100_000  # nodes after alias expansion


def _expanded_size(root: Any, limit: int, origin: str) -> int:
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{origin}: a YAML alias refers to itself (a recursive structure): refused")
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError(
                    f"{origin}: the YAML expands to more than {limit:,} values once its aliases (*name) are"
                    " resolved: refused (nested anchors turn a few hundred bytes into billions of values)"
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml(text: str, origin: str, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load(text)``, refused with a ConfigError naming ``origin`` when the text is over
    ``max_bytes`` or its aliases expand to more than ``max_nodes`` values. Errors never quote it."""
    import yaml

    if len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise ConfigError(
            f"{origin}: {len(text):,} characters of YAML, more than the {max_bytes:,} bytes allowed"
        )
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, max_nodes, origin)
        return loader.construct_document(node)
    finally:
        loader.dispose()
