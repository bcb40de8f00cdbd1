"""onnxruntime-genai builds of a tiny causal LM (built from a config, fine-tuned here): the FP32
build reproduces PyTorch (KV-cache generation included), weight-only builds hold MatMulNBits and
shrink, excluded nodes stay full precision, answers and perplexity match, the generation
benchmark reports what it claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimflow.models.families import get_family
from slimflow.models.optimize import genai as G
from slimflow.models.optimize.gen_bench import GenBenchConfig, bench_generation, fixed_prompt

FAMILY = get_family("causal-lm")


@pytest.fixture(scope="module")
def sft(tiny_sft):
    """The tiny fine-tuned causal LM (conftest), loaded, and its encoded test split."""
    tmp, result, prepared = tiny_sft
    model, tok = FAMILY.load_trained(tmp / "teacher")
    test = FAMILY.encode(tok, pd.read_parquet(prepared.path("test")), [], 96)
    return tmp, result, model, tok, test


def _ops(folder: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _op_of(folder: Path, name: str) -> str | None:
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return next((n.op_type for n in graph.node if n.name.startswith(name)), None)


def test_fp32_build_reproduces_pytorch_with_the_kv_cache(sft, tiny_genai_candidate) -> None:
    _, _, model, tok, test = sft
    out = tiny_genai_candidate  # G.build of the tiny model at FP32 (conftest: one build for every test)
    ops = _ops(out)
    assert ops.get("GroupQueryAttention") == 2 and "MatMulNBits" not in ops  # fused attention, KV cache
    runner = G.GenaiModel(out, threads=1)
    report = G.parity(G.TorchModel(model), runner, test.prompts[:4], new_tokens=12)
    assert report["max_abs_logit_diff"] < 1e-4
    assert report["greedy_token_agreement"] == 1.0
    ref = G.quality(G.TorchModel(model), test, 4)
    got = G.quality(runner, test, 4)
    assert got.answers == ref.answers and got.exact_match >= 0.8
    assert got.perplexity == pytest.approx(ref.perplexity, rel=1e-4)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_weight_only_builds_hold_matmulnbits_and_shrink(sft, tiny_genai_candidate, precision: str) -> None:
    tmp, _, _, _, _ = sft
    fp32 = tiny_genai_candidate
    cfg = G.GenaiBuildConfig(precision=precision, block_size=16)
    out = G.build(tmp / "teacher", tmp / precision, cfg, tmp / "cache")
    ops = _ops(out)
    assert ops.get("MatMulNBits", 0) >= 2 * 4 + 1  # qkv, o, gate/up, down per layer, and the head
    assert G.size_mb(out) < 0.6 * G.size_mb(fp32)
    head_fp = G.GenaiBuildConfig(precision=precision, block_size=16, exclude_nodes=["/lm_head/MatMul"])
    kept = G.build(tmp / "teacher", tmp / f"{precision}-head", head_fp, tmp / "cache")
    assert _ops(kept).get("MatMulNBits", 0) == ops["MatMulNBits"] - 1
    assert _op_of(kept, "/lm_head/MatMul") == "MatMul"  # the head stayed full precision
    assert _op_of(out, "/lm_head/MatMul") == "MatMulNBits"


def test_walking_one_cache_equals_generating_and_scoring_apart(sft, tiny_genai_candidate) -> None:
    """``scoring.walk`` (the prompts' shared prefix once; per row: rewind to it, append the row,
    decode, rewind to the prompt, append the rest) gives what ``generate`` and ``logits`` give row
    by row: answers cut by the budget or an end token, continuations the model would not pick (the
    gold answer reversed), a row that does not continue its prompt, prompts sharing no prefix; for
    PyTorch, the FP32 and an INT8 build."""
    from slimflow.models.families.causal_lm.chat import shared_prefix
    from slimflow.models.families.causal_lm.scoring import answers, walk

    tmp, _, model, _, test = sft
    int8 = G.build(tmp / "teacher", tmp / "int8-scoring", G.GenaiBuildConfig(precision="int8"), tmp / "cache")
    runners = [G.TorchModel(model, threads=1), G.GenaiModel(tiny_genai_candidate, 1), G.GenaiModel(int8, 1)]
    prompts = [list(p) for p in test.prompts[:4]]
    golds = [list(f["input_ids"]) for f in test.features[:4]]
    fulls = [golds[0], prompts[1] + golds[1][len(prompts[1]) :][::-1], golds[2], prompts[0] + [5, 6]]
    assert shared_prefix(prompts) > 0
    unshared = [p[1:] if i % 2 else p for i, p in enumerate(prompts)]  # no prefix in common
    assert shared_prefix(unshared) == 0
    for runner in runners:
        for ps, fs in ((prompts, fulls), (unshared, None)):
            for budget in (0, 1, 8):
                got = list(walk(runner, ps, fs, budget, test.eos_ids))
                for (answer, logits), p, f in zip(got, ps, fs or ps, strict=True):
                    assert answer == (runner.generate(p, budget, test.eos_ids) if budget else [])
                    want = runner.logits(f)
                    assert logits.shape == want.shape
                    np.testing.assert_allclose(logits, want, atol=1e-4)
                for (answer, logits), (a, full) in zip(walk(runner, ps, fs, budget, test.eos_ids, last=True),
                                                       got, strict=True):  # fmt: skip
                    assert answer == a and logits.shape == (1, full.shape[1])
                    np.testing.assert_allclose(logits, full[-1:], atol=1e-4)
        apart = [runner.generate(p, 8, test.eos_ids) for p in prompts]
        assert answers(runner, prompts, 8, test.eos_ids) == apart
        assert any(apart)  # answers were made
    quality = G.quality(runners[2], test, 8)  # the walk, and the row-by-row calls' answers
    apart = [runners[2].generate(p, 8, test.eos_ids) for p in test.prompts]
    assert quality.answers == [test.tokenizer.decode(a, skip_special_tokens=True) for a in apart]


def test_the_shared_prefix_stops_short_of_the_shortest_prompt() -> None:
    from slimflow.models.families.causal_lm.chat import shared_prefix

    assert shared_prefix([]) == 0
    assert shared_prefix([[1, 2, 3]]) == 2  # one prompt: all but its last token
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps a token of its own
    assert shared_prefix([[7, 2], [1, 2]]) == 0


def test_the_walk_runs_the_shared_prefix_once_and_a_single_prompt_in_one_prefill() -> None:
    """What a walk asks of a session: the prefix once, then each row's own tokens; a lone prompt
    (a served request) in one piece, not split into prefix and last token."""
    from slimflow.models.families.causal_lm.scoring import walk

    class Session:
        def __init__(self) -> None:
            self.calls: list[tuple[str, object]] = []

        def append(self, ids):
            self.calls.append(("append", list(ids)))
            return np.zeros((len(ids), 3), dtype=np.float32)

        def greedy(self, max_new_tokens, stop):
            return [9]

        def rewind(self, length):
            self.calls.append(("rewind", length))

    class Runner:
        def __init__(self) -> None:
            self.sessions: list[Session] = []

        def session(self, length):
            self.sessions.append(Session())
            return self.sessions[-1]

    runner = Runner()
    got = list(walk(runner, [[1, 2, 3, 4], [1, 2, 5]], None, 2, []))
    assert [a for a, _ in got] == [[9], [9]] and [lg.shape for _, lg in got] == [(4, 3), (3, 3)]
    assert runner.sessions[0].calls == [
        ("append", [1, 2]), ("rewind", 2), ("append", [3, 4]), ("rewind", 2), ("append", [5]),
    ]  # fmt: skip
    list(walk(runner, [[1, 2, 3]], [[1, 2, 3, 7, 8]], 2, []))
    assert runner.sessions[1].calls == [
        ("rewind", 0),
        ("append", [1, 2, 3]),
        ("rewind", 3),
        ("append", [7, 8]),
    ]


def test_a_failing_build_names_the_builder_and_its_error(tmp_path: Path) -> None:
    from slimflow.models.core.errors import SlimflowError

    (tmp_path / "empty").mkdir()
    with pytest.raises(SlimflowError, match="model builder failed"):
        G.build(tmp_path / "empty", tmp_path / "out", G.GenaiBuildConfig(precision="fp32"), tmp_path / "c")


def test_generation_benchmark_reports_consistent_figures(sft, tiny_genai_candidate) -> None:
    _, _, model, tok, test = sft
    out = tiny_genai_candidate
    prompt = fixed_prompt(test.prompts[:5], 24)
    assert len(prompt) == 24
    cfg = GenBenchConfig(
        prompt_tokens=24, new_tokens=6, batch_sizes=[1, 2], warmup=1, iterations=4, threads=1
    )
    for runner in (G.GenaiModel(out, threads=1), G.TorchModel(model, threads=1)):
        result = bench_generation(runner, prompt, cfg)
        assert [s["batch_size"] for s in result["settings"]] == [1, 2]
        for s in result["settings"]:
            low, high = s["decode_tokens_per_s_ci"]
            assert 0 < low <= s["decode_tokens_per_s"] <= high
            assert s["ttft_p50_ci_ms"][0] <= s["ttft_p50_ms"] <= s["ttft_p50_ci_ms"][1]
            assert s["ttft_p50_ms"] <= s["ttft_p95_ms"] and s["token_p50_ms"] <= s["token_p95_ms"]
            assert s["prefill_tokens_per_s"] == pytest.approx(s["batch_size"] * 24 * 1e3 / s["ttft_p50_ms"])
        assert result["threads"] == 1 and result["peak_rss_mb"] > 0


def test_timed_generation_makes_exactly_the_asked_tokens(sft, tiny_genai_candidate) -> None:
    _, _, model, _, test = sft
    out = tiny_genai_candidate
    for runner in (G.GenaiModel(out, threads=1), G.TorchModel(model, threads=1)):
        ttft, steps = runner.timed([test.prompts[0]], 7)
        assert ttft > 0 and len(steps) == 6 and all(np.isfinite(steps))


def test_batched_pytorch_answers_equal_the_one_by_one_answers(sft, tiny_genai_candidate) -> None:
    from slimflow.models.optimize.predictors import load_predictor

    tmp, _, model, _, test = sft
    torch_runner = G.TorchModel(model, threads=1)
    budget = 8
    batched = torch_runner.generate_batch(test.prompts, budget, test.eos_ids, batch_size=5)
    assert batched == [torch_runner.generate(p, budget, test.eos_ids) for p in test.prompts]
    assert len({len(p) for p in test.prompts}) > 1 and any(batched)  # padding was needed; answers made
    frame = pd.read_parquet(next((tmp / "data").glob("test.parquet")))
    reference = load_predictor(tmp / "teacher", threads=1)
    prompts = frame["prompt"].tolist()
    assert reference.predict(prompts, batch_size=7) == reference.predict(prompts)
    genai = load_predictor(tiny_genai_candidate, threads=1)  # no batched path: one by one
    assert genai.predict(prompts[:5], batch_size=7) == genai.predict(prompts[:5])


def test_a_genai_candidate_folder_loads_as_a_generative_predictor(sft, tiny_genai_candidate) -> None:
    import json

    from slimflow.models.optimize.predictors import GenerativePredictor, load_predictor

    tmp, _, model, tok, test = sft
    out = tiny_genai_candidate  # the FP32 build saved as a candidate (max_new_tokens 8)
    predictor = load_predictor(out, threads=1)
    assert isinstance(predictor, GenerativePredictor) and predictor.family.name == "causal-lm"
    frame = pd.read_parquet(next((tmp / "data").glob("test.parquet")))
    answers = predictor.predict(frame["prompt"].tolist())
    assert answers == G.quality(G.TorchModel(model), test, 8).answers
    assert predictor.family.score(answers, frame["completion"].tolist(), [])["exact_match"] >= 0.8
    # plain text is one user turn; a JSON list of turns is taken as the conversation
    turns = json.loads(frame["prompt"].iloc[0])
    assert predictor.prompt_ids(turns[0]["content"]) == predictor.prompt_ids(json.dumps(turns))
    records = predictor.family.predictions(answers[:2], [])
    assert records == [{"text": answers[0]}, {"text": answers[1]}]


def test_asymmetric_int4_loads_carries_zero_points_and_needs_a_named_algorithm(sft) -> None:
    import onnx
    from pydantic import ValidationError

    tmp, _, model, _, test = sft
    cfg = G.GenaiBuildConfig(precision="int4", block_size=16, algo="rtn", symmetric=False)
    assert cfg.label() == "genai_int4_rtn_asym_b16"
    out = G.build(tmp / "teacher", tmp / "int4-asym", cfg, tmp / "cache")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) >= 2 * 4 + 1 and all(len(n.input) >= 4 and n.input[3] for n in nbits)  # zero points
    got = G.quality(G.GenaiModel(out), test, 4)  # the tiny model ties its embedding to the head
    ref = G.quality(G.TorchModel(model), test, 4)
    assert got.rows == ref.rows and got.perplexity == pytest.approx(ref.perplexity, rel=0.5)
    with pytest.raises(ValidationError, match="symmetric: false needs algo 'rtn' or 'k_quant'"):
        G.GenaiBuildConfig(precision="int4", symmetric=False)
    from slimflow.models.optimize.quantizers.genai_weight_only import GenaiInt4Config

    with pytest.raises(ValidationError, match="symmetric: false needs algo"):
        GenaiInt4Config(symmetric=False)
    assert GenaiInt4Config(symmetric=False, algo="k_quant").symmetric is False
    assert G.GenaiBuildConfig(precision="fp32", symmetric=False).builder_args() == ["-p", "fp32", "-e", "cpu"]


def test_mixed_precision_reaches_the_builder_and_does_not_double_an_algorithm_alias() -> None:
    from pydantic import ValidationError

    cfg = G.GenaiBuildConfig(precision="int8", mixed_precision={"last_matmul": "int4"})
    assert "matmul_mixed_precision=last_matmul:int4" in cfg.builder_args()
    assert cfg.label() == "genai_int8_last_matmul-int4_b32"
    with pytest.raises(ValidationError, match="already sets mixed precision"):
        G.GenaiBuildConfig(precision="int4", algo="rtn_last", mixed_precision={"mixed_layers": "int8"})
    from slimflow.models.optimize.quantizers.genai_weight_only import GenaiInt8Config

    assert GenaiInt8Config(mixed_precision={"last_matmul": "int4"}).mixed_precision == {"last_matmul": "int4"}
    with pytest.raises(ValidationError, match="already sets mixed precision"):
        GenaiInt8Config(algo="k_quant_last", mixed_precision={"last_matmul": "int4"})


def test_an_int8_build_with_an_int4_head_loads_and_holds_both_widths(sft) -> None:
    import onnx
    from onnx import helper

    tmp, _, model, _, test = sft
    cfg = G.GenaiBuildConfig(precision="int8", block_size=16, mixed_precision={"last_matmul": "int4"})
    out = G.build(tmp / "teacher", tmp / "int8-head4", cfg, tmp / "cache")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    bits = {
        n.name: next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits")
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }
    head = [b for name, b in bits.items() if name.startswith("/lm_head/")]
    assert head == [4] and sorted(set(bits.values())) == [4, 8]  # the head at 4 bits, the body at 8
    got = G.quality(G.GenaiModel(out), test, 4)  # the tiny model ties its embedding to the head
    ref = G.quality(G.TorchModel(model), test, 4)
    assert got.rows == ref.rows and got.perplexity == pytest.approx(ref.perplexity, rel=0.5)


def test_an_int4_build_with_int8_matmuls_holds_them_at_int8_and_the_rest_at_int4(sft) -> None:
    import json

    import onnx
    from onnx import helper

    tmp, _, model, _, test = sft
    layers = json.loads((tmp / "teacher" / "config.json").read_text())["num_hidden_layers"]
    picked = G.select_matmuls(["*/attn/*", "/model/layers.0/mlp/down_proj/*"], tmp / "teacher")
    assert picked == [
        *(f"/model/layers.{i}/attn/{m}/MatMul" for i in range(layers) for m in ("qkv_proj", "o_proj")),
        "/model/layers.0/mlp/down_proj/MatMul",
    ]
    kept = "/model/layers.1/mlp/up_proj/MatMul"
    cfg = G.GenaiBuildConfig(precision="int4", block_size=16, int8_nodes=picked, exclude_nodes=[kept])
    assert cfg.label() == f"genai_int4_int8x{len(picked)}_b16"
    out = G.build(tmp / "teacher", tmp / "int4-int8mm", cfg, tmp / "cache")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    bits = {
        n.name.removesuffix(f"_Q{b}"): b
        for n in graph.node
        if n.op_type == "MatMulNBits"
        for b in [next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits")]
    }
    assert {n for n, b in bits.items() if b == 8} == set(picked)  # exactly the picked ones at int8
    assert {b for n, b in bits.items() if n not in picked} == {4} and "/lm_head/MatMul" in bits
    assert _op_of(out, kept) == "MatMul"  # the exclusion still holds beside them
    # the tied embedding shares the head's int4 weights, as in a plain int4 build
    embedding = {n.op_type for n in graph.node if n.name.startswith("/model/embed_tokens/")}
    assert "GatherBlockQuantized" in embedding and "Gather" not in embedding
    got = G.quality(G.GenaiModel(out), test, 4)
    ref = G.quality(G.TorchModel(model), test, 4)
    assert got.rows == ref.rows and got.perplexity == pytest.approx(ref.perplexity, rel=0.5)


def test_int8_matmul_globs_are_checked_before_any_build() -> None:
    from pydantic import ValidationError

    from slimflow.models.optimize.quantizers.genai_weight_only import GenaiInt4Config, GenaiInt8Config

    assert G.select_matmuls_of(["/lm_head/*", "/model/layers.1/mlp/*"], 2) == [
        "/lm_head/MatMul",
        "/model/layers.1/mlp/gate_proj/MatMul",
        "/model/layers.1/mlp/up_proj/MatMul",
        "/model/layers.1/mlp/down_proj/MatMul",
    ]
    assert GenaiInt4Config(int8_matmuls=["*/attn/*"]).int8_matmuls == ["*/attn/*"]
    with pytest.raises(ValidationError, match=r"'\*/atn/\*' matches no MatMul .*attn/qkv_proj"):
        GenaiInt4Config(int8_matmuls=["*/atn/*"])
    with pytest.raises(ValidationError, match="int8_matmuls is for genai_int4"):
        GenaiInt8Config(int8_matmuls=["*/attn/*"])
    with pytest.raises(ValidationError, match="sets its own mixed precision"):
        GenaiInt4Config(algo="k_quant_mixed", int8_matmuls=["*/attn/*"])
    with pytest.raises(ValidationError, match="int8_nodes is for int4 builds"):
        G.GenaiBuildConfig(precision="int8", int8_nodes=["/lm_head/MatMul"])
    with pytest.raises(ValueError, match="matches no MatMul"):
        G.select_matmuls_of(["/model/layers.5/*"], 2)  # a layer the model does not have


# ------------------------------------------------------------------------- logit bias correction
def test_a_logit_bias_is_added_to_every_logit_and_steers_generation(
    sft, tiny_genai_candidate, tmp_path: Path
) -> None:
    import shutil

    _, _, _, _, test = sft
    biased = tmp_path / "biased"
    shutil.copytree(tiny_genai_candidate, biased)
    plain = G.GenaiModel(tiny_genai_candidate, threads=1)
    bias = np.random.default_rng(0).normal(0, 1, plain.vocab_size).astype(np.float32)
    G.add_logit_bias(biased, bias)
    runner = G.GenaiModel(biased, threads=1)
    ids = test.features[0]["input_ids"]
    np.testing.assert_allclose(runner.logits(ids), plain.logits(ids) + bias, atol=1e-4)  # every position
    # cached decoding takes it too: a huge offset on one token makes it every greedy token
    shutil.rmtree(biased)
    shutil.copytree(tiny_genai_candidate, biased)
    forced = np.zeros(plain.vocab_size, dtype=np.float32)
    forced[7] = 1e4
    G.add_logit_bias(biased, forced)
    assert G.GenaiModel(biased, threads=1).generate(test.prompts[0], 5, []) == [7] * 5
    with pytest.raises(ValueError, match="already has a logit bias"):
        G.add_logit_bias(biased, forced)
    with pytest.raises(ValueError, match=r"3 entries, the model's vocabulary \d+"):
        G.add_logit_bias(tiny_genai_candidate, np.zeros(3, dtype=np.float32))


class _Table:
    """A runner whose logits are a fixed function of the ids, minus an offset."""

    def __init__(self, offset: np.ndarray) -> None:
        self.offset = offset

    def logits(self, ids: list[int]) -> np.ndarray:
        rng = np.random.default_rng(sum(ids) * 31 + len(ids))
        return rng.normal(0, 3, (len(ids), len(self.offset))) - self.offset


def test_the_answer_start_shift_is_the_mean_centred_logit_difference() -> None:
    offset = np.array([0.5, -1.0, 2.0, 0.0, 0.25])
    prompts = [[1, 2, 3], [4, 5], [9, 9, 9, 9]]
    shift = G.answer_start_shift(_Table(np.zeros(5)), _Table(offset), prompts)
    np.testing.assert_allclose(shift, offset - offset.mean(), atol=1e-6)  # a constant offset comes back
    assert G.answer_start_shift(_Table(offset), _Table(offset), prompts) == pytest.approx(np.zeros(5))
    with pytest.raises(ValueError, match="at least one calibration prompt"):
        G.answer_start_shift(_Table(offset), _Table(offset), [])


def test_logit_bias_correction_removes_the_build_s_shift_on_its_calibration_prompts(sft, tmp_path) -> None:
    from slimflow.models.families.causal_lm.chat import prompt_ids
    from slimflow.models.optimize.quantizers.base import QuantContext
    from slimflow.models.optimize.quantizers.genai_weight_only import GenaiInt4Config, _build
    from slimflow.models.optimize.targets import get_target

    tmp, _, model, tok, _ = sft
    train = pd.read_parquet(next((tmp / "data").rglob("train.parquet")))["prompt"].tolist()
    ctx = QuantContext(None, None, tmp / "teacher", tok, train, 96, get_target("cpu"), FAMILY)
    cfg = GenaiInt4Config(block_size=16, logit_bias_correction={"prompts": 12})
    report = _build(cfg, ctx, tmp_path / "int4-bc")
    assert report.figures["logit_bias_prompts"] == 12 and report.figures["logit_bias_max_abs"] > 1e-3
    assert any("logit bias correction on 12 training prompts" in n for n in report.notes)
    assert _op_of(tmp_path / "int4-bc", "/slimflow/logit_bias/Add") == "Add"
    prompts = [prompt_ids(tok, t) for t in train[:12]]
    left = G.answer_start_shift(G.TorchModel(model), G.GenaiModel(tmp_path / "int4-bc"), prompts)
    # what is left of the INT4 build's mean shift there is float rounding, not the offset it had
    assert float(np.abs(left).max()) < 1e-3 * max(1.0, report.figures["logit_bias_max_abs"])
    with pytest.raises(ValueError, match="CPU targets only \\(this one is 'cuda'\\)"):
        _build(cfg, QuantContext(None, None, tmp / "teacher", tok, train, 96, get_target("cuda"), FAMILY),
               tmp_path / "never")  # fmt: skip
    assert not (tmp_path / "never" / "model.onnx").exists()  # refused before building


def test_logit_bias_correction_settings_are_checked() -> None:
    from pydantic import ValidationError

    from slimflow.models.optimize.quantizers.genai_weight_only import GenaiInt8Config

    assert GenaiInt8Config(logit_bias_correction={}).logit_bias_correction.prompts == 128
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        GenaiInt8Config(logit_bias_correction={"prompts": 0})
    with pytest.raises(ValidationError, match="promts"):
        GenaiInt8Config(logit_bias_correction={"promts": 64})
