import pytest

from slimflow.models.assets import resolve_pretrained as resolve_model
from slimflow.models.core.errors import ModelSourceError
from slimflow.models.core.modelfiles import check_model_dir


def test_local_folder_with_safetensors_resolves(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir), tmp_path) == str(tiny_model_dir)


def test_pickle_weights_are_refused_without_loading_them(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    marker = tmp_path / "executed"
    # a payload that would create the marker file if anything unpickled it
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelSourceError, match=r"no \*\.safetensors weights .*pytorch_model\.bin.*refused"):
        resolve_model(str(d), tmp_path)
    assert not marker.exists()


def test_bad_references_get_clear_errors(tmp_path):
    with pytest.raises(ModelSourceError, match="model folder not found"):
        resolve_model("./does-not-exist", tmp_path)
    with pytest.raises(ModelSourceError, match="unknown packaged model"):
        resolve_model("packaged:gpt-17", tmp_path)
    with pytest.raises(ModelSourceError, match="neither a folder"):
        resolve_model("bad name with spaces", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        check_model_dir(tmp_path / "empty")


def test_hub_ids_pass_through_for_users_with_hub_access(tmp_path):
    assert (
        resolve_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path)
        == "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_packaged_minilm_is_found_offline(tmp_path):
    path = resolve_model("packaged:all-MiniLM-L6-v2", tmp_path)
    assert path.endswith("model")
