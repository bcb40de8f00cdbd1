"""The MLflow model registry, with aliases (never the deprecated stages): register candidates as
pyfunc models loaded from code (no pickles), move and read back aliases, roll back, resolve
``models:/`` references, refuse downloads that could run code when loaded.

Every alias move is read back, because alias lookups have been missing from search results in past
MLflow versions. A promotion or rollback writes two aliases; callers hold the model's registry lock
around it (``slimflow.tasks.locks``), the move is recorded as an intent on the registered model
before the first write and retired after the last, and the next call completes an interrupted one:
a crash or a dead tracking server between the writes never leaves a version out of both aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.modelfiles import PICKLE_SUFFIXES
from slimflow.models.core.names import parse_model_uri
from slimflow.models.core.redact import redact
from slimflow.models.core.yamlfiles import load_yaml
from slimflow.models.families import get_family
from slimflow.models.optimize.predictors import CANDIDATE_FILE, describe
from slimflow.models.optimize.targets import get_target
from slimflow.models.release import tracking

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
ENTRY = Path(__file__).with_name("mlflow_entry.py")


class RegistryError(SlimflowError, RuntimeError):
    """An alias did not land, or the registry refused a write."""


def register_candidate(
    client: Any,
    run_id: str,
    model_name: str,
    candidate_dir: str | Path,
    tags: dict[str, str],
    card: str,
) -> str:
    """Log ``candidate_dir`` as an MLflow pyfunc model in ``run_id`` (loads from raw text, no pickles)
    and register it as a new version of ``model_name``; returns the version."""
    import mlflow

    tracking.use(client.tracking_uri)
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"candidate": str(candidate_dir)},
            registered_model_name=model_name,
            pip_requirements=_requirements(candidate_dir),
            input_example=get_family(describe(candidate_dir).task).input_example(),
        )
    version = str(info.registered_model_version)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, redact(str(v))[:5000])
    client.update_model_version(model_name, version, description=card)  # the card, shown on its page
    client.log_text(run_id, card, f"model_card_v{version}.md")
    client.set_model_version_tag(
        model_name, version, "slimflow.model_card", f"runs:/{run_id}/model_card_v{version}.md"
    )
    return version


def _requirements(candidate_dir: str | Path) -> list[str]:
    """What the registered model needs to run, pinned to the versions it was checked with. ONNX
    candidates for a GPU target need onnxruntime-gpu (same release as the onnxruntime used here)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    info = describe(candidate_dir)
    if info.runtime == "cascade":  # what either part needs, once
        parts = [
            *_requirements(Path(candidate_dir) / "fast"),
            *_requirements(Path(candidate_dir) / "fallback"),
        ]
        return sorted(dict.fromkeys(parts))
    if info.runtime == "onnxruntime":
        ort = version("onnxruntime-gpu") or version("onnxruntime")
        gpu = get_target(info.target).device == "gpu" or version("onnxruntime-gpu") is not None
        dists = [("onnxruntime-gpu" if gpu else "onnxruntime", ort), ("tokenizers", None), ("numpy", None),
                 ("pandas", None)]  # fmt: skip
    elif info.runtime == "onnxruntime-genai":  # the build runs in genai; the chat template in transformers
        genai = "onnxruntime-genai-cuda" if version("onnxruntime-genai-cuda") else "onnxruntime-genai"
        dists = [(d, None) for d in (genai, "onnxruntime", "transformers", "tokenizers", "jinja2", "numpy",
                                     "pandas")]  # fmt: skip
    else:
        dists = [(d, None) for d in ("torch", "transformers", "torchao", "pandas")]
    out = []
    for dist, pinned in dists:
        v = pinned or version(dist)
        if v:
            out.append(f"{dist}=={v}")
    return out


