"""Tasks of the candidate search: export, build (quantize + check), evaluate, benchmark.

Each is cached on its inputs like the training stages. They return small plain records; models stay
on disk. MLflow logging of the search happens flow-side (flows/search.py) so that a cached task
still shows its figures in the current run. Latency tasks are cached per hardware fingerprint:
another machine measures again.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from prefect import task

from slimflow.models.core.errors import CandidateRejected
from slimflow.models.core.modelfiles import file_sha256
from slimflow.models.data.prepare import PreparedData
from slimflow.models.data.tables import read_split
from slimflow.models.families import get_family
from slimflow.models.families.base import AgreementConfig
from slimflow.models.optimize import candidates as C
from slimflow.models.optimize.bench import bench, resolve_threads
from slimflow.models.optimize.config import (
    BenchConfig,
    CascadeConfig,
    EarlyExitConfig,
    ExportConfig,
    GenBenchConfig,
)
from slimflow.models.optimize.export import export_onnx
from slimflow.models.optimize.predictors import describe
from slimflow.models.optimize.targets import get_target
from slimflow.tasks.common import MODEL_TASK, ModelRef, StageContext, atomic_dir, cpu_bound, stage_key

PARITY_TEXTS = 64  # validation texts reused across the parity shapes
GENAI_PARITY_PROMPTS = 8  # validation prompts a causal LM's FP32 build is checked on
AGREEMENT_ROWS = 1000  # validation rows for quantized-vs-FP32 agreement


def _threads(bench_cfg: BenchConfig | None = None) -> int:
    return resolve_threads(bench_cfg.threads if bench_cfg else None)


def _texts(data: PreparedData, split: str, n: int | None = None) -> list[str]:
    """A split's model inputs (texts; a causal LM's prompts)."""
    texts = read_split(data.path(split))[get_family(data.task).input_column].tolist()
    return texts if n is None else texts[:n]


@task(name="export-onnx", task_run_name="export-onnx-{target}", tags=["export"], **MODEL_TASK)
@cpu_bound
def export_source(
    cfg: ExportConfig,
    target: str,
    source: ModelRef,
    data: PreparedData,
    code_version: str,
    ctx: StageContext,
) -> dict[str, Any]:
    """ONNX export + fusions of one source model for one target; raises ParityError on mismatch."""
    key = stage_key(cfg, target, source.sha256, code_version)
    final = Path(ctx.workdir) / "models" / "onnx" / key
    with atomic_dir(final) as tmp:
        res = export_onnx(
            source.dir, tmp, cfg, get_target(target), _texts(data, "validation", PARITY_TEXTS), _threads()
        )
    out = res.to_dict()
    out.update(
        export_dir=str(final),
        onnx_path=str(final / "model.onnx"),
        unfused_path=str(final / "unfused" / "model.onnx"),
        onnx_sha256=file_sha256(final / "model.onnx"),
    )
    return out


@task(
    name="build-candidate",
    task_run_name="build {spec[source]}/{spec[variant]}/{spec[target]}",
    tags=["candidate"],
    **MODEL_TASK,
)
@cpu_bound
def build_candidate(
    spec: dict[str, str],
    quantizer: Any,
    export: dict[str, str] | None,
    source: ModelRef,
    data: PreparedData,
    agreement_cfg: AgreementConfig,
    export_cfg: ExportConfig,
    code_version: str,
    ctx: StageContext,
) -> dict[str, Any]:
    """Make one candidate folder. A candidate that fails its check (``CandidateRejected``) comes back
    as ``{"name", "rejected": reason}``: a verdict, cached like any result, so a rerun with the same
    inputs gives the same verdict without rebuilding it."""
    cs = C.CandidateSpec(**spec)
    tolerance = export_cfg.atol if cs.variant == C.FP32_GENAI else None  # only the genai FP32 check uses it
    key = stage_key(
        spec, quantizer, (export or {}).get("onnx_sha256"), source.sha256, tolerance, code_version
    )
    final = Path(ctx.workdir) / "candidates" / key
    info = describe(source.dir)
    record: dict[str, Any] = {"name": cs.name}
    try:
        with atomic_dir(final) as tmp:
            if cs.variant == C.FP32_GENAI:
                record["parity"] = C.build_genai_fp32(
                    Path(source.dir), cs, tmp, _texts(data, "validation", GENAI_PARITY_PROMPTS), export_cfg,
                    _threads(),
                )  # fmt: skip
            elif cs.variant == C.FP32_ONNX:
                C.fp32_candidate(Path(export["export_dir"]), cs, tmp, info)
                record["parity"] = export["parity"]
            elif cs.variant == C.FP32_TORCH:
                C.fp32_candidate(Path(source.dir), cs, tmp, info)
            else:
                built = C.build_quantized(
                    cs,
                    quantizer,
                    Path(export["export_dir"]) if export else Path(source.dir),
                    Path(source.dir),
                    tmp,
                    _texts(data, "train"),
                    _texts(data, "validation", AGREEMENT_ROWS),
                    agreement_cfg,
                    _threads(),
                    _reference_cache(ctx, source, export, code_version),
                )
                record.update(report=built.report, agreement=built.agreement)
    except CandidateRejected as e:
        return {"name": cs.name, "rejected": _first_line(e)}
    if cs.runtime == C.GENAI:  # the graph and its external weights
        files = sorted(final.glob("model.onnx*"))
        weights = final / "model.onnx.data" if (final / "model.onnx.data").exists() else final / "model.onnx"
    else:
        weights = final / "model.onnx" if cs.runtime == "onnxruntime" else next(final.glob("*.safetensors"))
        files = [weights]
    record.update(
        path=str(final),
        file_bytes=sum(f.stat().st_size for f in files),
        sha256=file_sha256(weights),
        identity=C.identity(final),
        worker={"host": socket.gethostname(), "pid": os.getpid()},  # where it ran (threads, Dask)
    )
    return record


def _reference_cache(ctx: StageContext, source: ModelRef, export: dict[str, str] | None, code: str) -> Path:
    """Where a generative reference's answers on the agreement rows are kept for the other builds
    of the same model (``C.cached_reference_answers``)."""
    key = stage_key("reference-answers", source.sha256, (export or {}).get("onnx_sha256"), code)
    return Path(ctx.workdir) / "cache" / f"reference-answers-{key}.json"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


@task(name="build-cascade", task_run_name="build {name}", tags=["candidate"], **MODEL_TASK)
@cpu_bound
def build_cascade_candidate(
    name: str,
    cfg: CascadeConfig,
    fast: dict[str, Any],
    fallback: dict[str, Any],
    data: PreparedData,
    code_version: str,
    ctx: StageContext,
) -> dict[str, Any]:
    """A cascade of two built candidates (``fast``/``fallback``: their build records): the threshold
    fitted on the validation split only, the folder written, its test figures with the share of
    test rows it escalated."""
    from slimflow.models.optimize import cascade as K
    from slimflow.models.optimize.predictors import load_predictor

    # the threshold is fitted on this data's validation split: another split is another cascade
    key = stage_key(cfg, fast["identity"], fallback["identity"], data.split_fingerprint, code_version)
    final = Path(ctx.workdir) / "candidates" / key
    with atomic_dir(final) as tmp:
        threads = _threads()
        parts = load_predictor(fast["path"], threads), load_predictor(fallback["path"], threads)
        choice = K.fit_threshold(
            *parts, read_split(data.path("validation")), cfg.confidence, cfg.max_accuracy_drop
        )
        del parts
        K.build_cascade(fast["path"], fallback["path"], tmp, choice, name)
    frame = read_split(data.path("test"))
    test = C.score_on_test(final, frame, _threads())
    ident = C.identity(final)  # a cascade's "weights" are its parts and threshold: one hash serves both
    return {
        "name": name,
        "path": str(final),
        "file_bytes": fast["file_bytes"] + fallback["file_bytes"],
        "sha256": ident,
        "identity": ident,
        "cascade": choice.to_dict(),
        "test": {**test, "escalation_rate": K.escalation_rate(final, frame, _threads())},
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},
    }


@task(name="build-early-exit", task_run_name="build {name}", tags=["candidate"], **MODEL_TASK)
@cpu_bound
def build_early_exit_candidate(
    name: str,
    cfg: EarlyExitConfig,
    source: dict[str, Any],
    data: PreparedData,
    code_version: str,
    ctx: StageContext,
) -> dict[str, Any]:
    """An early exit cut from a built ONNX candidate (``source``: its build record): the exit head
    trained on the training split, the threshold fitted on the validation split only, its test
    figures with the share of test rows that went on past the exit."""
    from slimflow.models.optimize import cascade as K
    from slimflow.models.optimize import early_exit as E

    # the head is trained on this data's training split, its threshold fitted on its validation split
    key = stage_key(cfg, source["identity"], data.split_fingerprint, code_version)
    final = Path(ctx.workdir) / "candidates" / key
    with atomic_dir(final) as tmp:
        made = E.build_early_exit(
            source["path"], tmp, cfg.exit_after, read_split(data.path("train")),
            read_split(data.path("validation")), cfg.confidence, cfg.max_accuracy_drop, cfg.epochs,
            _threads(), name, max_train_examples=cfg.max_train_examples,
        )  # fmt: skip
    frame = read_split(data.path("test"))
    test = C.score_on_test(final, frame, _threads())
    ident = C.identity(final)
    return {
        "name": name,
        "path": str(final),
        "file_bytes": sum(f.stat().st_size for f in final.rglob("*.onnx")),
        "sha256": ident,
        "identity": ident,
        "cascade": made.to_dict(),
        "test": {**test, "escalation_rate": K.escalation_rate(final, frame, _threads())},
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},
    }


@task(name="evaluate-candidate", task_run_name="evaluate {name}", tags=["candidate"], **MODEL_TASK)
@cpu_bound
def evaluate_candidate(
    name: str, path: str, sha256: str, data: PreparedData, code_version: str, ctx: StageContext
) -> dict[str, Any]:
    """The family's test figures from the raw test split (tokenizer included): accuracy and macro
    F1 of a classifier, exact match and perplexity of a causal LM."""
    frame = read_split(data.path("test"))
    return {"name": name, "path": path, **C.score_on_test(path, frame, _threads())}


@task(name="benchmark-candidate", task_run_name="benchmark {name}", tags=["benchmark"], **MODEL_TASK)
def benchmark_candidate(
    name: str,
    path: str,
    sha256: str,
    cfg: BenchConfig,
    hardware: str,
    data: PreparedData,
    gen_cfg: GenBenchConfig | None,
    code_version: str,
    ctx: StageContext,
) -> dict[str, Any]:
    """Latency/throughput (models.bench), in a fresh process by default; a causal LM's generation
    speed (gen_bench: TTFT, per-token latency, decode tokens/s). Never run two at once."""
    if gen_cfg is not None and get_family(data.task).generative:
        from slimflow.models.optimize.gen_bench import bench_candidate

        result = bench_candidate(
            path, _texts(data, "test"), gen_cfg, cfg.isolate, cfg.host_lock_timeout_s, cfg.quiet_timeout_s
        )
        return {"name": name, "path": path, **result}
    result = bench(path, _texts(data, "test"), cfg, progress=bool(ctx.progress))
    return {"name": name, "path": path, **result}
