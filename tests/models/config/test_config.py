from pathlib import Path

import pytest

from slimflow.models.config.loading import apply_overrides, config_to_params
from slimflow.models.core.errors import ConfigError
from slimflow.models.pipeline_config import PipelineConfig, load_config
from slimflow.models.train.methods import AdaLoraMethod, FreezeMethod, LoraMethod

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "mpnet-minilm.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    # a config must round-trip through its own dump (what the flow receives)
    assert PipelineConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_unknown_key_names_file_field_and_valid_keys(tmp_path):
    p = write(tmp_path, "finetune:\n  trian:\n    epochs: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "finetune.trian" in msg and "train" in msg and "unknown key" in msg


def test_unknown_key_inside_a_method(tmp_path):
    p = write(tmp_path, "finetune:\n  method:\n    kind: lora\n    rank: 4\n")
    with pytest.raises(ConfigError, match=r"finetune\.method\.rank: unknown key; valid keys here: .*\br\b"):
        load_config(p)


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("data:\n  split:\n    test: 0.7\n", "data.split.test"),
        ("data:\n  split:\n    validation: 0.4\n    test: 0.45\n", "data.split"),
        ("finetune:\n  train:\n    epochs: 0\n", "finetune.train.epochs"),
        ("finetune:\n  train:\n    learning_rate: -1\n", "finetune.train.learning_rate"),
        ("finetune:\n  method:\n    kind: adalora\n    init_r: 4\n    target_r: 8\n", "finetune.method"),
        ("finetune:\n  method:\n    kind: nope\n", "finetune.method"),
        ("data:\n  labels: [a]\n", "data.labels"),
        ("data:\n  labels: [a, a]\n", "data.labels"),
        ("name: '../etc'\n", "name"),
        ("data:\n  validation:\n    min_chars: 10\n    max_chars: 5\n", "data.validation"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(tmp_path, yaml_text, field):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, yaml_text))
    assert f"  - {field}" in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    p = write(tmp_path, "finetune:\n  train:\n    epochs: 3\n")
    cfg = load_config(
        p, ["finetune.train.epochs=1", "data.labels=[x, y]", "data.max_rows=null", "finetune.method.kind=ia3"]
    )
    assert cfg.finetune.train.epochs == 1
    assert cfg.data.labels == ["x", "y"]
    assert cfg.finetune.method.kind == "ia3"
    with pytest.raises(ConfigError, match="finetune.train.epochs"):
        load_config(p, ["finetune.train.epochs=-2"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(p, ["epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_overrides_index_lists_and_name_a_bad_index(tmp_path):
    p = write(
        tmp_path,
        "compress:\n  steps:\n    - {kind: prune_heads, ratio: 0.3}\n    - {kind: prune_ffn, ratio: 0.3}\n",
    )
    cfg = load_config(p, ["compress.steps.1.ratio=0.2"])
    assert [s.ratio for s in cfg.compress.steps] == [0.3, 0.2]
    raw = {"compress": {"steps": [{"kind": "prune_heads"}]}, "name": "x"}
    for bad, message in (
        ("compress.steps.3.ratio=1", r"compress.steps.3 is past the end of the list \(1 item\(s\): 0..0\)"),
        ("compress.steps.ratio=1", "compress.steps is a list; index it with a number"),
        ("compress.0=1", "compress is not a list"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(raw, [bad])


def test_method_defaults_to_lora_and_each_kind_is_typed():
    assert isinstance(PipelineConfig().finetune.method, LoraMethod)
    cfg = PipelineConfig.model_validate({"finetune": {"method": {"r": 4}}})
    assert isinstance(cfg.finetune.method, LoraMethod) and cfg.finetune.method.r == 4
    cfg = PipelineConfig.model_validate({"finetune": {"method": {"kind": "freeze", "train_top_layers": 1}}})
    assert isinstance(cfg.finetune.method, FreezeMethod)
    cfg = PipelineConfig.model_validate({"finetune": {"method": {"kind": "adalora"}}})
    assert isinstance(cfg.finetune.method, AdaLoraMethod)


def test_config_is_frozen_and_flattens_to_params():
    cfg = PipelineConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        cfg.name = "other"
    params = config_to_params(cfg)
    assert params["finetune.train.epochs"] == str(cfg.finetune.train.epochs)
    assert params["data.split.seed"] == "42"
    assert all(isinstance(v, str) for v in params.values())


def test_plug_in_fields_name_the_registered_kinds_and_their_keys(tmp_path):
    with pytest.raises(
        ConfigError, match=r"compress\.steps\.0: .*unknown compression step kind 'prune_all'; known: "
    ):
        load_config(write(tmp_path, "compress:\n  steps:\n    - {kind: prune_all}\n"))
    with pytest.raises(
        ConfigError, match=r"optimize\.quantize\.0\.bits: unknown key; valid keys here: .*keep_fp32"
    ):
        load_config(write(tmp_path, "optimize:\n  quantize:\n    - {kind: ort_int8_dynamic, bits: 4}\n"))
    with pytest.raises(
        ConfigError, match=r"distill\.student\.keep: unknown key; valid keys here: keep_layers, kind"
    ):
        load_config(write(tmp_path, "distill:\n  student: {keep: [0]}\n"))
    with pytest.raises(
        ConfigError,
        match=r"  - task: .*unknown task family 'translation'; known: causal-lm, sequence-classification",
    ):
        load_config(write(tmp_path, "task: translation\n"))


def test_a_plug_in_registered_later_is_accepted_without_touching_the_config_classes(tmp_path):
    """Plug-in fields look the kind up in the registry when a value is validated: nothing is
    frozen at import, so a step registered after the config classes were built is accepted."""
    from typing import Literal

    from slimflow.models.train.steps import STEPS, StepConfig, StepReport, register_step

    class PruneNothing(StepConfig):
        kind: Literal["prune_nothing_test"] = "prune_nothing_test"

    register_step(PruneNothing)(lambda model, cfg, ctx: StepReport("prune_nothing_test"))
    try:
        cfg = load_config(write(tmp_path, "compress:\n  steps:\n    - {kind: prune_nothing_test}\n"))
        assert isinstance(cfg.compress.steps[0], PruneNothing)
    finally:
        STEPS._items.pop("prune_nothing_test")


def test_a_best_epoch_metric_the_family_does_not_compute_is_refused(tmp_path):
    p = write(tmp_path, "task: causal-lm\nfinetune:\n  train:\n    metric: f1\n")
    with pytest.raises(ConfigError, match=r"finetune.train.metric 'f1' is not computed for task 'causal-lm'"):
        load_config(p)
    cfg = load_config(write(tmp_path, "task: causal-lm\n"))  # left out: the family's own metric
    assert cfg.finetune.train.metric is None


def test_sections_a_family_cannot_run_yet_are_refused_before_any_work(tmp_path, monkeypatch):
    from slimflow.models.families.causal_lm.family import CausalLM

    p = write(tmp_path, "task: causal-lm\ncompress:\n  steps:\n    - {kind: prune_heads, ratio: 0.3}\n")
    assert load_config(p).compress is not None  # every stage runs for causal LMs now
    monkeypatch.setattr(CausalLM, "stages", ("optimize",))  # a family without the stage
    with pytest.raises(ConfigError, match=r"task 'causal-lm' does not support the compress: section yet"):
        load_config(p)


def test_generation_gates_are_refused_for_a_family_that_does_not_generate(tmp_path):
    p = write(tmp_path, "optimize: {}\npromote:\n  model_name: m\n  gates:\n    max_perplexity_ratio: 1.1\n")
    with pytest.raises(ConfigError, match=r"max_perplexity_ratio: judged on generated text only"):
        load_config(p)


def test_a_generator_speed_gate_needs_its_batch_size_among_the_generation_benchmarks(tmp_path):
    body = "task: causal-lm\noptimize: {}\npromote:\n  model_name: m\n  gates:\n"
    body += "    min_decode_tokens_per_s: 50\n"
    cfg = load_config(write(tmp_path, body))
    assert cfg.promote.gates.min_decode_tokens_per_s == 50 and cfg.optimize.generation.batch_sizes == [1]
    with pytest.raises(
        ConfigError, match=r"optimize.generation.batch_sizes: \[1\]\), so min_decode_tokens_per_s"
    ):
        load_config(write(tmp_path, body + "    latency_batch_size: 4\n"))


def test_cascades_need_two_parts_on_one_target_of_a_classifier(tmp_path):
    body = "optimize:\n  cascades:\n    - {fast: student/ort_int8_dynamic/cpu, fallback: %s}\n"
    cfg = load_config(write(tmp_path, body % "teacher/ort_int8_dynamic/cpu"))
    assert (
        cfg.optimize.cascades[0].name()
        == "cascade/student.ort_int8_dynamic_then_teacher.ort_int8_dynamic/cpu"
    )
    with pytest.raises(ConfigError, match="two different candidates"):
        load_config(write(tmp_path, body % "student/ort_int8_dynamic/cpu"))
    with pytest.raises(ConfigError, match="run on one target"):
        load_config(write(tmp_path, body % "teacher/ort_int8_dynamic/cuda"))
    with pytest.raises(ConfigError, match="cascades"):
        load_config(write(tmp_path, body % "teacher"))  # not SOURCE/VARIANT/TARGET
    with pytest.raises(ConfigError, match="a cascade routes on the confidence of a classifier"):
        load_config(write(tmp_path, "task: causal-lm\n" + body % "teacher/genai_int8/cpu"))


def test_early_exits_name_a_candidate_and_a_layer_of_a_classifier(tmp_path):
    body = "optimize:\n  early_exits:\n    - {candidate: %s, exit_after: %s}\n"
    cfg = load_config(write(tmp_path, body % ("compressed/ort_int8_dynamic/cpu", 2)))
    ee = cfg.optimize.early_exits[0]
    assert ee.name() == "early_exit/compressed.ort_int8_dynamic.exit2/cpu"
    got = (ee.confidence, ee.max_accuracy_drop, ee.epochs, ee.max_train_examples)
    assert got == ("max_prob", 0.002, 20, 20000)
    with pytest.raises(ConfigError, match="exit_after"):
        load_config(write(tmp_path, body % ("compressed/ort_int8_dynamic/cpu", 0)))
    with pytest.raises(ConfigError, match="early_exits"):
        load_config(write(tmp_path, body % ("compressed", 2)))  # not SOURCE/VARIANT/TARGET
    twice = body % ("student/onnx_fp32/cpu", 1) + "    - {candidate: student/onnx_fp32/cpu, exit_after: 1}\n"
    with pytest.raises(ConfigError, match=r"listed twice: \['early_exit/student.onnx_fp32.exit1/cpu'\]"):
        load_config(write(tmp_path, twice))
    with pytest.raises(ConfigError, match="an early exit routes on the confidence of a classifier"):
        load_config(write(tmp_path, "task: causal-lm\n" + body % ("teacher/genai_int8/cpu", 1)))
