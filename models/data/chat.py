"""Chat data for causal LMs: JSONL ``messages`` rows or prompt/completion pairs, validated with
Great Expectations, cleaned, split and written as ``prompt`` / ``completion`` parquet columns.

Canonical form: ``prompt`` is the JSON text of the turns before the answer (a list of
``{"role", "content"}``), ``completion`` the answer the model is trained to give (the last
assistant turn). A prompt/completion pair becomes one user turn and the answer.

Suites (GX, on the frames built here, like the classification suites in ``validation.py``):
  schema   a messages column, or prompt and completion columns; enough rows;
  content  every row parses to turns with valid roles, no empty turn, ends with the assistant's
           answer, total length within bounds, repeats within tolerance;
  split    no prompt appears in two splits (no train/test overlap).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from slimflow.models.core.errors import DataValidationError
from slimflow.models.data import tables as D
from slimflow.models.data.config import DataConfig, SplitConfig, ValidationConfig
from slimflow.models.data.prepare import PreparedData
from slimflow.models.data.validation import ValidationReport, Validator

PROMPT, COMPLETION = "prompt", "completion"
ROLES = ("system", "user", "assistant", "tool")
MIN_ROWS = 20  # fewer rows cannot be split into train/validation/test meaningfully


def _turns_of(value: Any) -> Any:
    """A messages cell as a list (JSON text in CSV files is parsed); anything else as given."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        return value.tolist()
    return value


def _row_facts(turns: Any) -> dict[str, Any]:
    """What the content suite checks about one row, and its canonical prompt/completion."""
    facts = {
        "is_turn_list": False,
        "roles_valid": False,
        "turns_nonempty": False,
        "ends_with_assistant": False,
        PROMPT: None,
        COMPLETION: None,
    }
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        return facts
    facts["is_turn_list"] = True
    facts["roles_valid"] = all(t.get("role") in ROLES for t in turns) and set().union(
        *(set(t) for t in turns)
    ) <= {"role", "content", "name"}
    facts["turns_nonempty"] = all(isinstance(t.get("content"), str) and t["content"].strip() for t in turns)
    last = turns[-1]
    facts["ends_with_assistant"] = last.get("role") == "assistant" and len(turns) >= 2
    if facts["roles_valid"] and facts["turns_nonempty"] and facts["ends_with_assistant"]:
        prompt = [{"role": t["role"], "content": t["content"].strip()} for t in turns[:-1]]
        facts[PROMPT] = json.dumps(prompt, ensure_ascii=False)
        facts[COMPLETION] = last["content"].strip()
    return facts


def chat_rows(raw: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """One row per example: the derived facts and the canonical prompt/completion (None where the
    row is unusable; the content suite counts those rows)."""
    if cfg.messages_column in raw.columns:
        turns = raw[cfg.messages_column].map(_turns_of)
    else:

        def pair(p: Any, c: Any) -> Any:
            if not isinstance(p, str) or not isinstance(c, str):
                return None
            return [{"role": "user", "content": p}, {"role": "assistant", "content": c}]

        turns = pd.Series(
            [pair(p, c) for p, c in zip(raw[cfg.prompt_column], raw[cfg.completion_column], strict=True)],
            index=raw.index,
            dtype=object,
        )
    out = pd.DataFrame([_row_facts(t) for t in turns])
    if out.empty:
        out = pd.DataFrame(columns=list(_row_facts(None)))
    text = (out[PROMPT].fillna("") + "\n" + out[COMPLETION].fillna("")).str.strip()
    out["total_chars"] = text.where(out[PROMPT].notna(), None)
    key = text.map(D.normalize_text)
    out["repeat_of_earlier_row"] = out[PROMPT].notna() & key.duplicated(keep="first")
    return out


def chat_expectations(suite: str, cfg: ValidationConfig, columns: tuple[str, ...]) -> list:
    """The causal-lm suites (each expectation titled for the report)."""
    import great_expectations.expectations as gxe

    if suite == "schema":
        t = [(f"column {c!r} is present", gxe.ExpectColumnToExist(column=c)) for c in columns]
        t.append((f"at least {MIN_ROWS} rows", gxe.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS)))
    elif suite == "content":

        def all_true(col: str, title: str) -> tuple[str, Any]:
            return title, gxe.ExpectColumnValuesToBeInSet(column=col, value_set=[True])

        t = [
            all_true("is_turn_list", "every row holds a non-empty list of {role, content} turns"),
            all_true("roles_valid", f"roles within {list(ROLES)} (keys role, content, name)"),
            all_true("turns_nonempty", "no empty turn"),
            all_true("ends_with_assistant", "the last turn is the assistant's answer, after a prompt"),
            (
                f"prompt + answer within [{cfg.min_chars}, {cfg.max_chars}] characters",
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column="total_chars", min_value=cfg.min_chars, max_value=cfg.max_chars
                ),
            ),
            (
                f"repeated examples at most {cfg.max_duplicate_fraction:.2%}",
                gxe.ExpectColumnValuesToBeInSet(
                    column="repeat_of_earlier_row", value_set=[False], mostly=1.0 - cfg.max_duplicate_fraction
                ),
            ),
        ]
    elif suite == "split":
        t = [
            (
                "no prompt appears in two splits (no train/test overlap)",
                gxe.ExpectColumnValuesToBeInSet(column="in_other_split", value_set=[False]),
            )
        ]
    else:
        raise ValueError(f"unknown suite {suite!r}")
    for title, exp in t:
        exp.meta = {"title": title}
    return [e for _, e in t]


