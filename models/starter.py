"""``slimflow init``: a commented pipeline config for the user's own labeled text file.

Reads the file once, finds the text and label columns (or checks the ones given), counts the
classes, measures text lengths in the teacher's own tokens, and sizes the run for this machine: a
few timed training steps of the teacher give its speed here, from which the epochs, the sequence
length and (on a slow machine with a large file) a row cap follow. Nothing is written into the
config that the data does not support; every choice is explained in a comment beside it.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from slimflow.models.core.errors import ConfigError, DataError
from slimflow.models.data.config import DataConfig
from slimflow.models.data.tables import label_text, load_raw, resolve_format
from slimflow.models.families import DEFAULT_TASK

TEXT_NAMES = ("text", "sentence", "review", "content", "body", "comment", "document", "utterance", "message")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "intent", "y")
MAX_CLASSES = 100
# Wall-time the sizing aims at for the teacher's fine-tuning on a machine without a GPU.
TEACHER_BUDGET_S = 600.0


@dataclass
class DataProfile:
    """What ``init`` learned from the file."""

    path: Path
    fmt: str
    rows: int
    columns: list[str]
    text_column: str
    label_column: str
    counts: dict[str, int]  # label -> rows (non-blank text, non-null label), most frequent first
    blank_texts: int
    null_labels: int
    duplicate_fraction: float
    min_chars: int
    max_chars: int
    sample: list[str] = field(default_factory=list)  # up to 5,000 of the usable texts, for sizing
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted(self.counts)

    @property
    def usable(self) -> int:
        return sum(self.counts.values())


def _string_share(values: pd.Series) -> float:
    vals = values.dropna()
    return float(vals.map(lambda v: isinstance(v, str)).mean()) if len(vals) else 0.0


def _pick_text(raw: pd.DataFrame, exclude: str | None) -> str | None:
    cols = [c for c in raw.columns if c != exclude and _string_share(raw[c]) > 0.9]
    for name in TEXT_NAMES:
        for c in cols:
            if str(c).strip().lower() == name:
                return str(c)
    # otherwise the string column with the longest texts that are mostly distinct
    best, best_len = None, 0.0
    for c in cols:
        vals = raw[c].dropna().astype(str)
        if len(vals) and vals.nunique() / len(vals) > 0.5:
            mean_len = float(vals.str.len().mean())
            if mean_len > best_len:
                best, best_len = str(c), mean_len
    return best


def _pick_label(raw: pd.DataFrame, exclude: str) -> str | None:
    cols = [c for c in raw.columns if c != exclude]
    for name in LABEL_NAMES:
        for c in cols:
            if str(c).strip().lower() == name:
                return str(c)
    # otherwise the column with the fewest distinct values that still has two classes
    best, best_n = None, MAX_CLASSES + 1
    for c in cols:
        n = raw[c].map(label_text).dropna().nunique()
        if 2 <= n < best_n and n <= max(2, len(raw) // 5):
            best, best_n = str(c), n
    return best


def profile(
    path: str | Path, text_column: str | None = None, label_column: str | None = None, fmt: str = "auto"
) -> DataProfile:
    """Read ``path`` and describe it; raises DataError/ConfigError naming what does not fit."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--data: file not found: {p}")
    probe = DataConfig(source=str(p), format=fmt)  # type: ignore[arg-type]
    resolved = resolve_format(probe)
    raw = load_raw(probe)
    if raw.empty:
        raise DataError(f"{p}: no rows")
    columns = [str(c) for c in raw.columns]
    for given, what in ((text_column, "--text-column"), (label_column, "--label-column")):
        if given is not None and given not in columns:
            raise DataError(f"{p}: {what} {given!r} is not a column; columns: {columns}")
    text = text_column or _pick_text(raw, label_column)
    if text is None:
        raise DataError(f"{p}: no column holds text (columns: {columns}); name it with --text-column")
    label = label_column or _pick_label(raw, text)
    if label is None:
        raise DataError(
            f"{p}: no column looks like a class label (2 to {MAX_CLASSES} distinct values; columns: "
            f"{columns}); name it with --label-column"
        )
    if text == label:
        raise DataError(f"{p}: the text and label columns must differ (both {text!r})")
    if _string_share(raw[text]) < 0.9:
        raise DataError(f"{p}: column {text!r} does not hold text; name the text column with --text-column")

    texts = raw[text].map(lambda v: v if isinstance(v, str) else None)
    labels = raw[label].map(label_text)
    blank = texts.isna() | (texts.fillna("").str.strip() == "")
    usable = ~blank & labels.notna()
    counts = labels[usable].value_counts()
    if len(counts) < 2:
        raise DataError(
            f"{p}: column {label!r} has {len(counts)} distinct label(s) on rows with text; a classifier "
            "needs at least two"
        )
    if len(counts) > MAX_CLASSES:
        raise DataError(
            f"{p}: column {label!r} has {len(counts)} distinct values, more than {MAX_CLASSES}: is it "
            "really the label? Name the label column with --label-column"
        )
    kept = texts[usable].str.strip()
    lengths = kept.str.len()
    prof = DataProfile(
        path=p,
        fmt=resolved,
        rows=len(raw),
        columns=columns,
        text_column=text,
        label_column=label,
        counts={str(k): int(v) for k, v in counts.items()},
        blank_texts=int(blank.sum()),
        null_labels=int((~blank & labels.isna()).sum()),
        duplicate_fraction=float(kept.str.lower().duplicated().mean()) if len(kept) else 0.0,
        min_chars=int(lengths.min()),
        max_chars=int(lengths.max()),
        sample=kept.sample(min(len(kept), 5000), random_state=0).tolist(),
    )
    smallest = min(prof.counts.values())
    if smallest < 10:
        prof.notes.append(
            f"the rarest class has only {smallest} rows: the held-out splits get one or two of it; "
            "collect more or merge it"
        )
    if prof.null_labels:
        prof.notes.append(f"{prof.null_labels} row(s) have text but no label; they are dropped by the run")
    return prof


