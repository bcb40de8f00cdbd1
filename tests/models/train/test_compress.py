"""The compression stage on a tiny fine-tuned teacher: structural steps shrink it, recovery runs."""

from pathlib import Path

import pytest

from slimflow.models.core.errors import ConfigError
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.preflight import preflight
from slimflow.models.train.compress import compress, parameter_counts
from slimflow.models.train.config import CompressConfig
from tests.conftest import FAMILY, build_tiny_model, make_reviews, train_tiny_teacher


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    src = build_tiny_model(tmp / "t3", layers=3)
    prepared, teacher = train_tiny_teacher(tmp, src, rows=200, epochs=4)
    return tmp, prepared, teacher


def test_steps_shrink_the_model_and_recovery_trains(trained, tmp_path):
    tmp, prepared, teacher = trained
    cfg = CompressConfig.model_validate(
        {
            "steps": [
                {"kind": "prune_heads", "ratio": 0.25},
                {"kind": "prune_ffn", "ratio": 0.25},
                {"kind": "prune_magnitude", "sparsity": 0.2},
            ],
            "calibration_examples": 32,
            "recovery": {"train": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32}},
        }
    )
    res = compress(
        cfg,
        prepared,
        teacher.model_dir,
        teacher.model_dir,
        "sha",
        tmp_path / "out",
        tmp / "cache",
        progress=False,
    )
    assert [s["kind"] for s in res.steps] == ["prune_heads", "prune_ffn", "prune_magnitude"]
    assert res.after["params_no_embeddings"] < 0.85 * res.before["params_no_embeddings"]
    assert res.after["params"] < res.before["params"] and res.file_bytes_after < res.file_bytes_before
    assert res.test_before["accuracy"] == pytest.approx(teacher.test["accuracy"])
    assert len(res.history) >= 1 and res.recovery_seconds > 0
    model, _ = FAMILY.load_trained(res.model_dir)
    assert parameter_counts(model) == res.after  # what was saved is what was measured


def test_without_recovery_the_pruned_figures_are_final(trained, tmp_path):
    tmp, prepared, teacher = trained
    cfg = CompressConfig.model_validate(
        {"steps": [{"kind": "prune_ffn", "ratio": 0.5}], "recovery": None, "calibration_examples": 16}
    )
    res = compress(
        cfg,
        prepared,
        teacher.model_dir,
        teacher.model_dir,
        "sha",
        tmp_path / "o",
        tmp / "cache",
        progress=False,
    )
    assert res.test == res.test_pruned and res.history == []


def test_unknown_step_kind_and_bad_ratio_fail_at_config_load():
    with pytest.raises(Exception, match="prune_hedas"):
        CompressConfig.model_validate({"steps": [{"kind": "prune_hedas"}]})
    with pytest.raises(Exception, match="less than 1"):
        CompressConfig.model_validate({"steps": [{"kind": "prune_ffn", "ratio": 1.0}]})


def _cfg(tmp_path: Path, model: Path, **extra) -> PipelineConfig:
    data = tmp_path / "d.csv"
    make_reviews(40).to_csv(data, index=False)
    return PipelineConfig.model_validate(
        {
            "workdir": str(tmp_path / "w"),
            "data": {"source": str(data), "text_column": "review", "label_column": "sentiment"},
            "finetune": {"model": str(model)},
            **extra,
        }
    )


def test_preflight_refuses_model_dependent_mistakes_before_training(tiny_model_dir, tmp_path):
    # the tiny model has 2 layers of 4 heads
    with pytest.raises(ConfigError, match=r"keep_layers: \[5\] out of range.*layers 0\.\.1"):
        preflight(_cfg(tmp_path, tiny_model_dir, distill={"student": {"keep_layers": [0, 5]}}))
    with pytest.raises(
        ConfigError, match="compress.steps.0: prune_heads: would remove every head of layer 0"
    ):
        preflight(
            _cfg(
                tmp_path,
                tiny_model_dir,
                compress={"steps": [{"kind": "prune_heads", "heads": {0: [0, 1, 2, 3]}}]},
            )
        )
    with pytest.raises(ConfigError, match="layer 1 out of range"):  # a 1-layer student has only layer 0
        preflight(
            _cfg(
                tmp_path,
                tiny_model_dir,
                distill={"student": {"keep_layers": [1]}},
                compress={"steps": [{"kind": "prune_heads", "heads": {1: [0]}}]},
            )
        )
    preflight(
        _cfg(
            tmp_path,
            tiny_model_dir,
            distill={"student": {"keep_layers": [1]}},
            compress={"steps": [{"kind": "prune_heads", "ratio": 0.5}]},
        )
    )  # a valid one passes


