"""Side by side, one run, one machine: a fine-tuned causal LM in PyTorch FP32 eager, Optimum's ONNX
export with the key/value cache (``text-generation-with-past`` run by ``ORTModelForCausalLM``), and
onnxruntime-genai builds of it (FP32, weight-only INT8 and INT4 variants).

    python benchmarks/llm_compare.py --summary S.json --out llm-compare.json
    python benchmarks/llm_compare.py --model DIR --test test.parquet

Per variant: size, perplexity over whole test chats and its ratio to the FP32 model, exact match
of the greedy answers on the test split, and generation speed measured by
slimflow.models.optimize.gen_bench in a fresh process per variant (threads pinned, warm-up, a
fixed prompt of real test text, exactly --new-tokens generated): decode tokens/s with its 95% CI,
time to first token, prefill tokens/s, peak RSS. With ``--rounds N`` every variant is timed N times,
in turn (a slow spell of the host falls on all of them), and the median round counts; each round's
rate and speed-up are printed and kept. Prints a table and writes the rows and a
``ratios`` object (``--out``); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slimflow.models.core.env import apply_defaults

apply_defaults()

VARIANTS: dict[str, dict[str, Any] | None] = {
    "pytorch_fp32": None,
    "optimum_onnx_fp32": None,
    "genai_fp32": {"precision": "fp32"},
    "genai_int8": {"precision": "int8", "block_size": 32},
    "genai_int4": {"precision": "int4", "block_size": 32},
    "genai_int4_rtn_last": {"precision": "int4", "block_size": 32, "algo": "rtn_last"},
    "genai_int4_k_quant_mixed": {"precision": "int4", "block_size": 32, "algo": "k_quant_mixed"},
    "genai_int4_rtn_asym": {"precision": "int4", "block_size": 32, "algo": "rtn", "symmetric": False},
    "genai_int4_k_quant_asym": {"precision": "int4", "block_size": 32, "algo": "k_quant", "symmetric": False},
    "genai_int4_rtn_asym_b16": {"precision": "int4", "block_size": 16, "algo": "rtn", "symmetric": False},
    "genai_int8_b128": {"precision": "int8", "block_size": 128},
    # INT4 with the attention projections and the MLP down projection of every layer at INT8
    # (the MatMuls whose INT4 error changes answers most; int8_matmuls are globs)
    "genai_int4_attn_down_int8": {
        "precision": "int4",
        "block_size": 32,
        "int8_matmuls": ["*/attn/*", "*/mlp/down_proj/*"],
    },
    "genai_int4_attn_int8": {"precision": "int4", "block_size": 32, "int8_matmuls": ["*/attn/*"]},
    # only the gate projections at INT4 (the sensitivity screen's greedy order: qkv, down, o, up)
    "genai_int4_gate_only": {
        "precision": "int4",
        "block_size": 32,
        "int8_matmuls": ["*/attn/*", "*/mlp/down_proj/*", "*/mlp/up_proj/*"],
    },
    "genai_int4_qkv_down_int8": {
        "precision": "int4",
        "block_size": 32,
        "int8_matmuls": ["*/attn/qkv_proj/*", "*/mlp/down_proj/*"],
    },
    "genai_int8_head_int4": {
        "precision": "int8",
        "block_size": 32,
        "mixed_precision": {"last_matmul": "int4"},
    },
}


def runner(kind: str, folder: Path, model_dir: Path, threads: int | None) -> Any:
    """PyTorch eager, Optimum's ONNX export, or any onnxruntime-genai build folder (other kinds)."""
    from slimflow.models.optimize import genai as G

    if kind == "pytorch_fp32":
        from slimflow.models.families import get_family

        model, _ = get_family("causal-lm").load_trained(model_dir)
        return G.TorchModel(model, threads)
    if kind == "optimum_onnx_fp32":
        from slimflow.models.optimize.llm_export import OptimumModel

        return OptimumModel(folder, threads)
    return G.GenaiModel(folder, threads)


