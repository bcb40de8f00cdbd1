"""Promotion gates and the decision: a pure function of the measured candidates and the gates.

``decide(candidates, gates, teacher_accuracy)`` says, for every measured candidate, which gates it
passes (with the measured value and the threshold), which candidate wins (the fastest passing one,
ties broken by size), and, when none passes, the best-effort candidate and the gates it failed.
No I/O here: the registry calls around it live in tasks/ (issue #5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.config import GatesConfig
from models.errors import SlimflowError


@dataclass
class GateResult:
    gate: str
    value: float | None
    threshold: float
    passed: bool

    def describe(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        op = ">=" if self.gate.startswith("min_") else "<="
        return f"{self.gate}: {shown} {op} {self.threshold:.4g} {'ok' if self.passed else 'FAILED'}"


@dataclass
class Verdict:
    name: str
    passed: bool
    gates: list[GateResult]
    p95_upper_ms: float | None
    p50_ms: float | None
    size_mb: float

    @property
    def failed(self) -> list[str]:
        return [g.gate for g in self.gates if not g.passed]


@dataclass
class Decision:
    winner: str | None
    reason: str
    verdicts: list[Verdict] = field(default_factory=list)
    best_effort: str | None = None
    best_effort_failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)


def _latency(row: dict[str, Any], batch: int) -> tuple[float | None, float | None]:
    for s in (row.get("bench") or {}).get("settings", []):
        if s["batch_size"] == batch and s["length"] == "data":
            return s["p95_ci_high_ms"], s["p50_ms"]
    return None, None


def judge(row: dict[str, Any], gates: GatesConfig, teacher_accuracy: float) -> Verdict:
    """Every configured gate for one measured candidate (a row of the candidate search)."""
    acc = row["test"]["accuracy"]
    p95_hi, p50 = _latency(row, gates.latency_batch_size)
    size = row["file_bytes"] / 2**20
    results = []
    if gates.min_test_accuracy is not None:
        results.append(
            GateResult("min_test_accuracy", acc, gates.min_test_accuracy, acc >= gates.min_test_accuracy)
        )
    if gates.min_retention is not None:
        ret = acc / teacher_accuracy if teacher_accuracy > 0 else 0.0
        results.append(GateResult("min_retention", ret, gates.min_retention, ret >= gates.min_retention))
    if gates.max_p95_ms is not None:
        ok = p95_hi is not None and p95_hi <= gates.max_p95_ms
        results.append(GateResult("max_p95_ms", p95_hi, gates.max_p95_ms, ok))
    if gates.max_size_mb is not None:
        results.append(GateResult("max_size_mb", size, gates.max_size_mb, size <= gates.max_size_mb))
    return Verdict(row["name"], all(g.passed for g in results), results, p95_hi, p50, size)


def decide(candidates: list[dict[str, Any]], gates: GatesConfig, teacher_accuracy: float) -> Decision:
    """The winner is the passing candidate with the lowest p50 (then p95 upper bound, then size).

    Only measured candidates (status ok, on ``gates.target`` if set) compete. With no passing
    candidate, nothing wins; the best effort is the one failing the fewest gates (then fastest).
    """
    rows = [
        r
        for r in candidates
        if r.get("status") == "ok" and (gates.target is None or r["target"] == gates.target)
    ]
    if not rows:
        return Decision(
            None, "no measured candidate to judge" + (f" on target {gates.target}" if gates.target else "")
        )
    verdicts = [judge(r, gates, teacher_accuracy) for r in rows]

    def speed(v: Verdict) -> tuple[float, float, float]:
        inf = float("inf")
        return (
            v.p50_ms if v.p50_ms is not None else inf,
            v.p95_upper_ms if v.p95_upper_ms is not None else inf,
            v.size_mb,
        )

    passing = sorted((v for v in verdicts if v.passed), key=speed)
    if passing:
        w = passing[0]
        return Decision(
            w.name,
            f"{w.name} passes every gate ({len(passing)} of {len(verdicts)} candidates pass); fastest at "
            f"batch {gates.latency_batch_size}",
            verdicts,
        )
    best = min(verdicts, key=lambda v: (len(v.failed), *speed(v)))
    detail = "; ".join(g.describe() for g in best.gates if not g.passed)
    return Decision(
        None,
        f"no candidate passes the gates; best effort {best.name} fails {detail}",
        verdicts,
        best.name,
        best.failed,
    )


# ------------------------------------------------------------------------------- registry I/O
# MLflow model registry with aliases (never the deprecated stages). Every alias move is read back,
# because alias lookups have been missing from search results in past MLflow versions.
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
    import mlflow  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    from models import tracking  # noqa: PLC0415

    tracking.use(client.tracking_uri)
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"candidate": str(candidate_dir)},
            registered_model_name=model_name,
            pip_requirements=_requirements(candidate_dir),
            input_example=pd.DataFrame({"text": ["an example review"]}),
        )
    version = str(info.registered_model_version)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, str(v)[:5000])
    client.log_text(run_id, card, f"model_card_v{version}.md")
    client.set_model_version_tag(
        model_name, version, "slimflow.model_card", f"runs:/{run_id}/model_card_v{version}.md"
    )
    return version


def _requirements(candidate_dir: str | Path) -> list[str]:
    from importlib import metadata  # noqa: PLC0415

    from models.runtime import describe  # noqa: PLC0415

    def pin(dist: str) -> str | None:
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            return None

    runtime = describe(candidate_dir).runtime
    dists = (
        ["onnxruntime", "tokenizers", "numpy", "pandas"]
        if runtime == "onnxruntime"
        else ["torch", "transformers", "torchao", "pandas"]
    )
    return [p for p in (pin(d) for d in dists) if p]


PICKLE_SUFFIXES = {".pkl", ".pickle", ".bin", ".pt", ".pth", ".joblib", ".ckpt", ".cloudpickle"}


def check_artifacts(root: str | Path) -> None:
    """Refuse a downloaded model that could run code when loaded: pickle-type files anywhere, or an
    MLmodel whose pyfunc flavor is not slimflow's models-from-code entry. Nothing is loaded here."""
    import yaml  # noqa: PLC0415

    root = Path(root)
    bad = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise RegistryError(
            f"{root}: refusing to load a model holding pickle-type files ({', '.join(bad[:5])}): unpickling"
            " runs arbitrary code; slimflow models carry safetensors or ONNX weights only"
        )
    mlmodel = next(iter(sorted(root.rglob("MLmodel"), key=lambda q: len(q.parts))), None)
    if mlmodel is not None:
        flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors", {})
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
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def promote(client: Any, model_name: str, version: str, tags: dict[str, str]) -> str | None:
    """Make ``version`` the champion; the old champion becomes ``previous``. Returns the old one."""
    old = alias_version(client, model_name, CHAMPION)
    if old == str(version):
        return old
    if old is not None:
        set_alias(client, model_name, PREVIOUS, old)
    set_alias(client, model_name, CHAMPION, version)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, str(v)[:5000])
    return old


