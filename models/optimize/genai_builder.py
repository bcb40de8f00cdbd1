"""Run onnxruntime-genai's model builder under this project's transformers 4.57 (a child process).

Why: the builder (onnxruntime-genai 0.18) is written against transformers 5, while optimum-onnx
0.1 -- the classifier export and the Optimum baseline every comparison runs -- caps transformers
below 4.58. For the decoder architectures slimflow handles (Llama and the models built like it)
the builder needs two things transformers 4 spells differently, and nothing else:

1. Names it imports at module level for other architectures (``Qwen3_5ForConditionalGeneration``,
   ...) that transformers 4 lacks: they get placeholder classes that fail if ever called.
2. The RoPE settings: transformers 5 keeps ``rope_theta`` and the scaling in ``rope_parameters``;
   transformers 4 has ``rope_theta`` and ``rope_scaling``. They are copied into the v5 form.

Both happen in this child process only (``python -m slimflow.models.optimize.genai_builder``
followed by the builder's own arguments); the pipeline's process and its transformers stay
untouched. The FP32 build reproduces PyTorch's logits (tests/models/optimize/test_genai.py).
Remote code is never trusted (the builder's ``hf_remote`` stays false).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import runpy
import sys
from pathlib import Path
from typing import Any


def _builder_dir() -> Path:
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("onnxruntime-genai is not installed: run `make install` (extra 'cpu')")
    return Path(spec.submodule_search_locations[0]) / "models"


def transformers_names(root: Path) -> set[str]:
    """Names the builder's modules import from ``transformers`` at module level."""
    names: set[str] = set()
    for f in root.rglob("*.py"):
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module == "transformers":
                names |= {a.name for a in node.names}
    return names


def _placeholder(name: str) -> type:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"transformers {name} is not available in this transformers version")

    return type(name, (), {"__init__": fail, "from_pretrained": classmethod(fail)})


def add_placeholders(names: set[str]) -> list[str]:
    """Placeholder classes for the ``names`` transformers lacks; returns those names."""
    import transformers

    missing = []
    for n in sorted(names):
        try:
            getattr(transformers, n)  # also loads the real ones (which may replace the module)
        except (AttributeError, ImportError):
            missing.append(n)
    live = sys.modules["transformers"]
    for n in missing:
        setattr(live, n, _placeholder(n))
    return missing


def v5_rope(config: Any) -> None:
    """``rope_parameters`` in transformers 5 form, from transformers 4's ``rope_theta``/``rope_scaling``."""
    if isinstance(getattr(config, "rope_parameters", None), dict):
        return
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    config.rope_parameters = {"rope_theta": getattr(config, "rope_theta", 10000.0), **scaling}
    if getattr(config, "rope_scaling", 0) is None:
        config.rope_scaling = {}


def main(argv: list[str]) -> None:
    root = _builder_dir()
    add_placeholders(transformers_names(root))
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path)

    base = importlib.import_module("builders.base")
    original = base.Model.make_config_init

    def make_config_init(self: Any, config: Any) -> Any:
        v5_rope(config)
        return original(self, config)

    base.Model.make_config_init = make_config_init
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
