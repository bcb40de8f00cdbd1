"""The Great Expectations gate in front of training, and its readable report.

Three suites run in order, each on the frame it is about:
  schema   the raw table: required columns present, enough rows;
  content  the canonical text/label frame: nulls/blanks, label set, lengths, conflicting labels,
           rows per class, repeats (derived columns are computed here, then checked by GX);
  split    after cleaning and splitting: no text in two splits, every class in every split.
A failed suite stops the next one. GX checkpoints never raise on failure and an empty suite
"succeeds" (GX #3494), so both are checked here explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from slimflow.models.data.config import ValidationConfig
from slimflow.models.data.tables import LABEL, SPLITS, TEXT, normalize_text


@dataclass(frozen=True)
class Outcome:
    suite: str
    title: str
    expectation: str
    column: str | None
    success: bool
    observed: str
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    success: bool
    outcomes: list[Outcome]
    suites_run: list[str]
    docs_dir: str | None = None
    json_path: str | None = None

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    def headline(self) -> str:
        """One line (Prefect repeats exception messages in several log lines)."""
        bad = self.failures()
        where = f" (report: {Path(self.docs_dir) / 'index.html'})" if self.docs_dir else ""
        return (
            f"data validation failed: {len(bad)} of {len(self.outcomes)} expectations not met: "
            + "; ".join(o.title for o in bad)
            + where
        )

    def summary(self) -> str:
        ok = sum(o.success for o in self.outcomes)
        head = "passed" if self.success else "FAILED"
        lines = [
            f"data validation {head}: {ok}/{len(self.outcomes)} expectations met "
            f"(suites: {', '.join(self.suites_run)})"
        ]
        for o in self.failures():
            ex = f"; e.g. {', '.join(o.examples[:3])}" if o.examples else ""
            lines.append(f"  ✗ [{o.suite}] {o.title}: {o.observed}{ex}")
        if self.docs_dir:
            lines.append(f"  report: {Path(self.docs_dir) / 'index.html'}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------- expectations
def _expectations(
    suite: str,
    cfg: ValidationConfig,
    labels: list[str] | None,
    cols: tuple[str, str],
    declared: list[str] | None,
) -> list:
    """The suite's expectations, each with a readable title in ``meta``.

    ``labels`` is the label set in use (declared or found); ``declared`` only the declared one.
    """
    import great_expectations.expectations as gxe  # 5-8 s import

    text_col, label_col = cols
    keep_blank = 1.0 - cfg.max_blank_fraction
    t = {
        "schema": [
            ("required text column is present", gxe.ExpectColumnToExist(column=text_col)),
            ("required label column is present", gxe.ExpectColumnToExist(column=label_col)),
            (
                f"at least {2 * cfg.min_per_class} rows",
                gxe.ExpectTableRowCountToBeBetween(min_value=2 * cfg.min_per_class),
            ),
        ],
        "content": [
            (
                f"text is not null (tolerance {cfg.max_blank_fraction:.2%})",
                gxe.ExpectColumnValuesToNotBeNull(column=TEXT, mostly=keep_blank),
            ),
            (
                f"text is not blank (tolerance {cfg.max_blank_fraction:.2%})",
                gxe.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=r"^\s*$", mostly=keep_blank),
            ),
            ("label is not null", gxe.ExpectColumnValuesToNotBeNull(column=LABEL)),
            (
                f"text length within [{cfg.min_chars}, {cfg.max_chars}] characters",
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column="text_stripped", min_value=cfg.min_chars, max_value=cfg.max_chars
                ),
            ),
            (
                "no text carries two different labels",
                gxe.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False]),
            ),
            (
                f"at least {cfg.min_per_class} distinct rows per class",
                gxe.ExpectColumnMinToBeBetween(column="rows_in_class", min_value=cfg.min_per_class),
            ),
            (
                f"repeated texts at most {cfg.max_duplicate_fraction:.2%}",
                gxe.ExpectColumnValuesToBeInSet(
                    column="repeat_of_earlier_row", value_set=[False], mostly=1.0 - cfg.max_duplicate_fraction
                ),
            ),
        ],
        "split": [
            (
                "no text appears in two splits (no train/test leak)",
                gxe.ExpectColumnValuesToBeInSet(column="in_other_split", value_set=[False]),
            ),
        ],
    }[suite]
    if suite == "content":
        t.append(
            ("at least two classes", gxe.ExpectColumnUniqueValueCountToBeBetween(column=LABEL, min_value=2))
        )
        if declared is not None:
            t.append(
                (
                    f"labels within {declared}",
                    gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=declared),
                )
            )
            t.append(
                (
                    f"every declared label {declared} occurs",
                    gxe.ExpectColumnDistinctValuesToContainSet(column=LABEL, value_set=declared),
                )
            )
    if suite == "split" and labels is not None:
        want = [f"{s}/{lab}" for s in SPLITS for lab in labels]
        t.append(
            (
                "every class occurs in every split",
                gxe.ExpectColumnDistinctValuesToContainSet(column="split_label", value_set=want),
            )
        )
    for title, exp in t:
        exp.meta = {"title": title}
    return [e for _, e in t]


# ------------------------------------------------------------------------------- derived columns
def content_frame(df: pd.DataFrame, declared: list[str] | None = None) -> pd.DataFrame:
    """Canonical frame plus the per-row facts that GX checks (GX has no cross-row rules for pandas).
    ``rows_in_class`` counts declared classes only: a row with an undeclared label is reported by
    'labels within ...', not as the smallest class."""
    out = df.copy()
    stripped = out[TEXT].str.strip()
    out["text_stripped"] = stripped.where(stripped != "", None)
    key = stripped.fillna("").map(normalize_text)
    usable = (key != "") & out[LABEL].notna()
    labels_per_text = out[usable].groupby(key[usable])[LABEL].nunique()
    out["label_conflict"] = key.map(labels_per_text).fillna(1).astype(int).gt(1)
    out["repeat_of_earlier_row"] = usable & key.duplicated(keep="first")
    distinct = out[usable & ~out["repeat_of_earlier_row"]]
    counts = distinct.groupby(LABEL).size()
    out["rows_in_class"] = out[LABEL].map(counts).fillna(0).astype(int)
    out.loc[~usable, "rows_in_class"] = None
    if declared is not None:
        out.loc[~out[LABEL].isin(declared), "rows_in_class"] = None
    return out


def split_frame(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = []
    for name in SPLITS:
        f = parts[name][[TEXT, LABEL]].copy()
        f["split"] = name
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    key = out[TEXT].map(normalize_text)
    splits_per_text = out.groupby(key)["split"].nunique()
    out["in_other_split"] = key.map(splits_per_text).gt(1)
    out["split_label"] = out["split"] + "/" + out[LABEL].astype(str)
    return out


# ------------------------------------------------------------------------------------- execution
class Validator:
    """One GX ephemeral context writing Data Docs into ``out_dir``; run suites, then ``finish()``."""

    def __init__(
        self,
        cfg: ValidationConfig,
        out_dir: Path,
        cols: tuple[str, str] = (TEXT, LABEL),
        labels: list[str] | None = None,
        declared: list[str] | None = None,
        expectations: Callable[[str], list] | None = None,
    ):
        """``expectations`` gives a suite's expectations by name (another task family's data);
        by default the labelled-text suites above, for ``cols``, ``labels`` and ``declared``."""
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.cfg, self.cols, self.labels, self.declared = cfg, cols, labels, declared
        self.expectations = expectations or (
            lambda suite: _expectations(suite, self.cfg, self.labels, self.cols, self.declared)
        )
        self.out_dir = Path(out_dir)
        self.docs_dir = self.out_dir / "data_docs"
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.ctx.add_data_docs_site(
            site_name="slimflow",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(self.docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        self.source = self.ctx.data_sources.add_pandas("slimflow")
        self.outcomes: list[Outcome] = []
        self.raw_results: dict[str, Any] = {}
        self.suites_run: list[str] = []

    def run(self, suite_name: str, frame: pd.DataFrame) -> bool:
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction

        exps = self.expectations(suite_name)
        if not exps:  # GX would report an empty suite as a success
            raise RuntimeError(f"validation suite {suite_name!r} has no expectations")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=f"slimflow-{suite_name}", expectations=exps))
        batch = self.source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe("all")
        vd = self.ctx.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        )
        cp = self.ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"cp-{suite_name}",
                validation_definitions=[vd],
                actions=[UpdateDataDocsAction(name="docs", site_names=["slimflow"])],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
            )
        )
        result = cp.run(batch_parameters={"dataframe": frame})
        (vr,) = result.run_results.values()
        if len(vr.results) != len(exps):
            raise RuntimeError(
                f"suite {suite_name!r}: {len(exps)} expectations but {len(vr.results)} results"
            )
        self.raw_results[suite_name] = vr.to_json_dict()
        self.suites_run.append(suite_name)
        for r in vr.results:
            self.outcomes.append(_outcome(suite_name, r))
        return bool(result.success) and all(r.success for r in vr.results)

    def finish(self) -> ValidationReport:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        success = bool(self.outcomes) and all(o.success for o in self.outcomes)
        report = ValidationReport(
            success=success,
            outcomes=self.outcomes,
            suites_run=self.suites_run,
            docs_dir=str(self.docs_dir) if (self.docs_dir / "index.html").exists() else None,
            json_path=str(self.out_dir / "validation_result.json"),
        )
        payload = {"summary": report.to_dict(), "great_expectations": self.raw_results}
        Path(report.json_path).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        (self.out_dir / "summary.txt").write_text(report.summary() + "\n", encoding="utf-8")
        return report


def _outcome(suite: str, r: Any) -> Outcome:
    c = r.expectation_config
    res = r.result or {}
    column = c.kwargs.get("column")
    title = (c.meta or {}).get("title", c.type)
    if r.exception_info and r.exception_info.get("raised_exception"):
        msg = str(r.exception_info.get("exception_message", "error"))
        return Outcome(
            suite, title, c.type, column, False, f"could not be evaluated: {msg.splitlines()[0][:200]}"
        )
    if res.get("unexpected_count") is not None:
        n, bad = res.get("element_count") or 0, res["unexpected_count"]
        observed = f"{bad} of {n} rows unexpected ({(bad / n if n else 0):.2%})"
    elif c.type == "expect_column_to_exist":
        observed = "present" if r.success else f"column {column!r} not found"
    elif c.type == "expect_table_row_count_to_be_between":
        observed = f"{res.get('observed_value')} rows"
    elif c.type == "expect_column_min_to_be_between" and column == "rows_in_class":
        observed = f"smallest class has {_num(res.get('observed_value'))} distinct rows"
    elif c.type == "expect_column_distinct_values_to_contain_set":
        want = set(c.kwargs.get("value_set") or [])
        seen = res.get("observed_value")
        if seen is None:  # GX 1.24 leaves it out when the check passes
            observed = "all present" if r.success else "some missing (GX gave no details)"
        else:
            missing = sorted(want - set(seen))
            observed = "all present" if not missing else f"missing: {missing}"
    else:
        observed = f"observed {_num(res.get('observed_value'))}"
    examples = [repr(v)[:60] for v in (res.get("partial_unexpected_list") or [])][:5]
    if c.type == "expect_column_values_to_be_in_set" and column and column != LABEL:
        examples = []  # derived booleans: the row counts say more than 'True'
    return Outcome(suite, title, c.type, column, bool(r.success), observed, examples)


def _num(v: Any) -> str:
    """Plain text for GX's observed values (numpy scalars print as np.float64(3.0))."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else f"{f:.4g}"