def test_preflight_asks_the_architecture_adapter(tmp_path):
    """An architecture without an adapter, or a pruning step the architecture cannot take, fails
    in the preflight (config.json only) instead of minutes into a run."""
    import json

    from tests.conftest import build_tiny_mpnet

    mpnet = build_tiny_mpnet(tmp_path / "mpnet")
    with pytest.raises(ConfigError, match="compress.steps.0: prune_heads does not apply to mpnet models"):
        preflight(_cfg(tmp_path, mpnet, compress={"steps": [{"kind": "prune_heads", "ratio": 0.5}]}))
    preflight(_cfg(tmp_path, mpnet, compress={"steps": [{"kind": "prune_ffn", "ratio": 0.5}]}))
    odd = build_tiny_model(tmp_path / "odd")
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="finetune.model: .*no architecture adapter for model type 'gpt2'"):
        preflight(_cfg(tmp_path, odd))


@pytest.fixture
def llama_only_step():
    """A step written for Llama models only (it declares its architectures in its own file)."""
    from typing import ClassVar, Literal

    from slimflow.models.train.steps import STEPS, StepConfig, StepReport, register_step

    class ScaleKvGroups(StepConfig):
        kind: Literal["scale_kv_test"] = "scale_kv_test"
        archs: ClassVar[tuple[str, ...] | None] = ("llama",)

    def apply(model, cfg, ctx):
        import torch

        with torch.no_grad():
            for layer in ctx.arch.layers(model):
                layer.self_attn.v_proj.weight.mul_(0.5)
        return StepReport(cfg.kind, {"layers": float(len(ctx.arch.layers(model)))})

    class ScaleBertValues(StepConfig):  # the reverse: written for BERT only
        kind: Literal["scale_bert_values_test"] = "scale_bert_values_test"
        archs: ClassVar[tuple[str, ...] | None] = ("bert",)

    register_step(ScaleKvGroups)(apply)
    register_step(ScaleBertValues)(lambda model, cfg, ctx: StepReport(cfg.kind, {"applied": 1.0}))
    try:
        yield "scale_kv_test"
    finally:
        STEPS._items.pop("scale_kv_test")
        STEPS._items.pop("scale_bert_values_test")


def test_a_step_for_another_architecture_is_refused_or_skipped_with_its_reason(tmp_path, llama_only_step):
    """A Llama-only step on BERT, a BERT-only one on Llama (and prune_heads, which MPNet cannot
    take, on MPNet): an error naming the reason by default; with on_unsupported: skip, skipped and
    the reason recorded."""
    import torch

    from slimflow.models.archs import adapter_of
    from slimflow.models.train.steps import StepContext, apply_step
    from slimflow.models.train.steps.base import STEPS
    from slimflow.models.train.steps.prune_heads import PruneHeadsConfig
    from tests.conftest import build_tiny_llama, build_tiny_mpnet

    llama_step = STEPS.get(llama_only_step).config()
    bert, _ = FAMILY.load_pretrained(str(build_tiny_model(tmp_path / "b")), ["neg", "pos"], tmp_path)
    mpnet, _ = FAMILY.load_pretrained(str(build_tiny_mpnet(tmp_path / "m")), ["neg", "pos"], tmp_path)
    llama, _ = FAMILY.load_pretrained(str(build_tiny_llama(tmp_path / "l")), ["neg", "pos"], tmp_path)
    bert_step = STEPS.get("scale_bert_values_test").config()
    cases = [
        (bert, llama_step, "scale_kv_test is written for llama models, not bert"),
        (llama, bert_step, "scale_bert_values_test is written for bert models, not llama"),
        (mpnet, PruneHeadsConfig(ratio=0.5), "prune_heads does not apply to mpnet models"),
    ]
    for model, step, why in cases:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=why):
            apply_step(model, step, StepContext(None, 0, arch=adapter_of(model)))
        rep = apply_step(model, step, StepContext(None, 0, arch=adapter_of(model), skip_unsupported=True))
        assert rep.figures == {"skipped": 1.0} and why in rep.notes[0]
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert apply_step(bert, bert_step, StepContext(None, 0, arch=adapter_of(bert))).figures == {
        "applied": 1.0
    }
    w = llama.model.layers[0].self_attn.v_proj.weight.clone()
    rep = apply_step(llama, llama_step, StepContext(None, 0, arch=adapter_of(llama)))
    assert rep.figures == {"layers": 3.0}
    assert torch.allclose(llama.model.layers[0].self_attn.v_proj.weight, w * 0.5)


