"""The candidate search: which (source model x variant x target) combinations to try, how each is
built and checked, and which one wins.

A candidate is a self-contained folder (see ``predictors.py``). Building one never raises for a
candidate-specific problem the user should read about (parity, agreement, an unmatched keep_fp32
pattern): the caller records it as failed with the message and the search goes on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from slimflow.models.core.results import StageResult
from slimflow.models.families import DEFAULT_TASK, get_family
from slimflow.models.families.base import AgreementConfig
from slimflow.models.optimize.bench import setting
from slimflow.models.optimize.config import OptimizeConfig
from slimflow.models.optimize.export import ParityError
from slimflow.models.optimize.predictors import (
    CANDIDATE_FILE,
    MODEL_LOCK,
    CandidateInfo,
    OrtPredictor,
    describe,
    load_predictor,
)
from slimflow.models.optimize.quantizers import QuantContext, apply_quantizer
from slimflow.models.optimize.targets import get_target


class SearchResult(StageResult):
    """The candidate search: every candidate's record (build, checks, test figures, benchmark), the
    combinations skipped and why, the choice and the Pareto plot."""

    candidates: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    selection: dict[str, Any]
    pareto_png: str | None = None

    def row(self, name: str | None) -> dict[str, Any] | None:
        return next((r for r in self.candidates if r["name"] == name), None)

    @property
    def best(self) -> dict[str, Any] | None:
        """The chosen candidate's record (None when none meets the accuracy bar)."""
        return self.row(self.selection.get("best"))

    def summary(self) -> dict[str, Any]:
        """For the run summary: without per-candidate hardware blocks (logged once)."""
        rows = []
        for r in self.candidates:
            r = dict(r)
            if "bench" in r:
                r["bench"] = {k: v for k, v in r["bench"].items() if k != "hardware"}
            rows.append(r)
        return {**self.model_dump(exclude={"candidates", "mlflow_run_id"}), "candidates": rows}


FP32_ONNX = "onnx_fp32"
FP32_TORCH = "torch_fp32"
FP32_GENAI = "genai_fp32"  # causal LMs: the onnxruntime-genai FP32 build
GENAI = "onnxruntime-genai"
FP32_OF_RUNTIME = {"torch": FP32_TORCH, "onnxruntime": FP32_ONNX, GENAI: FP32_GENAI}
REFERENCE_BATCH = 32  # prompts per batch of a PyTorch reference's greedy answers (agreement check)


@dataclass(frozen=True)
class CandidateSpec:
    source: str  # teacher | student | compressed
    variant: str  # onnx_fp32 | torch_fp32 | a quantizer kind
    target: str
    runtime: str
    int8_preset: str | None = None  # the target's INT8 preset, resolved where the plan is made

    @property
    def name(self) -> str:
        return f"{self.source}/{self.variant}/{self.target}"

    @property
    def reference(self) -> str | None:
        """The FP32 candidate this one is compared with (agreement, speed); None for FP32 ones."""
        if self.variant in FP32_OF_RUNTIME.values():
            return None
        return f"{self.source}/{FP32_OF_RUNTIME[self.runtime]}/{self.target}"


@dataclass
class Skipped:
    name: str
    reason: str


def plan(
    cfg: OptimizeConfig, sources: list[str], task: str = DEFAULT_TASK
) -> tuple[list[CandidateSpec], list[Skipped]]:
    """Every candidate to build, plus the combinations skipped and why (never silently dropped):
    unavailable targets, runtimes a target cannot run, and quantizers made for other devices or
    other task families."""
    wanted = cfg.sources or sources
    missing = [s for s in wanted if s not in sources]
    specs: list[CandidateSpec] = []
    skipped: list[Skipped] = [
        Skipped(f"{s}/*/*", f"the pipeline made no {s} model (enable its stage)") for s in missing
    ]
    quant = [(q.variant, type(q)) for q in cfg.quantize]
    quantizer_cls = dict(quant)
    torch_needed = cfg.include_torch_fp32 or any(cls.runtime == "torch" for _, cls in quant)
    # a generative family's FP32 reference is the onnxruntime-genai build, not an optimum export
    fp32_runtime = GENAI if get_family(task).generative else "onnxruntime"
    for target_name in cfg.targets:
        target = get_target(target_name).resolved()
        ok, why = target.availability()
        for source in (s for s in wanted if s in sources):
            variants: list[tuple[str, str]] = []
            if cfg.include_onnx_fp32 or any(cls.runtime == fp32_runtime for _, cls in quant):
                variants.append((FP32_OF_RUNTIME[fp32_runtime], fp32_runtime))
            if torch_needed:
                variants.append((FP32_TORCH, "torch"))
            variants += [(variant, cls.runtime) for variant, cls in quant]
            for variant, runtime in variants:
                spec = CandidateSpec(source, variant, target_name, runtime, target.int8_preset)
                rule = next((r for r in cfg.skip if fnmatch.fnmatchcase(spec.name, r.match)), None)
                if rule is not None:
                    skipped.append(Skipped(spec.name, f"left out by optimize.skip: {rule.reason}"))
                    continue
                if not ok:
                    skipped.append(Skipped(spec.name, f"target {target_name} unavailable: {why}"))
                    continue
                if runtime == "torch" and target.device != "cpu":
                    skipped.append(
                        Skipped(spec.name, "PyTorch candidates are measured on the cpu target only")
                    )
                    continue
                qcls = quantizer_cls.get(variant)
                if qcls is not None and target.device not in qcls.devices:
                    devices = "/".join(qcls.devices)
                    skipped.append(
                        Skipped(spec.name, f"{variant} is for {devices} targets, not {target.device}")
                    )
                    continue
                if qcls is not None and task not in qcls.families:
                    skipped.append(Skipped(spec.name, f"{variant} does not support the {task} task family"))
                    continue
                specs.append(spec)
    return specs, skipped


