"""Shared fixtures: a tiny BERT and tokenizer built locally from configs, and synthetic data.

Nothing here downloads anything; the real packaged model/data are used in tests/integration.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from slimflow.models.core.env import apply_defaults
from slimflow.models.families import get_family

apply_defaults()  # the CLI's offline/telemetry defaults, so tests run as users do

FAMILY = get_family("sequence-classification")  # the family the tiny models here are built for

POSITIVE = "good great fine superb lovely moving brilliant charming witty delightful".split()
NEGATIVE = "bad awful dull boring clumsy tedious weak messy stale lifeless".split()
FILLER = "the film movie plot cast story was is a an and very quite rather truly".split()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"slimflow_bench_{name}", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_reviews(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Distinct short 'reviews'; the label follows the sentiment words, so a tiny model can learn it."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = "pos" if len(rows) % 2 == 0 else "neg"
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append({"review": text, "sentiment": label})
    return pd.DataFrame(rows)


@pytest.fixture
def reviews() -> pd.DataFrame:
    return make_reviews()


def _save_tiny(path: Path, vocab: list[str], tokenizer_cls, config, model_cls) -> Path:
    """A tiny model of ``model_cls`` with random weights (seed 0) and a WordPiece tokenizer."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer_cls(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_model(path: Path, layers: int = 2, hidden: int = 32, reverse_vocab: bool = False) -> Path:
    """A tiny BERT and its WordPiece tokenizer; ``reverse_vocab`` gives it different token ids."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted(set(POSITIVE + NEGATIVE + FILLER), reverse=reverse_vocab)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    return _save_tiny(path, vocab, BertTokenizerFast, cfg, BertModel)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def reviews_csv(tmp_path: Path, reviews: pd.DataFrame) -> Path:
    p = tmp_path / "reviews.csv"
    reviews.to_csv(p, index=False)
    return p


def data_cfg(source: Path | str, **kw):
    from slimflow.models.data.config import DataConfig

    base = {
        "source": str(source),
        "text_column": "review",
        "label_column": "sentiment",
        "labels": ["neg", "pos"],
    }
    base.update(kw)
    return DataConfig.model_validate(base)


def train_tiny_teacher(tmp_path: Path, model_dir: Path, rows: int, epochs: int, **train: object):
    """Synthetic data prepared and split, and a tiny teacher fully fine-tuned on it."""
    from slimflow.models.data.prepare import prepare
    from slimflow.models.train.config import FinetuneConfig
    from slimflow.models.train.finetune import finetune

    p = tmp_path / "d.csv"
    make_reviews(rows).to_csv(p, index=False)
    prepared, _ = prepare(
        data_cfg(p, validation={"min_per_class": 10}), tmp_path / "data", "sha", tmp_path / "r"
    )
    ft = FinetuneConfig.model_validate(
        {
            "model": str(model_dir),
            "method": {"kind": "full"},
            "train": {"epochs": epochs, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32, **train},
        }
    )
    return prepared, finetune(ft, prepared, tmp_path / "teacher", tmp_path, progress=False)


def pretrained_student_cfg(student_dir: Path):
    """Distillation into a separate (pretrained) tiny student with its own tokenizer: 12 epochs
    without early stopping, enough for the synthetic task."""
    from slimflow.models.train.config import DistillConfig

    train = {
        "epochs": 12,
        "batch_size": 16,
        "learning_rate": 5e-3,
        "max_length": 32,
        "early_stopping_patience": None,
    }
    return DistillConfig.model_validate(
        {"student": {"kind": "pretrained", "model": str(student_dir)}, "alpha": 0.7, "train": train}
    )


def build_tiny_mpnet(path: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A tiny MPNet and its tokenizer (same words as the tiny BERT, MPNet's special tokens)."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    vocab = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    cfg = MPNetConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=66,
        pad_token_id=1,
    )
    return _save_tiny(path, vocab, MPNetTokenizerFast, cfg, MPNetModel)


def build_tiny_llama(path: Path, layers: int = 3, hidden: int = 32) -> Path:
    """A tiny Llama (4 query heads sharing 2 key/value heads, head_dim 8) and a word-level fast
    tokenizer without a pad token, as Llama tokenizers come."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["<unk>", "<s>", "</s>", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaModel(cfg).save_pretrained(path, safe_serialization=True)
    return path


REVIEW_QUESTION = "Is this movie review fresh or rotten? Answer with one word.\n\nReview: {text}"


def make_chats(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """The synthetic reviews asked as chats: 'fresh' for the positive ones, 'rotten' otherwise."""
    rows = make_reviews(n, seed)
    return pd.DataFrame(
        {
            "messages": [
                [
                    {"role": "user", "content": REVIEW_QUESTION.format(text=t)},
                    {"role": "assistant", "content": "fresh" if s == "pos" else "rotten"},
                ]
                for t, s in zip(rows["review"], rows["sentiment"], strict=True)
            ]
        }
    )


def write_jsonl(frame: pd.DataFrame, path: Path) -> Path:
    import json

    with path.open("w", encoding="utf-8") as f:
        for rec in frame.to_dict("records"):
            f.write(json.dumps(rec) + "\n")
    return path


def build_tiny_causal_lm(path: Path, layers: int = 2, hidden: int = 64) -> Path:
    """A tiny Llama causal LM (4 query / 2 key-value heads of 16 dims, the least onnxruntime's
    GroupQueryAttention takes; tied embeddings) and a byte-level BPE
    tokenizer trained here on the synthetic chats (ChatML special tokens, no chat template: the
    family supplies ChatML)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    corpus = [m[0]["content"] + " " + m[1]["content"] for m in make_chats(400)["messages"]]
    corpus += ["user assistant system\n"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
        # wide enough embeddings that logits can peak through a frozen RMSNorm and tied head:
        # with the default 0.02, adapters alone cannot move a random model off uniform outputs
        initializer_range=0.15,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory, tiny_causal_lm_dir: Path):
    """The tiny causal LM fine-tuned (fully, 8 epochs) on the synthetic chats: (folder of the run,
    the finetune result, the prepared data). The model is in ``folder / "teacher"``."""
    from slimflow.models.data.config import DataConfig
    from slimflow.models.train.config import FinetuneConfig
    from slimflow.models.train.finetune import finetune

    family = get_family("causal-lm")
    tmp = tmp_path_factory.mktemp("tiny-sft")
    src = write_jsonl(make_chats(240), tmp / "c.jsonl")
    prepared, _ = family.prepare_data(DataConfig(source=str(src)), tmp / "data", "sha", tmp / "r")
    ft = FinetuneConfig.model_validate(
        {"model": str(tiny_causal_lm_dir), "method": {"kind": "full"},
         "train": {"epochs": 8, "batch_size": 16, "learning_rate": 1e-2, "max_length": 96,
                   "early_stopping_patience": None}}
    )  # fmt: skip
    result = finetune(ft, prepared, tmp / "teacher", tmp, progress=False)
    return tmp, result, prepared


@pytest.fixture(scope="session")
def tiny_genai_candidate(tiny_sft) -> Path:
    """An onnxruntime-genai FP32 build of the tiny fine-tuned model, as a candidate folder."""
    from slimflow.models.optimize import genai as G
    from slimflow.models.optimize.predictors import CandidateInfo

    tmp = tiny_sft[0]
    out = G.build(tmp / "teacher", tmp / "genai-fp32", G.GenaiBuildConfig(precision="fp32"), tmp / "cache")
    CandidateInfo("onnxruntime-genai", variant="genai_fp32", source="teacher", task="causal-lm",
                  max_new_tokens=8).save(out)  # fmt: skip
    return out