def check_artifacts(root: str | Path) -> None:
    """Refuse a downloaded model that could run code when loaded: pickle-type files anywhere, or an
    MLmodel whose pyfunc flavor is not slimflow's models-from-code entry. Nothing is loaded here."""

    root = Path(root)
    bad = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise RegistryError(
            f"{root}: refusing to load a model holding pickle-type files ({', '.join(bad[:5])}): unpickling"
            " runs arbitrary code; slimflow models carry safetensors or ONNX weights only"
        )
    mlmodel = next(iter(sorted(root.rglob("MLmodel"), key=lambda q: len(q.parts))), None)
    if mlmodel is not None:
        flavors = (load_yaml(mlmodel.read_text(encoding="utf-8"), str(mlmodel)) or {}).get("flavors", {})
        pyfunc = flavors.get("python_function", {})
        if set(flavors) != {"python_function"} or not str(pyfunc.get("model_code_path", "")).endswith(
            ENTRY.name
        ):
            raise RegistryError(
                f"{mlmodel}: not a slimflow model (flavors {sorted(flavors)}, loader"
                f" {pyfunc.get('loader_module')}); refusing to load it"
            )


def set_alias(client: Any, model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` and read it back."""
    client.set_registered_model_alias(model_name, alias, version)
    got = client.get_model_version_by_alias(model_name, alias).version
    if str(got) != str(version):
        raise RegistryError(f"alias {model_name}@{alias} reads back version {got}, expected {version}")


def alias_version(client: Any, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at; None when the alias or the model does not exist. Any other
    failure (a dead tracking server) is raised: it must never read as "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as e:
        if e.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


class ChampionChanged(RegistryError):
    """The champion is not the one the promotion was decided against."""


UNCHECKED: Any = object()  # promote() without a compare-and-set on the champion
INTENT_TAG = "slimflow.alias_intent"  # an alias move in progress (completed by the next call)
LAST_OP_TAG = "slimflow.alias_last_op"  # the last completed move (rollback refuses to repeat itself)


def _model_tags(client: Any, model_name: str) -> dict[str, str]:
    return dict(client.get_registered_model(model_name).tags or {})


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def recover(client: Any, model_name: str) -> dict[str, Any] | None:
    """Complete an alias move that a crash or a dead tracking server interrupted: the intent record
    written before the first alias write names the end state; it is applied (every write read back)
    and removed. Returns the completed intent, None if nothing was pending. Call under the model's
    registry lock."""
    import json

    raw = _model_tags(client, model_name).get(INTENT_TAG)
    if not raw:
        return None
    intent = json.loads(raw)
    _apply(client, model_name, intent)
    return intent


def _apply(client: Any, model_name: str, intent: dict[str, Any]) -> None:
    """Write the intent's aliases (champion first on a rollback, previous first on a promotion:
    the version that must not drop out of every alias is written first), then retire the intent."""
    import json

    writes = [(PREVIOUS, intent.get("previous")), (CHAMPION, intent["champion"])]
    if intent["op"] == "rollback":
        writes.reverse()
    for alias, version in writes:
        if version is not None:
            set_alias(client, model_name, alias, str(version))
    client.set_registered_model_tag(model_name, LAST_OP_TAG, json.dumps({**intent, "done": _now()}))
    client.delete_registered_model_tag(model_name, INTENT_TAG)


def _move(client: Any, model_name: str, intent: dict[str, Any]) -> None:
    import json

    client.set_registered_model_tag(model_name, INTENT_TAG, json.dumps(intent))
    _apply(client, model_name, intent)


def promote(
    client: Any, model_name: str, version: str, tags: dict[str, str], expected_champion: Any = UNCHECKED
) -> str | None:
    """Make ``version`` the champion; the old champion becomes ``previous``. Returns the old one.

    ``expected_champion`` (a version or None) is the champion the decision was made against: if the
    champion is another one now (a promotion or rollback happened meanwhile, an approval answered
    hours later), nothing moves and ``ChampionChanged`` says why. Idempotent: promoting the champion
    again changes nothing. Call under the model's registry lock (``slimflow.tasks.locks``)."""
    version = str(version)
    recover(client, model_name)
    old = alias_version(client, model_name, CHAMPION)
    if old == version:
        return old
    expected = None if expected_champion in (None, UNCHECKED) else str(expected_champion)
    if expected_champion is not UNCHECKED and old != expected:
        now, then = (f"v{x}" if x else "unset" for x in (old, expected))
        raise ChampionChanged(
            f"{model_name}: the champion is now {now}, not {then} as when this promotion of v{version} "
            "was decided (another run promoted or rolled back meanwhile): nothing moved; run the pipeline "
            "again to decide against the current champion"
        )
    prev = alias_version(client, model_name, PREVIOUS)
    intent = {"op": "promote", "champion": version, "previous": old if old is not None else prev}
    _move(client, model_name, {**intent, "before": {"champion": old, "previous": prev}, "time": _now()})
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, redact(str(v))[:5000])
    return old


def rollback(client: Any, model_name: str, to: str | None = None) -> tuple[str | None, str]:
    """Move ``champion`` to ``to`` (default: the recorded ``previous``); the version rolled back from
    becomes ``previous``. Returns (from, to); from == to when ``to`` already is the champion (a
    repeated explicit rollback changes nothing). A default rollback right after a rollback is refused:
    it would flip back to the version just rolled back from. Call under the model's registry lock."""
    import json

    recover(client, model_name)
    champ, prev = alias_version(client, model_name, CHAMPION), alias_version(client, model_name, PREVIOUS)
    target = str(to) if to is not None else prev
    if target is None:
        raise RegistryError(
            f"{model_name} has no '{PREVIOUS}' version to roll back to (champion: {champ}); "
            "name one with --to VERSION"
        )
    if target == champ:
        return champ, target
    if to is None:
        last = json.loads(_model_tags(client, model_name).get(LAST_OP_TAG) or "{}")
        if last.get("op") == "rollback" and str(last.get("champion")) == champ:
            raise RegistryError(
                f"{model_name}: v{champ} is champion by a rollback from v{last.get('previous')} "
                f"({last.get('done', last.get('time'))}); rolling back again would undo it. To return to "
                f"v{prev}, say so: rollback --to {prev}"
            )
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(model_name, target)
    except MlflowException:
        raise RegistryError(f"{model_name} has no version {target} to roll back to") from None
    intent = {"op": "rollback", "champion": target, "previous": champ}
    _move(client, model_name, {**intent, "before": {"champion": champ, "previous": prev}, "time": _now()})
    client.set_model_version_tag(model_name, target, "slimflow.rolled_back_from", str(champ))
    return champ, target


def resolve_candidate(ref: str, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """A local path for ``ref``: a folder/.onnx file as is, or ``models:/NAME@ALIAS`` (also
    ``models:/NAME/VERSION``) downloaded from the MLflow registry. Registered artifacts are
    searched for a candidate folder (candidate.json), else an .onnx file or safetensors weights."""
    if not ref.startswith("models:/"):
        p = Path(ref).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"model not found: {p}")
        return p
    import mlflow

    parse_model_uri(ref)  # a traversal-shaped name is refused before anything is downloaded
    if tracking_uri:
        tracking.use(tracking_uri)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dst) if dst else None)
        )
    except mlflow.exceptions.MlflowException as e:
        raise FileNotFoundError(f"{ref}: {str(e).splitlines()[0]}") from None
    for pattern in (CANDIDATE_FILE, "*.onnx", "*.safetensors"):
        hits = sorted(local.rglob(pattern), key=lambda q: len(q.parts))
        if hits:
            found = hits[0]
            return found if pattern == "*.onnx" and found.name != "model.onnx" else found.parent
    raise FileNotFoundError(f"{ref}: downloaded to {local}, but it holds no model slimflow can run")


def record_approval(client: Any, model_name: str, version: str, approval: dict[str, str]) -> None:
    """The review outcome on the version: ``slimflow.approval.*`` tags and the card's approval line."""
    from slimflow.models.release.model_card import with_approval

    for k, v in approval.items():
        client.set_model_version_tag(model_name, version, f"slimflow.approval.{k}", redact(str(v))[:5000])
    card = client.get_model_version(model_name, version).description or ""
    client.update_model_version(model_name, version, description=with_approval(card, approval))
