"""Forward latency of saved classifiers in PyTorch on this machine (a first, simple measure).

Usage:
    python benchmarks/torch_latency.py MODEL_DIR [MODEL_DIR ...] [--threads 2] [--data CONFIG]

Texts are drawn from the config's test split and tokenized outside the timed region; each
batch size gets warm-up iterations first. Prints p50/p95 per batch and throughput. The full
benchmark (ONNX Runtime, confidence intervals, Pareto plot) belongs to the export/benchmark stage.
"""

from __future__ import annotations

import argparse
import json
import time

from slimflow.models.core.env import apply_defaults

apply_defaults()


def measure(model_dir: str, texts: list[str], batch: int, iters: int, warmup: int, max_length: int) -> dict:
    import numpy as np
    import torch

    from slimflow.models.families import family_of

    model, tok = family_of(model_dir).load_trained(model_dir)
    rng = np.random.default_rng(0)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            enc = tok(
                [texts[j] for j in rng.integers(0, len(texts), batch)],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            t0 = time.perf_counter()
            model(**enc)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    t = np.array(times)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "p50_ms": round(float(np.percentile(t, 50)), 2),
        "p95_ms": round(float(np.percentile(t, 95)), 2),
        "examples_per_s": round(batch * 1000 / float(t.mean()), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="saved model folders (e.g. .slimflow/models/teacher/<key>)")
    ap.add_argument(
        "--data", default="configs/quickstart.yaml", help="config whose test split gives the texts"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (pinned)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--iters-b1", type=int, default=200)
    ap.add_argument("--iters-b32", type=int, default=30)
    args = ap.parse_args()

    import tempfile

    import pandas as pd
    import torch

    from slimflow.models.data.prepare import prepare
    from slimflow.models.data.tables import source_digest
    from slimflow.models.pipeline_config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, _ = prepare(cfg.data, tmp, source_digest(cfg.data), f"{tmp}/report")
        texts = pd.read_parquet(prepared.path("test"))["text"].tolist()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, max_length {args.max_length}")
    for m in args.models:
        row = {
            "b1": measure(m, texts, 1, args.iters_b1, 10, args.max_length),
            "b32": measure(m, texts, 32, args.iters_b32, 3, args.max_length),
        }
        print(m, json.dumps(row))


if __name__ == "__main__":
    main()