def percentile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def measure_speed(model: Any, tok: Any, texts: list[str], seq_len: int, batch: int = 32) -> float:
    """Training examples per second of ``model`` here: two timed steps after one warm-up (forward,
    backward, AdamW step) on ``batch`` of the user's texts padded to ``seq_len`` tokens."""
    import torch

    n_labels = int(model.config.num_labels)
    rows = (texts * (batch // max(1, len(texts)) + 1))[:batch]
    enc = tok(rows, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    y = torch.arange(batch) % n_labels
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return batch / (sum(times[1:]) / 2)


@dataclass
class Sizing:
    max_length: int
    token_p50: int
    token_p99: int
    epochs: int
    max_rows: int | None
    examples_per_s: float | None
    teacher_minutes: float | None
    gpu: bool
    cores: int


def size_run(prof: DataProfile, teacher: str, cache_dir: Path, measure: bool = True) -> Sizing:
    """Sequence length from the token lengths, epochs from the row count, a row cap when this
    machine (no GPU) would take far longer than ``TEACHER_BUDGET_S`` to fine-tune on every row."""
    import torch

    from slimflow.models.families import get_family

    # the family's own loader: the pad-token policy and head of training, its warnings handled
    model, tok = get_family(DEFAULT_TASK).load_pretrained(teacher, prof.labels, cache_dir)
    lengths = [len(ids) for ids in tok(prof.sample, add_special_tokens=True, truncation=False)["input_ids"]]
    p50, p99 = percentile(lengths, 0.5), percentile(lengths, 0.99)
    max_length = min(512, max(16, 8 * math.ceil(p99 / 8)))
    train_rows = int(prof.usable * 0.7)
    epochs = 4 if train_rows < 2_000 else 2 if train_rows < 50_000 else 1
    gpu = torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    speed = None
    if measure and not gpu:
        # bucketed batches pad to about the typical length, not max_length
        speed = measure_speed(model, tok, prof.sample, max(8, min(max_length, 8 * math.ceil(p50 * 1.3 / 8))))
    max_rows = None
    minutes = None
    if speed:
        seconds = train_rows * epochs / speed
        if seconds > TEACHER_BUDGET_S * 1.5:
            max_rows = max(200, int(TEACHER_BUDGET_S * speed / epochs / 0.7 / 100) * 100)
            seconds = min(train_rows, int(max_rows * 0.7)) * epochs / speed
        minutes = seconds / 60
    return Sizing(max_length, p50, p99, epochs, max_rows, speed, minutes, gpu, cores)


def default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "my-data"
    if not name[0].isalnum():
        name = "d" + name
    return name[:48]


def _q(value: Any) -> str:
    """A YAML scalar or flow list, quoted where YAML would read it as something else."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def render(prof: DataProfile, sizing: Sizing, name: str, teacher: str, data_ref: str) -> str:
    """The commented YAML of the config."""
    smallest = min(prof.counts.values())
    counts = ", ".join(f"{k}: {v}" for k, v in prof.counts.items())
    blank_frac = prof.blank_texts / prof.rows
    max_blank = 0.0 if blank_frac == 0 else min(0.49, round(max(0.01, blank_frac * 2), 3))
    max_dup = min(0.5, round(max(0.02, prof.duplicate_fraction * 2), 3))
    min_per_class = max(2, min(100, smallest // 2))
    max_chars = max(2000, 1000 * math.ceil(prof.max_chars * 2 / 1000))
    machine = f"{sizing.cores} CPU core(s)" + (", a CUDA GPU" if sizing.gpu else ", no GPU")
    speed = (
        f"measured here: {sizing.examples_per_s:.0f} training examples/s for the teacher"
        if sizing.examples_per_s
        else "speed not measured"
    )
    est = (
        f"; fine-tuning the teacher takes about {sizing.teacher_minutes:.0f} min"
        if sizing.teacher_minutes
        else ""
    )
    rows_line = (
        f"  max_rows: {sizing.max_rows}   # a stratified sample: all {prof.usable} rows would "
        f"take over {TEACHER_BUDGET_S * 1.5 / 60:.0f} min to fine-tune here; remove it for all rows\n"
        if sizing.max_rows
        else "  max_rows: null                 # every row; set a number for a quick stratified sample\n"
    )
    max_length = sizing.max_length
    epochs_why = (
        "small data: more passes"
        if sizing.epochs > 2
        else "early stopping ends sooner when validation stops improving"
    )
    return f"""\
# slimflow pipeline for {prof.path.name}, written by `slimflow init`.
# {prof.usable} usable rows of {prof.rows}; classes {counts}.
# Sized for this machine ({machine}; {speed}{est}).
# `slimflow show-config -c THIS_FILE` prints every field with its default and meaning;
# `slimflow run -c THIS_FILE --set a.b=VALUE` overrides one field for one run.
name: {_q(name)}

data:
  source: {_q(data_ref)}
  format: {prof.fmt}
  text_column: {_q(prof.text_column)}
  label_column: {_q(prof.label_column)}
  labels: {_q(prof.labels)}   # found in the file; their order fixes the label ids
{rows_line}  split: {{validation: 0.1, test: 0.2, seed: 42}}   # stratified; test is never trained on
  validation:                    # Great Expectations checks: a later file that breaks them stops the run
    min_chars: {min(2, prof.min_chars)}                   # shortest text here: {prof.min_chars} characters
    max_chars: {max_chars}               # longest here: {prof.max_chars}
    max_blank_fraction: {max_blank}        # blank texts here: {prof.blank_texts} of {prof.rows}
    max_duplicate_fraction: {max_dup}    # repeated texts here: {prof.duplicate_fraction:.2%}
    min_per_class: {min_per_class}              # rarest class here: {smallest} rows

finetune:
  model: {_q(teacher)}
  method: {{kind: full}}           # or {{kind: lora, r: 8}} to train adapters only
  train:
    epochs: {sizing.epochs}                    # {epochs_why}
    batch_size: 32
    learning_rate: 8.0e-5
    max_length: {max_length}     # 99% of texts <= {sizing.token_p99}, median {sizing.token_p50}
    early_stopping_patience: 1
    metric: {"accuracy" if len(prof.counts) == 2 else "f1"}

# A 3-layer student distilled from the teacher (layers 0, 2, 4), then 30% of its attention heads
# and feed-forward neurons pruned, with a short recovery from the teacher.
distill:
  student: {{kind: layer_drop, keep_layers: [0, 2, 4]}}
  train:
    {{epochs: {max(2, sizing.epochs)}, batch_size: 32, learning_rate: 1.0e-4, max_length: {max_length}}}

compress:
  steps:
    - {{kind: prune_heads, ratio: 0.3}}
    - {{kind: prune_ffn, ratio: 0.3, importance: gradient}}
  recovery: {{train: {{epochs: 1, batch_size: 32, learning_rate: 5.0e-5, max_length: {max_length}}}}}

# Candidates: every model above exported to ONNX (FP32 and dynamic INT8) and timed on this CPU.
optimize:
  targets: [{"cpu, cuda" if sizing.gpu else "cpu"}]
  quantize:
    - {{kind: ort_int8_dynamic, preset: auto, per_channel: true}}
  bench: {{batch_sizes: [1, 32], threads: {min(sizing.cores, 4)}}}
  accuracy_bar: {{min_retention: 0.98}}

# The fastest candidate keeping 98% of the teacher's test accuracy and under 100 MB is registered,
# made champion and served. approval.required: true asks a reviewer in the Prefect UI first.
promote:
  model_name: {_q(name)}
  gates: {{min_retention: 0.98, max_size_mb: 100}}
  approval: {{required: false}}
  deploy: {{host: 127.0.0.1, port: 8088}}

tracking:
  experiment: {_q("slimflow-" + name)}
"""
