"""Would early exit pay on this CPU? A measured prototype on a built INT8 classifier candidate.

    python benchmarks/early_exit.py --summary S.json --candidate FOLDER [--exit-after 1] --out F.json

What it does, on the candidate's own ONNX graph (the fused, dynamically quantized file the
pipeline serves):

1. Exposes the hidden state after encoder layer ``k`` (and the attention mask index the fused
   attention nodes share) and collects, for the train / validation / test splits, the [CLS] vector
   at that depth and the model's final logits.
2. Trains an exit head on the frozen body (DeeBERT's second stage): the mean of the hidden state
   over the text's tokens, then dense + tanh + classifier (the shape of BERT's pooler and head), on
   the soft labels of the final layer (temperature 2) and the gold labels.
3. Appends that head to the graph and cuts it in two sessions: A = inputs -> exit logits, hidden
   state, mask index; B = hidden state, mask index -> final logits. Checks B(A(x)) == the whole
   graph's logits on test texts.
4. Chooses the exit threshold on the validation split only, with the cascade's rule
   (``cascade.choose_threshold``: least escalation keeping accuracy >= the full model's minus
   ``--max-accuracy-drop``), and scores test accuracy and the share of texts going on to B.
5. Times, batch 1 over test texts, pinned threads, with the batch-1 runtime settings the search
   saved for the candidate on this hardware (runtime.json; else ONNX Runtime's defaults), B's pool
   not spinning: the whole graph, and the early-exit route (A; B only when the exit is not
   confident), each text's real path.

Prints a table and writes the figures (``--out``). Asserts nothing but the split's parity.
The pipeline builds the same thing as a candidate (``optimize.early_exits:``, cut by
``slimflow.models.optimize.early_exit``); this script measures several exits of one model side by
side, each route timed per text.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from slimflow.models.core.env import apply_defaults

apply_defaults()


def _session(model: Any, settings: Any) -> Any:
    from slimflow.models.optimize.targets import get_target

    return get_target("cpu").session(model.SerializeToString(), settings=settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--summary", required=True, help="summary JSON of a classifier pipeline run (for its splits)"
    )
    ap.add_argument("--candidate", required=True, help="a built INT8 ONNX candidate folder of that run")
    ap.add_argument(
        "--exit-after",
        type=int,
        nargs="+",
        default=None,
        help="encoder layer indexes (default: all but the last)",
    )
    ap.add_argument("--max-accuracy-drop", type=float, default=0.002)
    ap.add_argument("--epochs", type=int, default=20, help="exit head training epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing passes over the test texts")
    ap.add_argument("--timed-texts", type=int, default=1000)
    ap.add_argument("--out")
    args = ap.parse_args()

    import onnx
    import pandas as pd
    from onnx.utils import Extractor

    from slimflow.models.core.provenance import hardware
    from slimflow.models.optimize import cascade
    from slimflow.models.optimize import early_exit as E
    from slimflow.models.optimize.bench import pin, summarize
    from slimflow.models.optimize.predictors import load_predictor
    from slimflow.models.optimize.runtime_tuning import load_tuned
    from slimflow.models.optimize.targets import SessionSettings

    pin(args.threads)
    summary = json.loads(Path(args.summary).read_text())
    test_path = Path(summary["stages"]["validate-data"]["outputs"]["data.paths.test"])
    splits = {
        s: pd.read_parquet(test_path.with_name(f"{s}.parquet")) for s in ("train", "validation", "test")
    }
    folder = Path(args.candidate)
    predictor = load_predictor(folder, args.threads)
    labels = list(predictor.info.labels)
    gold = {s: np.array([labels.index(y) for y in f["label"]]) for s, f in splits.items()}
    model = onnx.load(str(folder / "model.onnx"))
    try:
        enc = E.inspect_graph(model, str(folder / "model.onnx"))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    inputs, mask, layers = enc.inputs, enc.mask_index, enc.layers
    tuned = load_tuned(folder)  # the settings the runtime search saved here, on this hardware
    b1 = tuned.by_batch.get(1) if tuned else None
    settings = replace(b1, threads=args.threads) if b1 else SessionSettings(threads=args.threads)
    print(f"session settings: {settings.label()} (part B: spinning off)")
    exits = args.exit_after if args.exit_after is not None else layers[:-1]
    if not set(exits) <= set(layers[:-1]):
        raise SystemExit(
            f"--exit-after {exits}: the graph's encoder layers are {layers}; exits go after 0..{layers[-2]}"
        )
    E.expose(model, enc, [E.hidden_name(k) for k in exits])
    probe = _session(
        Extractor(model).extract_model(inputs, [enc.logits] + [E.hidden_name(k) for k in exits]), settings
    )

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        return predictor.encode(texts, length=None)

    feats = {s: E.collect(probe, encode, f["text"].tolist(), [enc.logits] + [E.hidden_name(k) for k in exits])
             for s, f in splits.items()}  # fmt: skip
    full_acc = {s: float((feats[s][0].argmax(1) == gold[s]).mean()) for s in splits}
    val, test = full_acc["validation"], full_acc["test"]
    print(
        f"{folder.name}: {len(layers)} layers; whole model's accuracy validation {val:.4f}, test {test:.4f}"
    )

    texts = splits["test"]["text"].tolist()[: args.timed_texts]
    encoded = [predictor.encode([t], length=None) for t in texts]
    whole = _session(model, settings)
    report: dict[str, Any] = {"candidate": str(folder), "layers": len(layers), "hardware": hardware(),
                              "full_accuracy": full_acc, "exits": []}  # fmt: skip
    for j, k in enumerate(exits, start=1):
        head = E.train_head(feats["train"][j], feats["train"][0], gold["train"], args.epochs, seed=0)
        exit_logits = {s: E.head_logits(feats[s][j], head) for s in splits}
        choice = cascade.choose_threshold(
            exit_logits["validation"],
            feats["validation"][0],
            gold["validation"],
            "max_prob",
            args.max_accuracy_drop,
        )
        esc = cascade.escalated(cascade.confidence(exit_logits["test"], "max_prob"), choice.threshold)
        routed_pred = np.where(esc, feats["test"][0].argmax(1), exit_logits["test"].argmax(1))
        test_acc = float((routed_pred == gold["test"]).mean())
        exit_alone = float((exit_logits["test"].argmax(1) == gold["test"]).mean())

        cut_a, cut_b = E.split(onnx.load(str(folder / "model.onnx")), enc, k, head)
        part_a = _session(cut_a, settings)
        # B runs on a minority of texts: its pool does not spin (two pools spinning on the same
        # cores slow each other down; the cascade's runtime search chose the same pair)
        part_b = _session(cut_b, replace(settings, spinning=False))
        worst = 0.0
        for x in encoded[:64]:
            e, h, m = part_a.run(None, x)
            worst = max(worst, float(np.abs(e - E.head_logits(E.pooled(h, x["attention_mask"]), head)).max()))
            worst = max(
                worst,
                float(
                    np.abs(part_b.run(None, {E.hidden_name(k): h, mask: m})[0] - whole.run(None, x)[0]).max()
                ),
            )
        if worst >= 1e-4:
            raise SystemExit(f"the graph cut after layer index {k} differs from the whole one by {worst:.2e}")

        def routed(x: dict[str, np.ndarray], a: Any = part_a, b: Any = part_b, hk: str = E.hidden_name(k),
                   t: float = choice.threshold) -> None:  # fmt: skip
            e, h, m = a.run(None, x)
            if cascade.escalated(cascade.confidence(e, "max_prob"), t)[0]:
                b.run(None, {hk: h, mask: m})

        times: dict[str, list[float]] = {"whole": [], "early_exit": []}
        calls = {"whole": lambda x: whole.run(None, x), "early_exit": routed}
        for r in range(args.rounds):  # each way over all texts in turn (one session pool busy at a time)
            for name in sorted(calls, reverse=r % 2 == 1):
                fn = calls[name]
                for x in encoded[:20]:  # warm-up
                    fn(x)
                for x in encoded:
                    t0 = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - t0)
        stats = {n: summarize(np.asarray(v), 1) for n, v in times.items()}
        row = {"exit_after_layer": k, "threshold": choice.threshold, "validation": choice.to_dict(),
               "test_accuracy": test_acc, "test_escalation": float(esc.mean()),
               "exit_head_alone_test": exit_alone, "split_max_abs_diff": worst, "timing": stats}  # fmt: skip
        report["exits"].append(row)
        w, e = stats["whole"], stats["early_exit"]
        print(
            f"exit after {k + 1} of {len(layers)} layers (--exit-after {k}): "
            f"head alone test {exit_alone:.4f}; "
            f"threshold {choice.threshold:.3f} "
            f"(validation: {choice.escalation_rate:.1%} go on); test accuracy {test_acc:.4f} "
            f"(full {full_acc['test']:.4f}), {esc.mean():.1%} go on\n"
            f"  b1 p50 ms [95% CI]: whole {w['p50_ms']:.3f} "
            f"[{w['p50_ci_low_ms']:.3f}, {w['p50_ci_high_ms']:.3f}]  "
            f"early exit {e['p50_ms']:.3f} [{e['p50_ci_low_ms']:.3f}, {e['p50_ci_high_ms']:.3f}]; "
            f"p95 {w['p95_ms']:.3f} / {e['p95_ms']:.3f}; mean {w['mean_ms']:.3f} / {e['mean_ms']:.3f}; "
            f"split parity {worst:.1e}",
            flush=True,
        )
    cpu = report["hardware"].get("cpu", "")
    print(f"machine: {cpu}; {args.threads} threads, {len(encoded)} test texts x {args.rounds}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
