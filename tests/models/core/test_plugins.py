"""One registration mechanism for every kind of plug-in."""

import pytest

from slimflow.models.core.plugins import DuplicatePlugin, Registry, UnknownPlugin


def test_register_get_and_list_in_order():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)

    @reg.register("b")
    def b() -> int:
        return 2

    assert reg.get("a") == 1 and reg.get("b") is b
    assert reg.names() == ["a", "b"] and "a" in reg and "z" not in reg and len(reg) == 2


def test_registering_a_name_twice_is_an_error():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(DuplicatePlugin, match="widget 'a' registered twice"):
        reg.add("a", 2)
    assert reg.get("a") == 1  # the first registration stands


def test_unknown_name_lists_the_known_ones():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(UnknownPlugin, match="unknown widget 'b'; known: a"):
        reg.get("b")


def test_every_kind_of_plug_in_uses_the_mechanism_and_refuses_duplicates():
    from slimflow.models.archs import ARCHS, register_arch
    from slimflow.models.archs.bert import BertAdapter
    from slimflow.models.assets import PACKAGED_DATASETS, PACKAGED_MODELS
    from slimflow.models.families import FAMILIES, register_family
    from slimflow.models.families.classification.family import SequenceClassification
    from slimflow.models.optimize.quantizers import QUANTIZERS, register_quantizer
    from slimflow.models.optimize.quantizers.ort_int8_dynamic import OrtDynamicInt8Config
    from slimflow.models.optimize.targets import TARGETS, get_target, register_target
    from slimflow.models.train.methods import METHODS, LoraMethod, peft_method
    from slimflow.models.train.steps import STEPS, register_step
    from slimflow.models.train.steps.prune_ffn import PruneFFNConfig
    from slimflow.models.train.students import STUDENTS

    expected = {
        "methods": (METHODS, {"lora", "adalora", "ia3", "prefix_tuning", "freeze", "full"}),
        "students": (STUDENTS, {"layer_drop", "pretrained"}),
        "steps": (STEPS, {"prune_heads", "prune_ffn", "prune_magnitude"}),
        "quantizers": (QUANTIZERS, {"ort_int8_dynamic", "ort_int8_static", "ort_fp16", "torch_int8"}),
        "targets": (TARGETS, {"cpu", "cuda", "tensorrt"}),
        "models": (PACKAGED_MODELS, {"all-MiniLM-L6-v2", "all-mpnet-base-v2"}),
        "datasets": (PACKAGED_DATASETS, {"rotten_tomatoes", "rotten_tomatoes_chat"}),
        "families": (FAMILIES, {"sequence-classification", "causal-lm"}),
        "archs": (ARCHS, {"bert", "mpnet"}),
    }
    for what, (reg, names) in expected.items():
        assert isinstance(reg, Registry), what
        assert names <= set(reg), what
    twice = [
        lambda: register_step(PruneFFNConfig)(lambda m, c, x: None),
        lambda: register_quantizer(OrtDynamicInt8Config)(lambda c, x, o: None),
        lambda: peft_method(LoraMethod, lambda c, x, common: None),
        lambda: register_target(get_target("cpu")),
        lambda: register_family(SequenceClassification()),
        lambda: register_arch(BertAdapter()),
        lambda: PACKAGED_MODELS.add("all-MiniLM-L6-v2", lambda cache: cache),
    ]
    for again in twice:
        with pytest.raises((DuplicatePlugin, ValueError), match="registered twice|already have an adapter"):
            again()