def test_preflight_and_the_stage_skip_an_unsupported_step_when_told(trained, tmp_path, llama_only_step):
    tmp, prepared, teacher = trained
    steps = [{"kind": llama_only_step}, {"kind": "prune_ffn", "ratio": 0.25}]
    with pytest.raises(
        ConfigError, match="compress.steps.0: scale_kv_test is written for llama.*on_unsupported"
    ):
        preflight(_cfg(tmp_path, Path(teacher.model_dir), compress={"steps": steps}))
    preflight(_cfg(tmp_path, Path(teacher.model_dir), compress={"steps": steps, "on_unsupported": "skip"}))
    cfg = CompressConfig.model_validate(
        {"steps": steps, "on_unsupported": "skip", "calibration_examples": 16, "recovery": None}
    )
    res = compress(
        cfg, prepared, teacher.model_dir, teacher.model_dir, "sha", tmp_path / "out", tmp, progress=False
    )
    assert res.steps[0]["kind"] == llama_only_step and res.steps[0]["skipped"] == 1.0
    assert "written for llama models, not bert" in res.steps[0]["notes"][0]
    assert res.steps[1]["kind"] == "prune_ffn" and res.after["params"] < res.before["params"]


def test_bf16_is_refused_before_any_work_on_a_cpu_without_native_bf16(tmp_path, monkeypatch, tiny_model_dir):
    import torch

    from slimflow.models import preflight as P
    from slimflow.models.core import env
    from slimflow.models.train import loop

    cfg = _cfg(
        tmp_path,
        tiny_model_dir,
        distill={"student": {"keep_layers": [0]}, "train": {"mixed_precision": "bf16"}},
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="distill.train.mixed_precision: bf16 needs a GPU or a CPU with"):
        preflight(cfg)
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    preflight(cfg)
    # the training loop autocasts to bf16 on such a CPU only when asked ('auto' stays FP32)
    monkeypatch.setattr(env, "cpu_has_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert loop._autocast(cpu, "bf16") == (True, torch.bfloat16)
    assert loop._autocast(cpu, "auto") == (False, None) and loop._autocast(cpu, "off") == (False, None)
    assert loop._autocast(cpu, "bf16_if_native") == (True, torch.bfloat16)
    monkeypatch.setattr(env, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="without avx512_bf16"):
        loop._autocast(cpu, "bf16")
    assert loop._autocast(cpu, "bf16_if_native") == (False, None)  # FP32 where bf16 would be slow


def test_bf16_autocast_trains_on_a_cpu_that_has_it(tmp_path):
    from slimflow.models.core.env import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no avx512_bf16/AMX")
    src = build_tiny_model(tmp_path / "m", layers=3)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, bf16 = train_tiny_teacher(tmp_path / "a", src, rows=200, epochs=4, mixed_precision="bf16")
    _, fp32 = train_tiny_teacher(tmp_path / "b", src, rows=200, epochs=4, mixed_precision="auto")
    assert bf16.test["accuracy"] >= 0.8
    # bf16 really ran (other rounding, other losses) and learned as FP32 did
    assert bf16.history[-1]["train_loss"] != fp32.history[-1]["train_loss"]
    assert bf16.history[-1]["train_loss"] == pytest.approx(fp32.history[-1]["train_loss"], abs=0.05)
