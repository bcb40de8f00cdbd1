"""The Python API, for people who script rather than type: the same pipeline and models as the CLI.

    import slimflow

    cfg = slimflow.load_config("configs/quickstart.yaml", overrides=["finetune.train.epochs=1"])
    summary = slimflow.run(cfg)                      # or slimflow.run("my.yaml", overrides=[...])
    print(summary["decision"]["outcome"])
    slimflow.predict("models:/quickstart-reviews@champion", ["a joy to watch", "dull"])
    model = slimflow.load_model("models:/quickstart-reviews@champion")   # load once, call often
    model.predict(["a joy to watch"])

Errors are the CLI's: ``slimflow.ConfigError`` (bad configuration, found before anything
expensive), ``slimflow.DataValidationError`` (the data failed its checks; ``.report`` holds the
outcomes) and the other ``slimflow.SlimflowError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import ConfigError

if TYPE_CHECKING:
    from slimflow.models.pipeline_config import PipelineConfig


def load_config(path: str | Path | None = None, overrides: Sequence[str] | None = None) -> PipelineConfig:
    """The validated pipeline configuration of a YAML file (``None``: every default), with
    ``KEY.PATH=VALUE`` overrides applied as ``--set`` does. Raises ConfigError naming the field."""
    from slimflow.models.pipeline_config import load_config as _load

    return _load(path, list(overrides or []))


def check(cfg: PipelineConfig) -> None:
    """The cheap checks that would otherwise fail minutes into a run: data and model files, model
    shapes against the config, and a reachable Prefect server when a reviewer must approve."""
    from slimflow.models.preflight import preflight

    preflight(cfg)
    if cfg.promote and cfg.promote.approval.required:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise ConfigError(
                "promote.approval.required needs a Prefect server a reviewer can reach: set PREFECT_API_URL "
                "(e.g. `prefect server start --host 127.0.0.1`), or set promote.approval.required: false"
            )


def run(
    config: str | Path | PipelineConfig,
    overrides: Sequence[str] | None = None,
    summary_path: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline (a Prefect flow, tracked in MLflow) and return its summary: run ids,
    per-stage status, seconds and metrics, the candidate search, the gate decision and where the
    champion is served. ``config`` is a YAML path or a config from :func:`load_config`
    (``overrides`` then apply to a path only). ``progress``: progress lines on stderr (default:
    on when stderr is a terminal). A failed stage raises; its exception carries the summary so far
    as ``slimflow_summary``."""
    from slimflow.models.pipeline_config import PipelineConfig

    apply_defaults()
    if isinstance(config, PipelineConfig):
        if overrides:
            raise ConfigError(
                "overrides apply to a config file; edit the PipelineConfig (model_copy) instead"
            )
        cfg = config
    else:
        cfg = load_config(config, overrides)
    check(cfg)
    from slimflow.flows.pipeline import run_pipeline

    return run_pipeline(cfg, summary_path=str(summary_path) if summary_path else None, progress=progress)


class Model:
    """A registered or exported slimflow model, loaded once for many calls."""

    def __init__(self, uri: str, tracking_uri: str | None = None) -> None:
        apply_defaults()
        if not uri.startswith("models:/") and not Path(uri).exists():
            raise ConfigError(
                f"model not found: {uri} (give models:/NAME@ALIAS, models:/NAME/VERSION or a folder)"
            )
        from slimflow.models.release.serving import load_registered

        self.uri = uri
        self._pyfunc, self.version = load_registered(uri, tracking_uri)

    def predict(self, texts: str | Sequence[str], batch_size: int = 256) -> list[dict[str, Any]]:
        """One record per text, in order, with the model family's output fields (``label`` and
        ``score`` for a classifier); a single string counts as one text."""
        import pandas as pd

        items = [texts] if isinstance(texts, str) else list(texts)
        bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
        if bad is not None:
            raise ConfigError(f"texts[{bad}] is {type(items[bad]).__name__}, not a string")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        rows: list[dict[str, Any]] = []
        for i in range(0, len(items), batch_size):
            frame = self._pyfunc.predict(pd.DataFrame({"text": items[i : i + batch_size]}))
            rows += frame.to_dict("records")  # the family's output columns (label, score for classifiers)
        return rows

    def __repr__(self) -> str:
        return f"slimflow.Model({self.uri!r}, version={self.version!r})"


def load_model(uri: str, tracking_uri: str | None = None) -> Model:
    """Load ``models:/NAME@ALIAS`` (pinned to the version the alias names now), ``models:/NAME/N``
    or a model folder. ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI``."""
    return Model(uri, tracking_uri)


def predict(
    model: str, texts: str | Sequence[str], tracking_uri: str | None = None, batch_size: int = 256
) -> list[dict[str, Any]]:
    """Load ``model`` and predict ``texts``: one ``{"label", "score"}`` per text. Loads on every
    call; use :func:`load_model` to predict many times."""
    return load_model(model, tracking_uri).predict(texts, batch_size=batch_size)