def candidate_info(
    base: CandidateInfo, spec: CandidateSpec, torch_quant: dict[str, Any] | None = None
) -> CandidateInfo:
    """A candidate's record: what the source model says of itself (task, labels, lengths, answer
    budget) with the candidate's runtime, target and variant."""
    return replace(
        base,
        runtime=spec.runtime,
        target=spec.target,
        variant=spec.variant,
        source=spec.source,
        model_file="model.onnx" if spec.runtime == "onnxruntime" else None,
        torch_quant=torch_quant,
    )


def fp32_candidate(src: Path, spec: CandidateSpec, out: Path, base: CandidateInfo) -> None:
    """An FP32 model as a candidate: the ONNX export (parity checked at export) or the PyTorch model;
    ``base`` is the source model's own record (``describe``)."""
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    candidate_info(base, spec).save(out)


@dataclass
class BuildResult:
    name: str
    path: str
    report: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_quantized(
    spec: CandidateSpec,
    quant_cfg: Any,
    export_dir: Path,
    model_dir: Path,
    out: Path,
    calibration_texts: list[str],
    validation_texts: list[str],
    agreement_cfg: AgreementConfig,
    threads: int,
    reference_cache: Path | None = None,
) -> BuildResult:
    """Quantize, then check the result agrees with its FP32 reference on the validation split.

    ``reference_cache``: a file for a generative reference's answers on these rows, shared by the
    builds of one model (``cached_reference_answers``). Raises ParityError (with the reason) when
    the quantized model disagrees or collapses.
    """
    src = describe(model_dir)
    family = get_family(src.task)
    reference = load_predictor(export_dir if spec.runtime == "onnxruntime" else model_dir, threads)
    if spec.runtime == "onnxruntime":
        for f in export_dir.iterdir():  # tokenizer + config
            if f.is_file() and f.suffix != ".onnx":
                shutil.copy2(f, out / f.name)
    if family.generative and reference_cache is not None:
        answers = partial(reference.predict, batch_size=REFERENCE_BATCH)  # PyTorch batches, genai does not
        ref_logits: Any = cached_reference_answers(answers, validation_texts, reference_cache)
    else:
        ref_logits = reference.predict(validation_texts)

    def agreement_of(onnx_file: Path) -> Any:
        """An ONNX variant scored as the final check scores the candidate (validation rows)."""
        trial = OrtPredictor(Path(onnx_file), reference.tokenizer, reference.info, threads, tuned=False)
        return family.agreement(ref_logits, trial.predict(validation_texts), src.labels, agreement_cfg)

    ctx = QuantContext(
        onnx_fp32=export_dir / "model.onnx",
        onnx_unfused=export_dir / "unfused" / "model.onnx",
        torch_dir=model_dir,
        tokenizer=reference.tokenizer,
        calibration_texts=calibration_texts,
        max_length=src.max_length,
        target=get_target(spec.target).with_preset(spec.int8_preset),
        family=family,
        agreement=agreement_of if spec.runtime == "onnxruntime" else None,
    )
    try:
        with MODEL_LOCK:
            report = apply_quantizer(quant_cfg, ctx, out)
    except ValueError as e:  # a config problem specific to this candidate (e.g. keep_fp32 typo)
        raise ParityError(f"{spec.name}: {e}") from None
    candidate_info(src, spec, report.recipe or None if spec.runtime == "torch" else None).save(out)
    cand = load_predictor(out, threads)
    got_logits = cand.predict(validation_texts)
    check = family.agreement(ref_logits, got_logits, src.labels, agreement_cfg)
    if not check.passed:
        raise ParityError(f"{spec.name}: {check.message}")
    return BuildResult(spec.name, str(out), asdict(report), check.to_dict())


