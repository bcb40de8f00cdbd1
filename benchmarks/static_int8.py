"""Why does static INT8 disagree with FP32, and what fixes it? One exported classifier, quantized
statically in several ways (calibration method and size, per-channel weights, symmetric
activations, QOperator vs QDQ) and with the sensitivity pass; each variant's agreement with FP32
on validation rows and its batch-1 latency (p50 with a bootstrap CI, real validation texts,
tokenization not timed), beside dynamic INT8 and FP32. Run it alone on an idle machine.

    python benchmarks/static_int8.py --export WORKDIR/models/onnx/HASH --data WORKDIR/data/HASH \\
        [--rows 1000] [--threads 2] [--seconds 4] [--out static.json]

``--export`` is an export folder the pipeline made (model.onnx fused, unfused/model.onnx for static
quantization, the tokenizer); ``--data`` the prepared split folder (train/validation parquet).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1000, help="Validation rows of the agreement.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="Timing budget per variant.")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from slimflow.models.core.env import apply_defaults

    apply_defaults()
    from slimflow.models.families import get_family
    from slimflow.models.families.base import AgreementConfig
    from slimflow.models.optimize.bench import pin, summarize
    from slimflow.models.optimize.predictors import OrtPredictor, load_predictor
    from slimflow.models.optimize.quantizers import QuantContext, apply_quantizer
    from slimflow.models.optimize.quantizers.ort_int8_dynamic import OrtDynamicInt8Config
    from slimflow.models.optimize.quantizers.ort_int8_static import OrtStaticInt8Config
    from slimflow.models.optimize.targets import get_target

    pin(args.threads)
    train = pd.read_parquet(args.data / "train.parquet")["text"].tolist()
    valid = pd.read_parquet(args.data / "validation.parquet")["text"].tolist()[: args.rows]
    ref = load_predictor(args.export, args.threads)
    family = get_family(ref.info.task)
    want = ref.predict(valid)
    bar = AgreementConfig()
    base = {"calibration_examples": 128, "method": "minmax", "sensitivity": None}
    variants: list[tuple[str, Any]] = [
        ("dynamic INT8 (per-channel)", OrtDynamicInt8Config(per_channel=True)),
        ("static minmax, 128 rows", OrtStaticInt8Config(**base)),
        ("static minmax, 512 rows", OrtStaticInt8Config(**{**base, "calibration_examples": 512})),
        ("static entropy, 128 rows", OrtStaticInt8Config(**{**base, "method": "entropy"})),
        ("static percentile 99.999", OrtStaticInt8Config(**{**base, "method": "percentile"})),
        ("static minmax, per-tensor weights", OrtStaticInt8Config(**{**base, "per_channel": False})),
        (
            "static minmax, symmetric activations",
            OrtStaticInt8Config(**{**base, "symmetric_activations": True}),
        ),
        ("static minmax, QDQ", OrtStaticInt8Config(**{**base, "format": "qdq"})),
        ("static minmax + sensitivity pass", OrtStaticInt8Config(**{**base, "sensitivity": {}})),
    ]
    batches = [ref.encode([t]) for t in valid[:200]]
    rows = [measure("FP32 (fused)", args.export / "model.onnx", ref, want, valid, batches, family, bar, args,
                    summarize, OrtPredictor, None)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="static-int8-") as tmp:
        for name, cfg in variants:
            out = Path(tmp) / str(len(rows))
            out.mkdir()

            def agreement(path: Path) -> Any:
                trial = OrtPredictor(Path(path), ref.tokenizer, ref.info, args.threads, tuned=False)
                return family.agreement(want, trial.predict(valid), ref.info.labels, bar)

            ctx = QuantContext(
                onnx_fp32=args.export / "model.onnx",
                onnx_unfused=args.export / "unfused" / "model.onnx",
                torch_dir=None,
                tokenizer=ref.tokenizer,
                calibration_texts=train,
                max_length=min(ref.info.max_length, ref.position_limit),
                target=get_target("cpu").resolved(),
                family=family,
                agreement=agreement,
            )
            t0 = time.perf_counter()
            report = apply_quantizer(cfg, ctx, out)
            build_s = time.perf_counter() - t0
            rows.append(measure(name, out / "model.onnx", ref, want, valid, batches, family, bar, args,
                                summarize, OrtPredictor, report))  # fmt: skip
            rows[-1]["build_s"] = build_s
    print(f"\n{len(valid)} validation rows, agreement bar {bar.min_agreement}; b1 p50 over single texts\n")
    head = f"{'variant':<40} {'agreement':>9} {'b1 p50 ms':>10} {'95% CI':>16} {'MB':>6} {'FP32 nodes':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ci = f"[{r['p50_ci_low_ms']:.3f}, {r['p50_ci_high_ms']:.3f}]"
        print(
            f"{r['variant']:<40} {r['agreement']:>9.4f} {r['p50_ms']:>10.3f} {ci:>16} {r['mb']:>6.1f} "
            f"{r.get('nodes_kept_fp32', 0):>10}"
        )
    for r in rows:
        for n in r.get("notes", []):
            print(f"  {r['variant']}: {n}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2, default=str))
        print(f"written to {args.out}")


def measure(name, path, ref, want, valid, batches, family, bar, args, summarize, OrtPredictor, report):  # noqa: N803
    p = OrtPredictor(Path(path), ref.tokenizer, ref.info, args.threads, tuned=False)
    agree = family.agreement(want, p.predict(valid), ref.info.labels, bar)
    for x in batches[:20]:
        p.logits(x)
    times, end, i = [], time.perf_counter() + args.seconds, 0
    while time.perf_counter() < end:
        x = batches[i % len(batches)]
        i += 1
        t = time.perf_counter()
        p.logits(x)
        times.append(time.perf_counter() - t)
    s = summarize(np.asarray(times), 1, 1000, 0)
    row = {
        "variant": name,
        "agreement": agree.agreement,
        "passed": agree.passed,
        "mb": Path(path).stat().st_size / 2**20,
        **{k: s[k] for k in ("p50_ms", "p50_ci_low_ms", "p50_ci_high_ms", "p95_ms", "iterations")},
    }
    if report is not None:
        row["notes"] = report.notes
        row["nodes_kept_fp32"] = int(report.figures.get("nodes_kept_fp32", 0))
    print(f"{name}: agreement {agree.agreement:.4f}, b1 p50 {s['p50_ms']:.3f} ms", flush=True)
    return row


if __name__ == "__main__":
    main()
