"""Quantizer plug-ins: what they need is checked when the config loads."""

import pytest


def test_torch_int8_without_torchao_is_refused_when_the_config_loads(monkeypatch, tmp_path):
    """torchao is an extra: a config asking for torch_int8 on a machine without it fails at once,
    naming the extra, instead of after fine-tuning."""
    import importlib.util

    from slimflow.models.core.errors import ConfigError
    from slimflow.models.pipeline_config import load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optimize:\n  quantize:\n    - {kind: ort_int8_dynamic}\n    - {kind: torch_int8}\n")
    with pytest.raises(ConfigError, match=r"optimize.quantize.1.*pip install 'slimflow\[torchao\]'"):
        load_config(cfg)