def split_chat(df: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Deterministic split; stratified on the answer when answers form a small set (a labelling
    task asked as a chat, such as the packaged reviews), random otherwise."""
    from sklearn.model_selection import train_test_split

    counts = df[COMPLETION].value_counts()
    strat = len(counts) <= 20 and counts.min() >= 3
    by = (lambda f: f[COMPLETION]) if strat else (lambda f: None)
    rest, test = train_test_split(df, test_size=cfg.test, stratify=by(df), random_state=cfg.seed)
    val_share = cfg.validation / (1 - cfg.test)
    train, val = train_test_split(rest, test_size=val_share, stratify=by(rest), random_state=cfg.seed)
    return {"train": train.sort_index(), "validation": val.sort_index(), "test": test.sort_index()}


def overlap_frame(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = [parts[name][[PROMPT]].assign(split=name) for name in D.SPLITS]
    out = pd.concat(frames, ignore_index=True)
    key = out[PROMPT].map(D.normalize_text)
    out["in_other_split"] = key.map(out.groupby(key)["split"].nunique()).gt(1)
    return out


def fingerprint(df: pd.DataFrame) -> str:
    """sha256 over (prompt, completion) rows in order."""
    import hashlib

    h = hashlib.sha256()
    for p, c in zip(df[PROMPT].tolist(), df[COMPLETION].tolist(), strict=True):
        h.update(json.dumps([p, c], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def prepare_chat(
    cfg: DataConfig, out_dir: str | Path, source_sha256: str, report_dir: str | Path | None = None
) -> tuple[PreparedData, ValidationReport]:
    """Validate, clean and split chat data; write ``prompt``/``completion`` parquet splits."""
    import hashlib

    out = Path(out_dir)
    report_dir = Path(report_dir) if report_dir is not None else out / "validation"
    raw = D.load_raw(cfg, check_text=False)
    columns = (
        (cfg.messages_column,)
        if cfg.messages_column in raw.columns or cfg.prompt_column not in raw.columns
        else (cfg.prompt_column, cfg.completion_column)
    )
    v = Validator(
        cfg.validation, report_dir, expectations=lambda s: chat_expectations(s, cfg.validation, columns)
    )

    def fail() -> None:
        report = v.finish()
        hint = None
        if any(c not in raw.columns for c in columns):
            hint = (
                f"columns in {cfg.source}: {list(map(str, raw.columns))[:20]}; causal-lm data needs a "
                f"{cfg.messages_column!r} column or {cfg.prompt_column!r} and {cfg.completion_column!r}"
            )
        raise DataValidationError(report.headline(), report=report, hint=hint)

    if not v.run("schema", raw):
        fail()
    facts = chat_rows(raw, cfg)
    if not v.run("content", facts):
        fail()
    usable = facts[facts[PROMPT].notna()]
    cleaned = usable[~usable["repeat_of_earlier_row"]][[PROMPT, COMPLETION]].reset_index(drop=True)
    data_fp = fingerprint(cleaned)
    if cfg.max_rows is not None and cfg.max_rows < len(cleaned):
        cleaned = cleaned.sample(n=cfg.max_rows, random_state=cfg.split.seed).sort_index()
    parts = split_chat(cleaned, cfg.split)
    if not v.run("split", overlap_frame(parts)):
        fail()
    report = v.finish()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in parts.items():
        p = out / f"{name}.parquet"
        frame[[PROMPT, COMPLETION]].reset_index(drop=True).to_parquet(p, index=False)
        paths[name] = str(p)
    h = hashlib.sha256()
    for name in D.SPLITS:
        h.update(name.encode() + b"\0" + fingerprint(parts[name]).encode())
    answers = {
        k: {str(a): int(b) for a, b in f[COMPLETION].value_counts().head(20).sort_index().items()}
        for k, f in parts.items()
    }
    prepared = PreparedData(
        task="causal-lm",
        source=cfg.source,
        source_path=str(D.check_source(cfg)),
        source_sha256=source_sha256,
        data_fingerprint=data_fp,
        split_fingerprint=h.hexdigest(),
        labels=[],
        paths=paths,
        counts={k: len(f) for k, f in parts.items()},
        class_counts=answers,
        rows_raw=len(raw),
        blank_dropped=int(len(facts) - len(usable)),
        duplicates_dropped=int(usable["repeat_of_earlier_row"].sum()),
        report_dir=str(report_dir),
    )
    return prepared, report