def rollback(client: Any, model_name: str) -> tuple[str, str]:
    """Swap ``champion`` and ``previous`` (so a rollback can itself be undone). Returns (from, to)."""
    champ, prev = alias_version(client, model_name, CHAMPION), alias_version(client, model_name, PREVIOUS)
    if prev is None:
        raise RegistryError(f"{model_name} has no '{PREVIOUS}' version to roll back to (champion: {champ})")
    set_alias(client, model_name, CHAMPION, prev)
    if champ is not None:
        set_alias(client, model_name, PREVIOUS, champ)
    client.set_model_version_tag(model_name, prev, "slimflow.rolled_back_from", str(champ))
    return str(champ), prev


def model_card(
    row: dict[str, Any],
    verdict: Verdict,
    context: dict[str, Any],
    approval: dict[str, str] | None = None,
) -> str:
    """A short Markdown card for a registered version: what it is, what it was trained on, its
    figures and the gates it passed, so a reviewer in the MLflow UI sees why it may be promoted."""
    ctx = {"data_fingerprint": "?", "teacher_accuracy": float("nan"), **context}
    test = {"f1": float("nan"), "rows": "?", **row["test"]}
    lines = [
        f"# {ctx.get('model_name', 'slimflow model')}: {row['name']}",
        "",
        f"- **Candidate**: source `{row['source']}`, variant `{row['variant']}`, target `{row['target']}`, "
        f"runtime `{row['runtime']}`",
        f"- **Data**: `{ctx.get('data_source', '?')}`, fingerprint `{str(ctx['data_fingerprint'])[:16]}`, "
        f"splits {ctx.get('counts', {})}; Great Expectations: {ctx.get('gx', '?')}",
        f"- **Teacher**: `{ctx.get('teacher_model', '?')}`, test accuracy {ctx['teacher_accuracy']:.4f}",
    ]
    if context.get("student"):
        lines.append(f"- **Student**: {context['student']}")
    if context.get("steps"):
        lines.append(f"- **Compression steps**: {context['steps']}")
    lines += [
        f"- **Test accuracy**: {test['accuracy']:.4f} (macro F1 {test['f1']:.4f}, {test['rows']} rows)",
    ]
    for s in row.get("bench", {}).get("settings", []):
        lines.append(
            f"- **Latency** batch {s['batch_size']}, {s['length']} tokens: p50 {s['p50_ms']:.2f} ms "
            f"[95% CI {s['p50_ci_low_ms']:.2f}, {s['p50_ci_high_ms']:.2f}], p95 {s['p95_ms']:.2f} ms "
            f"(upper {s['p95_ci_high_ms']:.2f}), {s['throughput_eps']:.0f} examples/s"
        )
    hw = row.get("bench", {}).get("hardware_fingerprint")
    if hw:
        lines.append(f"- **Measured on**: {hw}, {row['bench'].get('threads')} threads")
    lines.append(f"- **Size**: {row['file_bytes'] / 2**20:.1f} MiB")
    lines += ["", "## Gates", ""]
    lines += [f"- {g.describe()}" for g in verdict.gates]
    lines += ["", "## Approval", ""]
    if approval:
        a = {"decision": "?", "reviewer": "?", "time": "?", "comment": "", **approval}
        lines.append(f"- {a['decision']} by **{a['reviewer']}** at {a['time']}: {a['comment']}")
    else:
        lines.append("- not reviewed yet")
    lines += [
        "",
        f"Pipeline run: `{context.get('run_id', '?')}`, git commit `{context.get('git_commit', '?')}`",
    ]
    return "\n".join(lines) + "\n"