def child(args: argparse.Namespace) -> None:
    """Speed of one variant, in this fresh process: JSON on stdout."""
    from slimflow.models.optimize.gen_bench import GenBenchConfig, bench_generation

    cfg = GenBenchConfig.model_validate_json(args.bench)
    prompt = json.loads(args.prompt)
    run = runner(args.kind, Path(args.folder), Path(args.model), cfg.threads)
    print(json.dumps(bench_generation(run, prompt, cfg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", help="summary JSON of a causal-lm pipeline run")
    ap.add_argument("--model", help="fine-tuned model folder (default: the summary's teacher)")
    ap.add_argument("--test", help="test split parquet (default: the summary's)")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    ap.add_argument("--rows", type=int, default=None, help="test rows scored (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--iterations", type=int, default=8, help="timed generations per batch size")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every variant this many times, in turn, each in a fresh process; the median round counts",
    )
    ap.add_argument("--workdir", help="where builds go (default: a temporary folder)")
    ap.add_argument("--out", help="write all figures as JSON here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--bench", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1 (got {args.rounds})")
    if args.child:
        child(args)
        return
    model_dir, test_path = _inputs(args)
    plan = []
    for kind in args.variants.split(","):
        if kind not in VARIANTS:
            raise SystemExit(f"unknown variant {kind!r}; known: {', '.join(VARIANTS)}")
        plan.append((kind, kind, None))
    report = measure(model_dir, test_path, plan, args)
    print(_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"written: {args.out}")


def build_config(variant: dict[str, Any], model_dir: Path) -> Any:
    """A variant's builder settings (its int8_matmuls globs resolved against the model's layers)."""
    from slimflow.models.optimize import genai as G

    v = dict(variant)
    if "int8_matmuls" in v:
        v["int8_nodes"] = G.select_matmuls(v.pop("int8_matmuls"), model_dir)
    return G.GenaiBuildConfig.model_validate(v)


def measure(
    model_dir: Path, test_path: Path, plan: list[tuple[str, str, Path | None]], args: argparse.Namespace
) -> dict[str, Any]:
    """Every variant of ``plan`` — (name, kind, folder): kind a key of VARIANTS (built from
    ``model_dir`` when its folder is None) or "genai" for an existing build — scored on the test
    split and timed in its own process; the report with rows and ratios against PyTorch FP32."""
    import pandas as pd

    from slimflow.models.families import get_family
    from slimflow.models.optimize import genai as G
    from slimflow.models.optimize.gen_bench import GenBenchConfig, fixed_prompt, setting
    from slimflow.models.optimize.llm_export import export_with_past

    family = get_family("causal-lm")
    _, tok = family.load_trained(model_dir)
    test_df = pd.read_parquet(test_path)
    if args.rows:
        test_df = test_df.head(args.rows)
    test = family.encode(tok, test_df, [], 4096)
    prompt = fixed_prompt(test.prompts, args.prompt_tokens)
    bench = GenBenchConfig(
        prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch_sizes=args.batch,
        iterations=args.iterations, threads=args.threads,
    )  # fmt: skip
    longest = max(sum(1 for t in f["labels"] if t >= 0) for f in test.features)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llm-compare-"))
    rows = []
    for name, kind, given in plan:
        t0 = time.perf_counter()
        folder = given or work / kind
        if kind == "optimum_onnx_fp32" and not (folder / "model.onnx").is_file():
            export_with_past(model_dir, folder)
        elif VARIANTS.get(kind) is not None and not (folder / "model.onnx").is_file():
            G.build(model_dir, folder, build_config(VARIANTS[kind], model_dir), work / "cache")
        built = time.perf_counter() - t0
        size = _size_mb(model_dir if kind == "pytorch_fp32" else folder)
        run = runner(kind, folder, model_dir, args.threads)
        q = G.quality(run, test, longest + 4)
        del run
        rows.append({"variant": name, "kind": kind, "path": str(folder), "size_mb": size, "build_s": built,
                     **q.to_dict(), "answers": q.answers, "speed_rounds": []})  # fmt: skip
        print(f"{name:26s} {size:7.1f} MB  ppl {q.perplexity:8.3f}  EM {q.exact_match:.4f}", flush=True)
    rounds = int(getattr(args, "rounds", 1))
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    for r in range(rounds):  # every variant once per round: a slow spell of the host hits all of them
        for row in rows:
            speed = _speed(row["kind"], Path(row["path"]), model_dir, bench, prompt)
            row["speed_rounds"].append(speed)
            s1 = setting(speed, args.batch[0])
            print(
                f"round {r + 1}/{rounds} {row['variant']:26s} decode {s1['decode_tokens_per_s']:7.1f} tok/s "
                f"[{s1['decode_tokens_per_s_ci'][0]:.1f}, {s1['decode_tokens_per_s_ci'][1]:.1f}]  "
                f"TTFT {s1['ttft_p50_ms']:7.1f} ms",
                flush=True,
            )
    for row in rows:
        row["speed"] = median_round(row["speed_rounds"], args.batch[0])
    return _report(rows, args, model_dir)


def median_round(results: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """The round whose decode tokens/s at ``batch`` is the median of the rounds (the lower one of
    the middle two for an even count): a real measurement, with its own CI and TTFT."""
    from slimflow.models.optimize.gen_bench import setting

    if not results:
        raise ValueError("no benchmark rounds")
    ranked = sorted(results, key=lambda r: setting(r, batch)["decode_tokens_per_s"])
    return ranked[(len(ranked) - 1) // 2]


def _inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    model, test = args.model, args.test
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
        stages = summary["stages"]
        model = model or stages["finetune-teacher"]["outputs"]["model_dir"]
        test = test or stages["validate-data"]["outputs"]["data.paths.test"]
    if not model or not test:
        raise SystemExit("give --summary, or --model and --test")
    return Path(model), Path(test)


def _size_mb(folder: Path) -> float:
    files = [p for p in folder.iterdir() if p.name.startswith(("model.onnx", "model.safetensors", "model-"))]
    return sum(p.stat().st_size for p in files) / 1e6


def _speed(kind: str, folder: Path, model_dir: Path, bench: Any, prompt: list[int]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--kind", kind, "--folder", str(folder), "--model",
           str(model_dir), "--bench", bench.model_dump_json(), "--prompt", json.dumps(prompt)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(rows: list[dict[str, Any]], args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    from slimflow.models.core.provenance import hardware

    ref = next((r for r in rows if r["kind"] == "pytorch_fp32"), None)
    ratios: dict[str, Any] = {}
    if ref is not None:
        ratios = {r["variant"]: ratio(ref, r, args.batch[0]) for r in rows}
    return {"model": str(model_dir), "hardware": hardware(), "batch_sizes": args.batch,
            "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rows": rows,
            "ratios": ratios}  # fmt: skip


def ratio(base: dict[str, Any], other: dict[str, Any], batch: int) -> dict[str, Any]:
    """``other`` against ``base``: decode speed-up (point, and CI-conservative: the low end of the
    other's rate over the high end of the base's; with rounds, each round's speed-up too), TTFT,
    perplexity and size ratios, exact-match delta, and the share of test prompts answered as
    ``base`` answers them (the pipeline's agreement check compares the same way, on validation
    prompts)."""
    from slimflow.models.families.causal_lm.chat import normalize_answer
    from slimflow.models.optimize.gen_bench import setting

    b, s = setting(base["speed"], batch), setting(other["speed"], batch)
    return {
        "decode_speedup": s["decode_tokens_per_s"] / b["decode_tokens_per_s"],
        "decode_speedup_ci_low": s["decode_tokens_per_s_ci"][0] / b["decode_tokens_per_s_ci"][1],
        "decode_speedup_rounds": [
            setting(o, batch)["decode_tokens_per_s"] / setting(r, batch)["decode_tokens_per_s"]
            for r, o in zip(base.get("speed_rounds", []), other.get("speed_rounds", []), strict=False)
        ],
        "ttft_ratio": s["ttft_p50_ms"] / b["ttft_p50_ms"],
        "perplexity_ratio": other["perplexity"] / base["perplexity"],
        "exact_match_delta": other["exact_match"] - base["exact_match"],
        "size_ratio": other["size_mb"] / base["size_mb"],
        "answer_agreement": float(
            sum(
                normalize_answer(a) == normalize_answer(b)
                for a, b in zip(base["answers"], other["answers"], strict=True)
            )
            / max(len(base["answers"]), 1)
        ),
    }


def _table(report: dict[str, Any]) -> str:
    from slimflow.models.optimize.gen_bench import setting

    b = report["batch_sizes"][0]
    head = (f"| variant | size MB | perplexity (ratio) | exact match | decode tok/s b{b} [95% CI] | "
            f"x PyTorch | same answers | TTFT p50 ms | prefill tok/s | peak RSS MB |")  # fmt: skip
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for r in report["rows"]:
        s = setting(r["speed"], b)
        ra = report["ratios"].get(r["variant"], {})
        lines.append(
            f"| {r['variant']} | {r['size_mb']:.0f} | "
            f"{r['perplexity']:.2f} ({ra.get('perplexity_ratio', 1):.3f}) | "
            f"{r['exact_match']:.4f} | {s['decode_tokens_per_s']:.1f} [{s['decode_tokens_per_s_ci'][0]:.1f}, "
            f"{s['decode_tokens_per_s_ci'][1]:.1f}] | {ra.get('decode_speedup', float('nan')):.2f}x | "
            f"{ra.get('answer_agreement', float('nan')):.3f} | "
            f"{s['ttft_p50_ms']:.1f} | {s['prefill_tokens_per_s']:.0f} | {r['speed']['peak_rss_mb']:.0f} |"
        )
    if any(len(r.get("speed_rounds", [])) > 1 for r in report["rows"]):
        lines.append("\ndecode tok/s by round (the table shows each variant's median round):")
        for r in report["rows"]:
            rates = ", ".join(f"{setting(x, b)['decode_tokens_per_s']:.1f}" for x in r["speed_rounds"])
            x = report["ratios"].get(r["variant"], {}).get("decode_speedup_rounds", [])
            ups = f" ({', '.join(f'{v:.2f}x' for v in x)})" if x else ""
            lines.append(f"  {r['variant']}: {rates}{ups}")
    cpu = report["hardware"].get("cpu", "")
    return (
        "\n".join(lines)
        + f"\n\nmachine: {cpu}; prompt {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens"
    )


if __name__ == "__main__":
    main()
