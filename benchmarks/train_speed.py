"""Training-step speed of a teacher on this CPU: FP32 against bf16 autocast, with real review texts.

    .venv/bin/python benchmarks/train_speed.py [--model packaged:all-MiniLM-L6-v2] [--steps 12] [--rounds 3]

Batches of 32 packaged review texts, length-bucketed and padded to the longest in the batch (as
the training loop does). The two modes alternate in rounds so that drift hits both; each round
times ``--steps`` optimizer steps after two untimed ones. Prints ms per step (median over rounds)
and the bf16/FP32 ratio. Run it on an idle machine: nothing else may use the CPU meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from slimflow.models.assets import PACKAGED_DATASETS, resolve_pretrained
    from slimflow.models.core.env import apply_defaults, cpu_flags

    apply_defaults()
    hf_logging.set_verbosity_error()
    path = resolve_pretrained(args.model, Path(".slimflow").resolve())
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        t for t in PACKAGED_DATASETS.get("rotten_tomatoes").load()["text"].tolist() if isinstance(t, str)
    ]
    need = args.batch_size * (args.steps + 2)
    texts = texts[:need]
    enc = tok(texts, truncation=True, max_length=args.max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    batches = []
    for s in range(0, len(order), args.batch_size):
        rows = [enc["input_ids"][i] for i in order[s : s + args.batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        batches.append((ids, (ids != tok.pad_token_id).long(), torch.randint(0, 2, (len(rows),))))

    def run(mode: str) -> float:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
        times = []
        for i, (ids, mask, y) in enumerate(batches):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return 1000 * sum(times) / len(times)

    flags = cpu_flags()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, avx512_bf16={'avx512_bf16' in flags},"
        f" amx_bf16={'amx_bf16' in flags}; {args.model}, batch {args.batch_size},"
        f" max_length {args.max_length}"
    )
    results: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        for mode in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            results[mode].append(run(mode))
            print(f"round {r + 1} {mode}: {results[mode][-1]:.1f} ms/step", flush=True)
    fp32, bf16 = statistics.median(results["fp32"]), statistics.median(results["bf16"])
    print(f"median ms/step: fp32 {fp32:.1f}, bf16 autocast {bf16:.1f}; bf16/fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