def cached_reference_answers(predict: Any, texts: list[str], path: Path) -> list[str]:
    """A generative reference's greedy answers to ``texts``, computed once and kept in ``path``
    (JSON, with a hash of the texts it answers): every quantized build of one fine-tuned model is
    checked against the same answers (PyTorch, batched: 30 s for 150 prompts on a 2-core AMD
    EPYC, 62 s one by one). A file for other texts, or one that does not parse, is recomputed."""
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("texts_sha256") == digest and len(saved.get("answers", [])) == len(texts):
            return [str(a) for a in saved["answers"]]
    except (OSError, ValueError, AttributeError):
        pass
    answers = [str(a) for a in predict(texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # parallel builds may race: last wins
    tmp.write_text(json.dumps({"texts_sha256": digest, "answers": answers}), encoding="utf-8")
    tmp.replace(path)
    return answers


def score_on_test(path: str | Path, frame: Any, threads: int) -> dict[str, Any]:
    """The family's test figures of a candidate on the prepared test split (classification:
    accuracy, macro F1 from raw texts; causal LMs: exact match and perplexity)."""
    predictor = load_predictor(path, threads)
    return predictor.family.test_figures(predictor, frame)


def build_genai_fp32(
    model_dir: Path, spec: CandidateSpec, out: Path, prompts: list[str], cfg: Any, threads: int
) -> dict[str, Any]:
    """The FP32 onnxruntime-genai build of a causal LM as a candidate, checked against PyTorch on
    validation prompts: the greedy tokens must be the same and the logits within 100x the export
    tolerance (a 30-layer decoder adds up rounding a classifier's few layers do not)."""
    import tempfile

    from slimflow.models.optimize import genai as G

    src = describe(model_dir)
    gpu = get_target(spec.target).device == "gpu"
    build = G.GenaiBuildConfig(
        precision="fp16" if gpu else "fp32", execution_provider="cuda" if gpu else "cpu"
    )
    with MODEL_LOCK, tempfile.TemporaryDirectory(prefix="genai-cache-") as cache:
        G.build(model_dir, out, build, cache)
    candidate_info(src, spec).save(out)
    cand, ref = load_predictor(out, threads), load_predictor(model_dir, threads)
    ids = [ref.prompt_ids(p) for p in prompts]
    report = G.parity(ref.runner, cand.runner, ids, new_tokens=16, stop=ref.ends)
    tol = 100 * cfg.atol
    if report["greedy_token_agreement"] < 1.0 or report["max_abs_logit_diff"] > tol:
        raise ParityError(
            f"{spec.name}: onnxruntime-genai FP32 build differs from PyTorch (max |logit diff| "
            f"{report['max_abs_logit_diff']:.2e}, allowed {tol:.0e}; greedy tokens agree on "
            f"{report['greedy_token_agreement']:.3f})"
        )
    return report


def identity(folder: str | Path) -> str:
    """What makes a candidate this candidate: its weights and how they are run (candidate.json holds
    the runtime, target and any load-time quantization recipe). Two candidates sharing FP32 weights
    (PyTorch FP32 and torchao INT8) therefore differ; the registry keys idempotency on this."""
    import hashlib

    from slimflow.models.optimize import cascade

    folder = Path(folder)
    if cascade.is_cascade(folder):  # two candidates and a threshold
        return cascade.identity(folder, identity)
    h = hashlib.sha256()
    weights = sorted(folder.glob("*.onnx")) or sorted(folder.glob("*.safetensors"))
    for f in [*weights, folder / CANDIDATE_FILE]:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- choosing
def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points (accuracy, latency) that no other point beats on both (>= acc, <= latency,
    strictly better on one)."""
    front = []
    for name, (acc, lat) in points.items():
        dominated = any(
            (a >= acc and t <= lat) and (a > acc or t < lat)
            for other, (a, t) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][1])


def select(
    rows: list[dict[str, Any]],
    teacher_accuracy: float,
    cfg: OptimizeConfig,
    metric: str = "accuracy",
    latency: str = "latency, test-text lengths",
) -> dict[str, Any]:
    """Mark each measured candidate: meets the quality bar?, on the Pareto front?, slower than its
    FP32 reference?; and name the best (lowest p50 at ``rank_batch_size`` among those meeting the bar).

    ``rows`` are candidate records with 'name', 'status', 'reference', 'test' and 'bench' keys;
    ``metric`` is the task family's primary figure in 'test' (accuracy, exact match), and
    ``teacher_accuracy`` the teacher's value of it. A generative candidate's p50 is its per-token
    decode latency.
    """
    bar = cfg.accuracy_bar
    floor = 0.0
    if bar.min_retention is not None:
        floor = max(floor, bar.min_retention * teacher_accuracy)
    if bar.min_accuracy is not None:
        floor = max(floor, bar.min_accuracy)
    measured = [r for r in rows if r["status"] == "ok"]
    by_name = {r["name"]: r for r in measured}

    def p50(r: dict[str, Any], b: int) -> float:
        return setting(r["bench"], b)["p50_ms"]

    rank_b = cfg.rank_batch_size
    for r in measured:
        r["retention"] = r["test"][metric] / teacher_accuracy if teacher_accuracy else None
        r["meets_bar"] = r["test"][metric] >= floor
        r["speedup_vs_reference"] = None
        r["slower_than_reference"] = False
        ref = by_name.get(r.get("reference") or "")
        if ref is not None:
            sizes = [x["batch_size"] for x in ref["bench"]["settings"] if x.get("length", "data") == "data"]
            slower = [b for b in sizes if p50(r, b) > p50(ref, b)]
            r["slower_than_reference"] = bool(slower)
            r["slower_at_batch_sizes"] = slower
            r["speedup_vs_reference"] = p50(ref, rank_b) / p50(r, rank_b)
    points = {r["name"]: (r["test"][metric], p50(r, rank_b)) for r in measured}
    front = pareto_front(points)
    for r in measured:
        r["pareto"] = r["name"] in front
    eligible = sorted(
        (r for r in measured if r["meets_bar"]), key=lambda r: (p50(r, rank_b), -r["test"][metric])
    )
    best = eligible[0]["name"] if eligible else None
    words = metric.replace("_", " ")
    reason = (
        f"lowest p50 at batch {rank_b} among {len(eligible)} candidate(s) with test {words} >= {floor:.4f}"
        if best
        else f"no candidate reaches test {words} {floor:.4f} (bar: {bar.model_dump()})"
    )
    return {
        "metric": metric,
        "latency": latency,
        "best": best,
        "reason": reason,
        "accuracy_floor": floor,
        "teacher_accuracy": teacher_accuracy,
        "pareto_front": front,
        "slower_than_reference": [r["name"] for r in measured if r["slower_than_reference"]],
        "rank_batch_size": rank_b,
    }


def plot_pareto(rows: list[dict[str, Any]], selection: dict[str, Any], path: Path) -> Path:
    """Test accuracy vs p50 latency of every measured candidate; front joined, best circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = selection["rank_batch_size"]
    metric = selection.get("metric", "accuracy")
    measured = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    markers = {"teacher": "s", "student": "o", "compressed": "D"}
    for r in measured:
        x, y = setting(r["bench"], b)["p50_ms"], r["test"][metric]
        lo, hi = setting(r["bench"], b)["p50_ci_low_ms"], setting(r["bench"], b)["p50_ci_high_ms"]
        color = "tab:green" if r.get("meets_bar") else "tab:gray"
        ax.errorbar(
            x, y, xerr=[[x - lo], [hi - x]], fmt=markers.get(r["source"], "o"), color=color, capsize=3, ms=7
        )
        ax.annotate(
            r["name"].rsplit("/", 1)[0], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7
        )
    front = [r for r in measured if r.get("pareto")]
    front.sort(key=lambda r: setting(r["bench"], b)["p50_ms"])
    if front:
        ax.plot(
            [setting(r["bench"], b)["p50_ms"] for r in front],
            [r["test"][metric] for r in front],
            "--",
            color="tab:blue",
            lw=1,
            label="Pareto front",
        )
    if selection.get("best"):
        r = next(r for r in measured if r["name"] == selection["best"])
        ax.scatter(
            [setting(r["bench"], b)["p50_ms"]],
            [r["test"][metric]],
            s=260,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            label=f"best: {r['name']}",
        )
    ax.axhline(selection["accuracy_floor"], color="tab:red", lw=0.8, ls=":", label="accuracy bar")
    ax.axhline(selection["teacher_accuracy"], color="black", lw=0.8, ls="-.", label="teacher (PyTorch)")
    ax.set_xscale("log")
    what = selection.get("latency", "latency, test-text lengths")
    ax.set_xlabel(f"p50 {what} at batch {b} (ms, log scale; bars = 95% CI)")
    words = metric.replace("_", " ")
    ax.set_ylabel(f"test {words}")
    ax.set_title(f"Candidates: test {words} vs latency")
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    # what the marker shapes and colours mean, beside the lines' own entries
    handles, _ = ax.get_legend_handles_labels()
    sources = sorted({r["source"] for r in measured}, key=lambda s: (s not in markers, s))
    handles += [
        Line2D([], [], ls="", marker=markers.get(s, "o"), color="black", label=f"from the {s}")
        for s in sources
    ]
    handles += [
        Line2D([], [], ls="", marker="o", color="tab:green", label="meets the accuracy bar"),
        Line2D([], [], ls="", marker="o", color="tab:gray", label="below the accuracy bar"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
