"""Credentials never leave in what slimflow writes or says; hostile YAML is refused fast."""

from __future__ import annotations

import logging
import time
import tracemalloc

import pytest

from slimflow.models.core.errors import ConfigError
from slimflow.models.core.redact import SECRETISH, redact, redact_override


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("postgresql://ana:s3cr3t@db:5432/mlflow", "postgresql://ana:***@db:5432/mlflow"),
        ("http://u:p@h/x?token=abc&a=1", "http://u:***@h/x?token=***&a=1"),
        ("https://ghp_tok@github.com/a", "https://***@github.com/a"),
        (
            "failed: API request to http://a:b@h:5000/api failed",
            "failed: API request to http://a:***@h:5000/api failed",
        ),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
        ("https://host/path?a=1", "https://host/path?a=1"),
    ],
)
def test_uris_lose_their_passwords_and_keep_the_rest(text, want):
    assert redact(text) == want


def test_secret_like_keys_and_overrides():
    assert all(SECRETISH.search(k) for k in ("finetune.hub_token", "password", "x.api_key", "auth_string"))
    assert not any(SECRETISH.search(k) for k in ("max_tokens", "tokenizer", "author", "tracking.uri"))
    assert redact_override("finetune.hub_token=hf_abc") == "finetune.hub_token=***"
    assert redact_override("tracking.uri=http://a:b@h") == "tracking.uri=http://a:***@h"


def test_set_values_of_secret_fields_are_never_echoed(tmp_path):
    from slimflow.models.pipeline_config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["finetune.hub_token=hf_verysecretvalue123"])
    assert "hf_verysecretvalue123" not in str(e.value) and "finetune.hub_token=***" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(p, ["finetune.hub_token=[unclosed hf_verysecretvalue123"])
    assert "hf_verysecretvalue123" not in str(e.value)


def test_log_records_are_masked_whoever_logs_them(caplog):
    from slimflow.models.core.logs import redact_log_records

    redact_log_records()
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        log.info("connecting to %s", "http://ana:s3cr3t@db/x")
        try:
            raise RuntimeError("API request to http://ana:s3cr3t@db/x failed")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "s3cr3t" not in text and "http://ana:***@db/x" in text


BOMB = "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
    for i in range(10)
)


def test_a_yaml_alias_bomb_is_refused_fast_with_bounded_memory(tmp_path):
    from slimflow.models.pipeline_config import load_config

    assert len(BOMB) < 500  # expands to 9^10 (3.5 billion) values
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(p)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 5 and peak < 50e6, (seconds, peak)
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, ["name=&a [*a]"])  # a recursive alias in a --set value
    anchors = tmp_path / "ok.yaml"  # ordinary anchors still work
    anchors.write_text("name: x\ntracking: &t {experiment: e1}\n")
    assert load_config(anchors).tracking.experiment == "e1"
