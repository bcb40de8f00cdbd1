"""Checks that need the model's shape but not its weights: run before any stage starts.

Reads only ``config.json`` (instant), so a keep-list out of range or a head list that would empty
a layer fails in a second, not after fine-tuning. Hub ids are checked when their files are local.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.config import LayerDropStudent, PipelineConfig
from models.data import check_source
from models.errors import ConfigError
from models.sources import resolve_model
from models.steps.prune_heads import PruneHeadsConfig


def model_shape(ref: str, cache_dir: Path) -> tuple[int, int] | None:
    """(layers, heads) from the model's config.json, or None when it is not on this machine."""
    src = Path(resolve_model(ref, cache_dir))
    cfg_file = src / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    return int(cfg.get("num_hidden_layers", 0)), int(cfg.get("num_attention_heads", 0))


def preflight(cfg: PipelineConfig) -> None:
    check_source(cfg.data)
    shape = model_shape(cfg.finetune.model, cfg.workdir_path())
    if cfg.distill is not None and not isinstance(cfg.distill.student, LayerDropStudent):
        student_shape = model_shape(cfg.distill.student.model, cfg.workdir_path())
    elif cfg.distill is not None and shape is not None:
        keep = cfg.distill.student.keep_layers
        bad = [i for i in keep if i >= shape[0]]
        if bad:
            raise ConfigError(
                f"distill.student.keep_layers: {bad} out of range; the teacher {cfg.finetune.model} has "
                f"layers 0..{shape[0] - 1}"
            )
        student_shape = (len(keep), shape[1])
    else:
        student_shape = shape
    if cfg.compress is not None and student_shape is not None:
        for i, step in enumerate(cfg.compress.steps):
            if isinstance(step, PruneHeadsConfig):
                try:
                    step.check_against(*student_shape)
                except ValueError as e:
                    raise ConfigError(f"compress.steps.{i}: {e}") from None
