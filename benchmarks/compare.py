"""Side-by-side, one run, one machine: the fine-tuned teacher in PyTorch FP32 eager, the same teacher
through Optimum's documented dynamic-INT8 recipe, and the pipeline's best candidate.

    python benchmarks/compare.py                       # reads .slimflow/last-summary.json (make demo)
    python benchmarks/compare.py --summary S.json --threads 2 --out compare.json

Optimum's recipe, as its docs show it: ``ORTModelForSequenceClassification.from_pretrained(teacher,
export=True)`` then ``ORTQuantizer.from_pretrained(...).quantize(AutoQuantizationConfig.<preset>(
is_static=False, per_channel=False))`` with the preset matching this CPU. Every model is measured
by slimflow.models.optimize.bench in its own process with the same settings (threads pinned,
warm-up, real test texts, tokenization not timed) and scored on the whole test split. Prints
figures; asserts nothing.
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
    args = ap.parse_args()

    import pandas as pd

    from slimflow.models.core.provenance import hardware_fingerprint
    from slimflow.models.optimize.bench import bench, setting
    from slimflow.models.optimize.candidates import score_on_test
    from slimflow.models.optimize.config import BenchConfig
    from slimflow.models.optimize.targets import cpu_int8_preset

    summary = json.loads(Path(args.summary).read_text()) if Path(args.summary).exists() else {}
    stages = summary.get("stages", {})
    teacher = Path(args.teacher or stages["finetune-teacher"]["outputs"]["model_dir"])
    best = Path(args.best or (summary.get("decision") or {}).get("model_dir") or "")
    if not (best / "candidate.json").exists():
        sys.exit(
            f"no candidate folder at {best!s}; run the pipeline with an optimize: section, or pass --best"
        )
    data_out = stages.get("validate-data", {}).get("outputs", {})
    test = pd.read_parquet(args.test or data_out.get("paths.test") or data_out["data.paths.test"])
    preset = cpu_int8_preset() if args.preset == "auto" else args.preset
    texts, gold = test["text"].tolist(), test["label"].tolist()
    labels = sorted(set(gold))
    cfg = BenchConfig(
        batch_sizes=[1, 32],
        lengths=["data"],
        iterations=args.iterations,
        time_budget_s=args.time_budget,
        threads=args.threads,
        warmup=20,
    )
    with tempfile.TemporaryDirectory(prefix="slimflow-compare-") as tmp:
        print(f"building Optimum's recipe (preset {preset}) from {teacher} ...", flush=True)
        recipe = optimum_recipe(teacher, Path(tmp), preset)
        models = {
            "teacher, PyTorch FP32 eager": teacher,
            f"teacher, Optimum dynamic INT8 ({preset})": recipe,
            f"best candidate: {json.loads((best / 'candidate.json').read_text())['source']}/"
            f"{json.loads((best / 'candidate.json').read_text())['variant']}": best,
        }
        rows = {}
        for name, path in models.items():
            print(f"measuring {name} ...", flush=True)
            rows[name] = {
                "test": score_on_test(path, texts, labels, gold, cfg.threads or 0),
                "bench": bench(path, texts, cfg),
            }
    t_name, r_name, b_name = list(rows)
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
    sp_teacher = b1[t_name]["p50_ms"] / b1[b_name]["p50_ms"]
    sp_recipe = b1[r_name]["p50_ms"] / b1[b_name]["p50_ms"]
    acc_t, acc_r, acc_b = (rows[n]["test"]["accuracy"] for n in (t_name, r_name, b_name))
    # conservative: the slower end of the candidate's CI against the faster end of the other's
    sp_teacher_lo = b1[t_name]["p50_ci_low_ms"] / b1[b_name]["p50_ci_high_ms"]
    sp_recipe_lo = b1[r_name]["p50_ci_low_ms"] / b1[b_name]["p50_ci_high_ms"]
    print()
    print(
        f"best vs teacher PyTorch: {sp_teacher:.1f}x faster at b1 p50 "
        f"(CI-conservative {sp_teacher_lo:.1f}x), "
        f"{b32[b_name]['throughput_eps'] / b32[t_name]['throughput_eps']:.1f}x b32 throughput, "
        f"accuracy {acc_b / acc_t:.1%} of the teacher's"
    )
    print(
        f"best vs Optimum recipe:  {sp_recipe:.1f}x faster at b1 p50 (CI-conservative {sp_recipe_lo:.1f}x), "
        f"{b32[b_name]['throughput_eps'] / b32[r_name]['throughput_eps']:.1f}x b32 throughput, "
        f"accuracy {acc_b:.4f} vs {acc_r:.4f}"
    )
    goals = {
        ">= 6x vs teacher at b1 p50 (goal 8x)": sp_teacher >= 6,
        ">= 98% of the teacher's accuracy": acc_b >= 0.98 * acc_t,
        ">= 2x vs Optimum's recipe at b1 p50": sp_recipe >= 2,
        "accuracy equal or better than Optimum's recipe": acc_b >= acc_r,
    }
    for goal, ok in goals.items():
        print(f"  [{'met' if ok else 'NOT met'}] {goal}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "goals": goals}, indent=2, default=str))
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
