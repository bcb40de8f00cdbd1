"""Which MatMuls of a fine-tuned causal LM can take INT4: a screen for ``int8_matmuls`` of
``genai_int4`` (weight-only INT4/INT8 emulated in PyTorch: slimflow.models.optimize.llm_sensitivity).

    python benchmarks/llm_sensitivity.py --summary S.json --out sensitivity.json
    python benchmarks/llm_sensitivity.py --model DIR --prompts-file train.parquet --layers

Scores plans on the next-token distribution where each prompt's answer starts, against FP32: mean
KL and the share of prompts whose top token is unchanged. Plans: all INT4, all INT8, each MatMul kind
alone at INT8 over an INT4 rest, the kinds added greedily (each step the kind that lowers KL most),
with --layers each decoder layer alone at INT8, and any --plan given. Prompts come from the training
split by default, so a choice made here is still judged independently by the pipeline's agreement
check on validation.
Prints a table and writes the rows (--out); asserts nothing: the real build decides.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from slimflow.models.core.env import apply_defaults

apply_defaults()

KINDS = {
    "attn/qkv_proj": "*/attn/qkv_proj/*",
    "attn/o_proj": "*/attn/o_proj/*",
    "mlp/gate_proj": "*/mlp/gate_proj/*",
    "mlp/up_proj": "*/mlp/up_proj/*",
    "mlp/down_proj": "*/mlp/down_proj/*",
    "lm_head": "/lm_head/*",
}


def _inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    model, prompts = args.model, args.prompts_file
    if args.summary:
        stages = json.loads(Path(args.summary).read_text())["stages"]
        model = model or stages["finetune-teacher"]["outputs"]["model_dir"]
        test = Path(stages["validate-data"]["outputs"]["data.paths.test"])
        prompts = prompts or str(test.with_name(f"{args.split}.parquet"))
    if not model or not prompts:
        raise SystemExit("give --summary, or --model and --prompts-file")
    return Path(model), Path(prompts)


def screen(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd
    import torch

    from slimflow.models.families import get_family
    from slimflow.models.families.causal_lm.chat import prompt_ids
    from slimflow.models.optimize.llm_sensitivity import Emulator

    torch.set_num_threads(args.threads or torch.get_num_threads())
    model_dir, prompts_file = _inputs(args)
    family = get_family("causal-lm")
    model, tok = family.load_trained(model_dir)
    frame = pd.read_parquet(prompts_file)
    texts = frame[family.input_column].tolist()[: args.prompts]
    ids = [prompt_ids(tok, t) for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    emu = Emulator(model, ids, pad, block_size=args.block_size)
    rows: list[dict[str, Any]] = []

    def add(section: str, globs: list[str], label: str | None = None) -> Any:
        s = emu.score(globs, label)
        rows.append({"section": section, "int8_globs": globs, **s.to_dict()})
        print(
            f"{section:8s} {s.plan:58s} INT8 {s.int8_weight_share:5.1%}  KL {s.kl:7.4f}  "
            f"same top token {s.agreement:.3f}",
            flush=True,
        )
        return s

    add("bounds", [], "all INT4")
    add("bounds", ["*"], "all INT8")
    for plan in args.plan or []:
        add("asked", [g.strip() for g in plan.split(",") if g.strip()])
    if args.only_plans:
        return _report(args, model_dir, prompts_file, ids, t0, rows)
    for kind, glob in KINDS.items():
        add("alone", [glob], f"{kind} at INT8")
    chosen: list[str] = []
    left = dict(KINDS)
    while left:
        trials = {k: emu.score([*chosen, g]) for k, g in left.items()}
        best = min(trials, key=lambda k: trials[k].kl)
        chosen.append(left.pop(best))
        add("greedy", list(chosen), " + ".join(k for k, g in KINDS.items() if g in chosen) + " at INT8")
    if args.layers:
        for i in range(model.config.num_hidden_layers):
            add("layer", [f"/model/layers.{i}/*"], f"layer {i} at INT8")
    return _report(args, model_dir, prompts_file, ids, t0, rows)


def _report(
    args: argparse.Namespace, model_dir: Path, prompts_file: Path, ids: list, t0: float, rows: list
) -> dict[str, Any]:
    from slimflow.models.core.provenance import hardware

    return {
        "model": str(model_dir),
        "prompts": str(prompts_file),
        "rows_scored": len(ids),
        "block_size": args.block_size,
        "seconds": round(time.perf_counter() - t0, 1),
        "hardware": hardware(),
        "plans": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", help="summary JSON of a causal-lm pipeline run")
    ap.add_argument("--model", help="fine-tuned model folder (default: the summary's teacher)")
    ap.add_argument("--prompts-file", help="parquet with a prompt column (default: the summary's --split)")
    ap.add_argument("--split", default="train", help="split of the summary's data (default: train)")
    ap.add_argument("--prompts", type=int, default=150, help="prompts scored (default: 150)")
    ap.add_argument("--block-size", type=int, default=32, help="weights per quantization block")
    ap.add_argument("--layers", action="store_true", help="also each decoder layer alone at INT8")
    ap.add_argument(
        "--plan",
        action="append",
        help="also this plan: comma-separated globs kept at INT8, e.g. '*/attn/*,*/mlp/down_proj/*' "
        "(repeatable; the int8_matmuls of genai_int4)",
    )
    ap.add_argument("--only-plans", action="store_true", help="score the bounds and the --plan plans only")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    report = screen(args)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
