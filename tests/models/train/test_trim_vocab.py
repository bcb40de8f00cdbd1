"""Vocabulary trimming: unused embedding rows dropped, the tokenizer renumbered, covered texts get
identical logits, unseen words fall back to characters, BPE tokenizers are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimflow.models.train.compress import compress
from slimflow.models.train.config import CompressConfig
from tests.conftest import FAMILY, FILLER, NEGATIVE, POSITIVE, _save_tiny, train_tiny_teacher

UNUSED = "zebra quantum orbit violin harbor glacier".split()
CHARS = [*"abcdefghijklmnopqrstuvwxyz", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny BERT whose vocabulary holds words the reviews never use, and single characters."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tmp = tmp_path_factory.mktemp("trim")
    words = sorted(set(POSITIVE + NEGATIVE + FILLER))
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *UNUSED, *words, *CHARS]))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    src = _save_tiny(tmp / "base", vocab, BertTokenizerFast, cfg, BertModel)
    prepared, teacher = train_tiny_teacher(tmp, src, rows=160, epochs=1)
    return tmp, prepared, teacher


def logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch

    model, tok = FAMILY.load_trained(model_dir)
    with torch.inference_mode():
        enc = tok(texts, padding=True, return_tensors="pt")
        return model(**enc).logits.numpy()


def test_trimming_drops_unused_rows_and_keeps_the_logits_of_covered_texts(trained, tmp_path):
    tmp, prepared, teacher = trained
    cfg = CompressConfig.model_validate({"steps": [{"kind": "trim_vocab"}], "recovery": None})
    out, cache = tmp_path / "out", tmp / "cache"
    res = compress(cfg, prepared, teacher.model_dir, teacher.model_dir, "sha", out, cache, progress=False)
    step = res.steps[0]
    model, tok = FAMILY.load_trained(res.model_dir)
    vocab = tok.get_vocab()
    assert not set(UNUSED) & set(vocab)  # never in the training texts: dropped
    assert set(CHARS) <= set(vocab) and {"[PAD]", "[UNK]", "[CLS]", "[SEP]"} <= set(vocab)
    assert step["vocab_after"] == len(vocab) == model.get_input_embeddings().num_embeddings
    _, before = FAMILY.load_trained(teacher.model_dir)
    assert step["vocab_before"] == len(before.get_vocab())
    assert step["vocab_after"] <= step["vocab_before"] - len(UNUSED)
    for text in pd.read_parquet(prepared.path("train"))["text"]:  # every token training used is kept
        assert set(before.tokenize(text)) <= set(vocab), text
    assert model.config.vocab_size == len(vocab) and res.file_bytes_after < res.file_bytes_before
    dropped = step["vocab_before"] - step["vocab_after"]
    assert res.after["params"] == res.before["params"] - dropped * 32

    # every test review uses training words only: all covered, same predictions, same logits
    assert step["test_texts_covered"] == 1.0 and step["test_predictions_unchanged"] == 1.0
    assert step["test_max_logit_change_covered"] <= 1e-5
    texts = ["a very good film", "the plot was dull and the cast was weak", "lovely"]
    np.testing.assert_allclose(
        logits(Path(res.model_dir), texts), logits(Path(teacher.model_dir), texts), atol=1e-5
    )
    assert res.test["accuracy"] == pytest.approx(teacher.test["accuracy"])

    # the vocabulary counts every training text, not the recovery's subsample
    cfg = CompressConfig.model_validate(
        {"steps": [{"kind": "trim_vocab"}],
         "recovery": {"train": {"epochs": 1, "batch_size": 8, "max_length": 32, "max_train_examples": 20}}}
    )  # fmt: skip
    sub = compress(
        cfg, prepared, teacher.model_dir, teacher.model_dir, "sha", tmp_path / "o2", cache, progress=False
    )
    assert sub.steps[0]["train_texts"] == len(pd.read_parquet(prepared.path("train"))) > 20

    # an unseen word splits into characters instead of becoming [UNK]
    assert tok.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"]
    enc = tok("good zebra")
    assert (
        tok.convert_ids_to_tokens(enc["input_ids"])[0] == "[CLS]" and tok.unk_token_id not in enc["input_ids"]
    )


def test_trimming_refuses_a_byte_level_bpe_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from slimflow.models.train.steps.trim_vocab import TrimVocabConfig, kept_ids
    from tests.conftest import build_tiny_causal_lm

    tok = AutoTokenizer.from_pretrained(build_tiny_causal_lm(tmp_path / "lm"))
    with pytest.raises(ValueError, match="WordPiece"):
        kept_ids(tok, ["some text"], TrimVocabConfig())


def test_preflight_refuses_trim_vocab_for_an_architecture_without_it():
    from slimflow.models.archs.llama import LlamaAdapter
    from slimflow.models.train.steps.base import unsupported_reason
    from slimflow.models.train.steps.trim_vocab import TrimVocabConfig

    assert "does not apply to llama" in unsupported_reason(TrimVocabConfig(), LlamaAdapter())
