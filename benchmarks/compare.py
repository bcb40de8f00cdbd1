"""Side-by-side, one run, one machine: the fine-tuned teacher in PyTorch FP32 eager, the same teacher
through Optimum's documented dynamic-INT8 recipe, the teacher's best quantized form found by the
search (when the search quantized the teacher: an LLM teacher's weight-only INT4/INT8, say), and the
pipeline's promoted candidate (else its best), the search's most accurate cascade with its
fast part alone (escalation rate, latency against the fast part's), and its most accurate early exit
with the whole model it is cut from.

    python benchmarks/compare.py                       # reads .slimflow/last-summary.json (make demo)
    python benchmarks/compare.py --summary S.json --threads 2 --out compare.json

The comparison follows the summary's task family (the teacher folder names it): for a generative
model (task causal-lm) the rows are the fine-tuned model in PyTorch FP32 eager, Optimum's ONNX
export with the key/value cache (``text-generation-with-past``, ``ORTModelForCausalLM``) and the
promoted onnxruntime-genai build, each scored on the test split (exact match, perplexity) and timed
generating in its own process (``benchmarks/llm_compare.py``: decode tokens/s with 95% CIs, time to
first token), ``--rounds`` times in turn (default 3; the median round counts: onnxruntime-genai's
rate moves 10-20% between processes on small hosts); ``ratios`` then holds decode speed-ups (also
per round), perplexity ratios and exact-match deltas.

Optimum's recipe, as its docs show it: ``ORTModelForSequenceClassification.from_pretrained(teacher,
export=True)`` then ``ORTQuantizer.from_pretrained(...).quantize(AutoQuantizationConfig.<preset>(
is_static=False, per_channel=False))`` with the preset matching this CPU. Every model is measured
by slimflow.models.optimize.bench in its own process with the same settings (threads pinned,
warm-up, real test texts, tokenization not timed) and scored on the whole test split. Prints
figures and writes them (``--out``: the rows and a ``ratios`` object); asserts nothing.

The teacher's best quantized form is, among the search's measured teacher candidates other than the
FP32 ones, the fastest at batch 1 whose test accuracy keeps ``--min-retention`` of the FP32
teacher's (the most accurate when none does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from slimflow.models.core.env import apply_defaults

apply_defaults()


def optimum_recipe(teacher: Path, out: Path, preset: str) -> Path:
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from slimflow.models.core.modelfiles import META_FILE

    exported = out / "exported"
    ORTModelForSequenceClassification.from_pretrained(teacher, export=True).save_pretrained(exported)
    quantized = out / "quantized"
    ORTQuantizer.from_pretrained(exported).quantize(
        save_dir=quantized,
        quantization_config=getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=False),
    )
    for f in teacher.iterdir():  # tokenizer + our metadata (labels, max_length) beside the graph
        if f.is_file() and (
            f.name.startswith(("tokenizer", "special_tokens", "vocab")) or f.name == META_FILE
        ):
            shutil.copy2(f, quantized / f.name)
    return quantized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", default=".slimflow/last-summary.json", help="summary JSON of a pipeline run")
    ap.add_argument("--teacher", help="teacher folder (default: from the summary)")
    ap.add_argument("--best", help="candidate folder (default: the summary's selected candidate)")
    ap.add_argument("--test", help="test split parquet (default: from the summary)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    ap.add_argument("--preset", default="auto", help="optimum preset: auto|avx2|avx512|avx512_vnni|arm64")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--time-budget", type=float, default=15.0, help="seconds per setting")
    ap.add_argument("--out", help="write all figures as JSON here")
    ap.add_argument("--no-recipe", action="store_true", help="leave Optimum's recipe out")
    ap.add_argument(
        "--min-retention", type=float, default=0.98, help="accuracy bar of the teacher's quantized form"
    )
    gen = ap.add_argument_group("causal LMs")
    gen.add_argument("--rows", type=int, default=None, help="test rows scored (default: all)")
    gen.add_argument("--prompt-tokens", type=int, default=64, help="timed prompt length (tokens)")
    gen.add_argument("--new-tokens", type=int, default=64, help="tokens generated per timed answer")
    gen.add_argument("--gen-iterations", type=int, default=8, help="timed generations per model")
    gen.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="time the three models this many times, in turn, each in a fresh process (the median counts)",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1 (got {args.rounds})")

    import pandas as pd

    from slimflow.models.core.provenance import hardware_fingerprint
    from slimflow.models.optimize.bench import bench, setting
    from slimflow.models.optimize.candidates import score_on_test
    from slimflow.models.optimize.config import BenchConfig
    from slimflow.models.optimize.targets import cpu_int8_preset

    summary = json.loads(Path(args.summary).read_text()) if Path(args.summary).exists() else {}
    stages = summary.get("stages", {})
    teacher = Path(args.teacher or stages["finetune-teacher"]["outputs"]["model_dir"])
    best = Path(args.best or selected_candidate(summary) or "")
    if not (best / "candidate.json").exists():
        sys.exit(
            f"no candidate folder at {best!s}; run the pipeline with an optimize: section, or pass --best"
        )
    data_out = stages.get("validate-data", {}).get("outputs", {})
    test_path = Path(args.test or data_out.get("paths.test") or data_out["data.paths.test"])
    from slimflow.models.families import get_family
    from slimflow.models.optimize.predictors import describe

    if get_family(describe(teacher).task).generative:
        generative(teacher, best, test_path, args)
        return
    test = pd.read_parquet(test_path)
    preset = cpu_int8_preset() if args.preset == "auto" else args.preset
    texts = test["text"].tolist()
    cfg = BenchConfig(
        batch_sizes=[1, 32],
        lengths=["data"],
        iterations=args.iterations,
        time_budget_s=args.time_budget,
        threads=args.threads,
        warmup=20,
        tune=None,  # each model runs as shipped: a candidate with the settings the pipeline tuned here
    )
    best_info = json.loads((best / "candidate.json").read_text())
    tq = teacher_quantized(summary.get("search", {}).get("candidates", []), args.min_retention)
    with tempfile.TemporaryDirectory(prefix="slimflow-compare-") as tmp:
        models: dict[str, Path] = {"teacher, PyTorch FP32 eager": teacher}
        roles = {"teacher": "teacher, PyTorch FP32 eager"}
        if not args.no_recipe:
            print(f"building Optimum's recipe (preset {preset}) from {teacher} ...", flush=True)
            name = f"teacher, Optimum dynamic INT8 ({preset})"
            models[name] = optimum_recipe(teacher, Path(tmp), preset)
            roles["recipe"] = name
        if tq is not None:
            name = f"teacher, best quantized: {tq['variant']}"
            models[name] = Path(tq["path"])
            roles["teacher_quantized"] = name
        name = f"best candidate: {best_info['source']}/{best_info['variant']}"
        models[name] = best
        roles["best"] = name
        if tuned_away_from_default(best):  # the tuning lever, measured: the same model untuned
            name = "  best, ONNX Runtime default settings"
            models[name] = untuned_copy(best, Path(tmp) / "untuned")
            roles["best_untuned"] = name
        casc = best_cascade(summary.get("search", {}).get("candidates", []))
        if casc is not None:
            name = f"best cascade: {casc['name'].split('/')[1]}"
            models[name] = Path(casc["path"])
            roles["cascade"] = name
            name = "  its fast part alone"
            models[name] = Path(casc["path"]) / "fast"
            roles["cascade_fast"] = name
        exit_ = best_cascade(summary.get("search", {}).get("candidates", []), early_exit=True)
        if exit_ is not None:
            name = f"best early exit: {exit_['name'].split('/')[1]}"
            models[name] = Path(exit_["path"])
            roles["early_exit"] = name
            whole = next(c for c in summary["search"]["candidates"] if c["name"] == exit_["reference"])
            name = "  the whole model it is cut from"
            models[name] = Path(whole["path"])
            roles["early_exit_whole"] = name
        rows = {}
        for name, path in models.items():
            print(f"measuring {name} ...", flush=True)
            rows[name] = {
                "path": str(path),
                "test": score_on_test(path, test, cfg.threads or 0),
                "bench": bench(path, texts, cfg),
            }
        from slimflow.models.optimize.cascade import escalation_rate

        for role in ("cascade", "early_exit"):
            if role in roles:
                c = rows[roles[role]]
                c["test"]["escalation_rate"] = escalation_rate(c["path"], test, cfg.threads)
    t_name, b_name = roles["teacher"], roles["best"]
    r_name = roles.get("recipe")
    b1 = {n: setting(r["bench"], 1) for n, r in rows.items()}
    b32 = {n: setting(r["bench"], 32) for n, r in rows.items()}
    any_bench = rows[t_name]["bench"]
    print()
    print(
        f"machine: {hardware_fingerprint(any_bench['hardware'])}; threads {any_bench['threads']} "
        f"(pinned {any_bench['pinned_cores'] or 'no'}); {len(texts)} test texts; tokenization not timed"
    )
    head = f"{'model':<44} {'b1 p50 ms':>10} {'b1 p95 ms':>10} {'b32 ex/s':>9} {'test acc':>9} {'MB':>7}"
    print(head)
    print("-" * len(head))
    for n, r in rows.items():
        print(
            f"{n:<44} {b1[n]['p50_ms']:>10.2f} {b1[n]['p95_ms']:>10.2f} {b32[n]['throughput_eps']:>9.1f} "
            f"{r['test']['accuracy']:>9.4f} {r['bench']['file_bytes'] / 2**20:>7.1f}"
        )
        ci = f"[{b1[n]['p50_ci_low_ms']:.2f}, {b1[n]['p50_ci_high_ms']:.2f}]"
        print(f"{'  b1 p50 95% CI':<44} {ci:>21}")
        for b in (1, 32):
            label = (b1 if b == 1 else b32)[n].get("session")
            if label:
                print(f"    b{b} ran with {label}")
    ratios: dict[str, dict[str, float]] = {}
    for role, name in roles.items():
        if role in ("best", "cascade", "cascade_fast", "best_untuned", "early_exit", "early_exit_whole"):
            continue
        ratios[f"best_vs_{role}"] = compare_rows(
            rows[name], rows[b_name], b1[name], b1[b_name], b32, name, b_name
        )
    if "best_untuned" in roles:
        u = roles["best_untuned"]
        ratios["tuned_vs_default_settings"] = compare_rows(
            rows[u], rows[b_name], b1[u], b1[b_name], b32, u, b_name
        )
    if "teacher_quantized" in roles:
        q = roles["teacher_quantized"]
        ratios["teacher_quantized_vs_teacher"] = compare_rows(
            rows[t_name], rows[q], b1[t_name], b1[q], b32, t_name, q
        )
    print()
    for key, r in ratios.items():
        print(
            f"{key:<34} {r['b1_p50_speedup']:.1f}x faster at b1 p50 (CI-conservative "
            f"{r['b1_p50_speedup_ci_low']:.1f}x), {r['b32_throughput_ratio']:.1f}x b32 throughput, "
            f"{r['size_ratio']:.1f}x smaller, accuracy {r['accuracy_ratio']:.1%} of the other's"
        )
    acc_t, acc_b = rows[t_name]["test"]["accuracy"], rows[b_name]["test"]["accuracy"]
    sp_teacher = ratios["best_vs_teacher"]["b1_p50_speedup"]
    goals = {
        ">= 6x vs teacher at b1 p50 (goal 8x)": sp_teacher >= 6,
        ">= 98% of the teacher's accuracy": acc_b >= 0.98 * acc_t,
    }
    if r_name is not None:
        goals[">= 2x vs Optimum's recipe at b1 p50"] = ratios["best_vs_recipe"]["b1_p50_speedup"] >= 2
        goals[">= 4x vs Optimum's recipe at b1 p50 (issue #16)"] = (
            ratios["best_vs_recipe"]["b1_p50_speedup"] >= 4
        )
        goals["accuracy equal or better than Optimum's recipe"] = acc_b >= rows[r_name]["test"]["accuracy"]
    if "cascade" in roles:
        c, f = roles["cascade"], roles["cascade_fast"]
        ratios["cascade_vs_teacher"] = compare_rows(rows[t_name], rows[c], b1[t_name], b1[c], b32, t_name, c)
        ratios["cascade_vs_its_fast_part"] = compare_rows(rows[f], rows[c], b1[f], b1[c], b32, f, c)
        acc_c = rows[c]["test"]["accuracy"]
        print(
            f"cascade: {rows[c]['test']['escalation_rate']:.1%} of test texts escalated; accuracy "
            f"{acc_c:.4f} (teacher {acc_t:.4f}); b1 p50 {b1[c]['p50_ms']:.2f} ms vs its fast part's "
            f"{b1[f]['p50_ms']:.2f} ms"
        )
        goals["cascade: the teacher's test accuracy within 0.3 points"] = acc_c >= acc_t - 0.003
        goals["cascade: b1 p50 at most 1.5x its fast part's"] = b1[c]["p50_ms"] <= 1.5 * b1[f]["p50_ms"]
    if "early_exit" in roles:
        e, w = roles["early_exit"], roles["early_exit_whole"]
        ratios["early_exit_vs_its_whole_model"] = compare_rows(rows[w], rows[e], b1[w], b1[e], b32, w, e)
        print(
            f"early exit: {rows[e]['test']['escalation_rate']:.1%} of test texts went on past the exit; "
            f"accuracy {rows[e]['test']['accuracy']:.4f} (whole model {rows[w]['test']['accuracy']:.4f}); "
            f"b1 p50 {b1[e]['p50_ms']:.2f} ms vs the whole model's {b1[w]['p50_ms']:.2f} ms"
        )
    for goal, ok in goals.items():
        print(f"  [{'met' if ok else 'NOT met'}] {goal}")
    if args.out:
        out = {"rows": rows, "roles": roles, "ratios": ratios, "goals": goals}
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
        print(f"written to {args.out}")


def tuned_away_from_default(folder: Path) -> bool:
    """Whether the runtime settings search chose anything but ONNX Runtime's default for ``folder``."""
    from slimflow.models.optimize.runtime_tuning import settings_of
    from slimflow.models.optimize.targets import SessionSettings

    path = folder / "runtime.json"
    if not path.exists():
        return False
    saved = json.loads(path.read_text())
    default = SessionSettings(threads=saved["thread_budget"])  # all threads of the budget, the rest default
    return any(settings_of(s) != default for s in saved["by_batch"].values())


