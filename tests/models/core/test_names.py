"""Names that become paths or registry keys: traversal-shaped ones are refused before use."""

import pytest

from slimflow.models.core.errors import ConfigError
from slimflow.models.core.names import check_name, parse_model_uri

BAD = ["../etc", "..", ".hidden", "a/b", "/abs", "a\\b", "", "a b", "x" * 65, "name\n", "ok;rm -rf"]


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_with_the_rule(name):
    with pytest.raises(ConfigError, match="letters, digits"):
        check_name(name, "model name")


@pytest.mark.parametrize("name", ["reviews-clf", "a", "v1.2_final", "A" * 64])
def test_good_names_pass(name):
    assert check_name(name) == name


def test_model_uris_are_parsed_and_checked():
    assert parse_model_uri("models:/reviews@champion") == ("reviews", "champion", None)
    assert parse_model_uri("models:/reviews/12") == ("reviews", None, "12")
    for bad in (
        "models:/../../x@champion",
        "models:/a/../../b",
        "models:/a@../x",
        "models:/a",
        "models:/a/v1",
    ):
        with pytest.raises(ConfigError):
            parse_model_uri(bad)


def test_serve_state_and_model_resolution_refuse_traversal(tmp_path):
    from slimflow.models.release import deployments as serve
    from slimflow.models.release.registry import resolve_candidate as resolve_model

    with pytest.raises(ConfigError):
        serve.stop(tmp_path, "../../outside")
    with pytest.raises(ConfigError):
        serve.launch("models:/x@champion", None, tmp_path, "../x")
    assert not (tmp_path.parent / "x.json").exists()
    with pytest.raises(ConfigError):
        resolve_model("models:/../../etc@champion", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert not (tmp_path / "m.db").exists()  # refused before MLflow was even touched


def test_config_names_are_checked_at_load():
    from slimflow.models.pipeline_config import PipelineConfig

    with pytest.raises(Exception, match="name"):
        PipelineConfig.model_validate({"name": "../evil"})
    with pytest.raises(Exception, match="model_name"):
        PipelineConfig.model_validate({"promote": {"model_name": "a/../../b"}, "optimize": {}})