def untuned_copy(folder: Path, dest: Path) -> Path:
    """``folder`` without its tuned runtime settings (ONNX Runtime's defaults when loaded)."""
    import shutil

    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("runtime.json"))
    return dest


def selected_candidate(summary: dict) -> str | None:
    """The folder of the promoted candidate (the gates' winner), else of the search's best (the
    decision names it when nothing was promoted)."""
    search = summary.get("search") or {}
    name = (summary.get("promotion") or {}).get("winner") or (search.get("selection") or {}).get("best")
    path = next((c.get("path") for c in search.get("candidates", []) if c.get("name") == name), None)
    return path or (summary.get("decision") or {}).get("model_dir")


def generative(model_dir: Path, best: Path, test_path: Path, args: argparse.Namespace) -> None:
    """The causal-LM comparison: PyTorch FP32 eager, Optimum's ONNX export with past, the candidate."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llm_compare", Path(__file__).with_name("llm_compare.py"))
    llm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(llm)
    info = json.loads((best / "candidate.json").read_text())
    roles = {
        "teacher": "fine-tuned, PyTorch FP32 eager",
        "optimum": "fine-tuned, Optimum ONNX FP32 with past",
        "best": f"promoted: {info['source']}/{info['variant']}",
    }
    plan = [(roles["teacher"], "pytorch_fp32", None), (roles["optimum"], "optimum_onnx_fp32", None),
            (roles["best"], "genai", best)]  # fmt: skip
    opts = argparse.Namespace(
        rows=args.rows, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch=[1],
        iterations=args.gen_iterations, threads=args.threads, workdir=None, rounds=args.rounds,
    )  # fmt: skip
    report = llm.measure(model_dir, test_path, plan, opts)
    print(llm._table(report))
    rows = {r["variant"]: r for r in report["rows"]}
    ratios = {
        "best_vs_teacher": report["ratios"][roles["best"]],
        "optimum_vs_teacher": report["ratios"][roles["optimum"]],
        "best_vs_optimum": llm.ratio(rows[roles["optimum"]], rows[roles["best"]], 1),
    }
    b = ratios["best_vs_teacher"]
    goals = {
        ">= 6x the decode tokens/s of PyTorch FP32 eager": b["decode_speedup"] >= 6,
        "perplexity ratio <= 1.15": b["perplexity_ratio"] <= 1.15,
        "exact match within 1 point of the FP32 model": b["exact_match_delta"] >= -0.01,
    }
    print()
    for key, r in ratios.items():
        print(
            f"{key:<20} {r['decode_speedup']:.2f}x decode tokens/s (CI-conservative "
            f"{r['decode_speedup_ci_low']:.2f}x), TTFT x{r['ttft_ratio']:.2f}, perplexity x"
            f"{r['perplexity_ratio']:.3f}, exact match {r['exact_match_delta']:+.4f}, "
            f"{1 / r['size_ratio']:.1f}x smaller"
            + (f"; by round {', '.join(f'{x:.2f}x' for x in r['decode_speedup_rounds'])}"
               if len(r["decode_speedup_rounds"]) > 1 else "")
        )  # fmt: skip
    for goal, ok in goals.items():
        print(f"  [{'met' if ok else 'NOT met'}] {goal}")
    if args.out:
        out = {"task": "causal-lm", "rows": rows, "roles": roles, "ratios": ratios, "goals": goals,
               "hardware": report["hardware"]}  # fmt: skip
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
        print(f"written to {args.out}")


def best_cascade(candidates: list[dict], early_exit: bool = False) -> dict | None:
    """The search's most accurate measured cascade (``early_exit``: early exit) (then the fastest at
    batch 1), or None."""
    from slimflow.models.optimize.bench import setting

    ok = [
        c for c in candidates if c.get("runtime") == "cascade" and c.get("status") == "ok" and c.get("bench")
        and (c.get("variant") == "early_exit") == early_exit
    ]  # fmt: skip
    if not ok:
        return None
    return min(ok, key=lambda c: (-c["test"]["accuracy"], setting(c["bench"], 1)["p50_ms"]))


def teacher_quantized(candidates: list[dict], min_retention: float) -> dict | None:
    """The search's best quantized teacher (see the module docstring), or None."""
    from slimflow.models.optimize.bench import setting

    ok = [c for c in candidates if c.get("status") == "ok" and c.get("bench") and c.get("test")]
    fp32 = [c for c in ok if c["source"] == "teacher" and c["variant"] in ("onnx_fp32", "torch_fp32")]
    # quantized forms only: an early exit cut from the teacher is a composite, compared on its own
    quant = [c for c in ok if c["source"] == "teacher" and c not in fp32 and c.get("runtime") != "cascade"]
    if not quant:
        return None
    ref = max((c["test"]["accuracy"] for c in fp32), default=None)
    keep = [c for c in quant if ref is None or c["test"]["accuracy"] >= min_retention * ref]
    if keep:
        return min(keep, key=lambda c: setting(c["bench"], 1)["p50_ms"])
    return max(quant, key=lambda c: c["test"]["accuracy"])


def compare_rows(
    slow: dict, fast: dict, b1_slow: dict, b1_fast: dict, b32: dict, slow_name: str, fast_name: str
) -> dict[str, float]:
    """How ``fast`` compares with ``slow``: speed-ups (point and CI-conservative: the slower end of
    the fast one's CI against the faster end of the other's), throughput, size and accuracy ratios."""
    return {
        "b1_p50_speedup": b1_slow["p50_ms"] / b1_fast["p50_ms"],
        "b1_p50_speedup_ci_low": b1_slow["p50_ci_low_ms"] / b1_fast["p50_ci_high_ms"],
        "b32_throughput_ratio": b32[fast_name]["throughput_eps"] / b32[slow_name]["throughput_eps"],
        "size_ratio": slow["bench"]["file_bytes"] / fast["bench"]["file_bytes"],
        "accuracy_ratio": fast["test"]["accuracy"] / slow["test"]["accuracy"],
    }


if __name__ == "__main__":
    main()
