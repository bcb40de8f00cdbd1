"""Confidence cascades (adaptive inference): a fast classifier answers the inputs it is sure of and
hands the rest to a stronger fallback.

A cascade is a candidate folder holding its two parts as candidate folders (``fast/`` and
``fallback/``, each as the search built and checked it) and ``cascade.json`` with the confidence
measure and the threshold. The fast part answers a row when its confidence (the top softmax
probability, or the margin between the top two) is at least the threshold; every other row goes to
the fallback. A threshold of 1.0 sends every row to the fallback; 0.0 keeps every row on the fast
part.

The threshold is chosen on the validation split only (``choose_threshold``): the least escalation
(so the lowest expected cost, ``p50_fast + escalation x p50_fallback``) whose validation accuracy
still reaches the target (by default the fallback's own validation accuracy minus 0.2 points).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slimflow.models.optimize.predictors import (
    COMPOSITE_RUNTIMES,
    CandidateInfo,
    Predictor,
    describe,
    load_predictor,
)

CASCADE_FILE = "cascade.json"
CASCADE_RUNTIME = "cascade"
Confidence = Literal["max_prob", "margin"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confidence(logits: np.ndarray, measure: Confidence) -> np.ndarray:
    """Per row, in [0, 1]: the top probability, or the top probability minus the runner-up's."""
    p = softmax(np.asarray(logits))
    if measure == "max_prob":
        return p.max(axis=1)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def escalated(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Rows the fallback answers: confidence below the threshold (every row at threshold 1.0)."""
    if threshold >= 1.0:
        return np.ones(len(conf), dtype=bool)
    return conf < threshold


@dataclass
class ThresholdChoice:
    """How the threshold was chosen, on validation rows only."""

    threshold: float
    confidence: str
    target_accuracy: float
    accuracy: float  # the cascade's, on validation
    escalation_rate: float  # on validation
    fast_accuracy: float
    fallback_accuracy: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(
    fast_logits: np.ndarray,
    fallback_logits: np.ndarray,
    gold: np.ndarray,
    measure: Confidence = "max_prob",
    max_accuracy_drop: float = 0.002,
) -> ThresholdChoice:
    """The threshold with the least escalation whose accuracy on these (validation) rows is at
    least the fallback's minus ``max_accuracy_drop``; ties go to the more accurate one. Always
    exists: threshold 1.0 is the fallback itself."""
    fast_logits, fallback_logits, gold = (
        np.asarray(fast_logits),
        np.asarray(fallback_logits),
        np.asarray(gold),
    )
    if not len(gold) == len(fast_logits) == len(fallback_logits) or len(gold) == 0:
        raise ValueError("choose_threshold needs the same, non-zero number of rows from both parts and gold")
    fast_ok = fast_logits.argmax(1) == gold
    fb_ok = fallback_logits.argmax(1) == gold
    conf = confidence(fast_logits, measure)
    target = float(fb_ok.mean()) - max_accuracy_drop
    best: tuple[float, float, float] | None = None  # (escalation, -accuracy, threshold)
    for t in np.unique(np.concatenate([conf, [0.0, 1.0]])):
        esc = escalated(conf, float(t))
        acc = float(np.where(esc, fb_ok, fast_ok).mean())
        if acc + 1e-12 < target:
            continue
        key = (float(esc.mean()), -acc, float(t))
        if best is None or key < best:
            best = key
    assert best is not None  # threshold 1.0 reaches the fallback's accuracy
    esc_rate, neg_acc, threshold = best
    return ThresholdChoice(
        threshold, measure, target, -neg_acc, esc_rate, float(fast_ok.mean()), float(fb_ok.mean()), len(gold)
    )


def fit_threshold(
    fast: Any,
    fallback: Any,
    validation: Any,
    measure: Confidence = "max_prob",
    max_accuracy_drop: float = 0.002,
) -> ThresholdChoice:
    """``choose_threshold`` on the prepared validation split (``text``, ``label`` columns): both
    parts predict it, nothing else. ``fast``/``fallback`` are predictors of the same labels."""
    labels = list(fast.info.labels)
    texts = validation["text"].tolist()
    unknown = sorted(set(validation["label"]) - set(labels))
    if unknown:
        raise ValueError(f"validation labels {unknown} are not among the model's labels {labels}")
    gold = np.array([labels.index(y) for y in validation["label"]])
    return choose_threshold(fast.predict(texts), fallback.predict(texts), gold, measure, max_accuracy_drop)


def build_cascade(
    fast_dir: str | Path, fallback_dir: str | Path, out: str | Path, choice: ThresholdChoice, name: str = ""
) -> Path:
    """Write a cascade candidate folder: both parts copied in, ``cascade.json``, ``candidate.json``."""
    fast_info, fb_info = describe(fast_dir), describe(fallback_dir)
    if fast_info.labels != fb_info.labels:
        raise ValueError(
            f"a cascade's parts must predict the same labels in the same order: {fast_info.labels} "
            f"vs {fb_info.labels}"
        )
    if fast_info.task != fb_info.task:
        raise ValueError(f"a cascade's parts must be of one task: {fast_info.task} vs {fb_info.task}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part, src in (("fast", fast_dir), ("fallback", fallback_dir)):
        shutil.copytree(src, out / part, dirs_exist_ok=True)
    spec = {
        "name": name, "fast": fast_info.variant, "fallback": fb_info.variant, **choice.to_dict(),
        # where the parts were copied from: their runtime settings, once tuned, need no second search
        "sources": {"fast": str(Path(fast_dir).resolve()), "fallback": str(Path(fallback_dir).resolve())},
    }  # fmt: skip
    (out / CASCADE_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    info = CandidateInfo(
        CASCADE_RUNTIME, fast_info.target, "cascade", f"{fast_info.source}_then_{fb_info.source}", None,
        max(fast_info.max_length, fb_info.max_length), fast_info.labels, None, fast_info.task,
    )  # fmt: skip
    info.save(out)
    return out


def escalation_rate(folder: str | Path, frame: Any, threads: int | None = None) -> float:
    """Share of a split's rows (``text`` column) the cascade at ``folder`` hands to its fallback."""
    cascade = load_predictor(folder, threads)
    texts = frame["text"].tolist()
    if not texts:
        return 0.0
    esc = [cascade.route(cascade.encode(texts[i : i + 64]))[1] for i in range(0, len(texts), 64)]
    return float(np.concatenate(esc).mean())


def identity(folder: str | Path, part_identity: Any) -> str:
    """A cascade's identity: its parts' (``part_identity``, e.g. ``candidates.identity``), its
    threshold file and its candidate record."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for part in ("fast", "fallback"):
        h.update(part_identity(folder / part).encode())
    for f in (CASCADE_FILE, "candidate.json"):
        h.update((folder / f).read_bytes())
    return h.hexdigest()


def is_cascade(folder: str | Path) -> bool:
    return (Path(folder) / CASCADE_FILE).is_file()


def read_spec(folder: str | Path) -> dict[str, Any]:
    """``cascade.json``: the parts, the confidence measure, the threshold (and the kind)."""
    return dict(json.loads((Path(folder) / CASCADE_FILE).read_text(encoding="utf-8")))


class CascadePredictor(Predictor):
    """Both parts loaded; ``logits`` runs the fast part on the whole batch and the fallback on the
    rows it escalates. The batch carries both parts' tokenizations (tokenization is not timed)."""

    def __init__(self, folder: Path, info: CandidateInfo, threads: int | None) -> None:
        spec = read_spec(folder)
        self.fast = load_predictor(folder / "fast", threads)
        self.fallback = load_predictor(folder / "fallback", threads)
        super().__init__(None, info, self.fast.file_bytes + self.fallback.file_bytes, folder)
        self.threshold = float(spec["threshold"])
        self.measure: Confidence = spec["confidence"]
        self.spec = spec
        self.session = getattr(self.fast, "session", None)  # threads read back from the fast part

    @property
    def position_limit(self) -> int:
        return min(self.fast.position_limit, self.fallback.position_limit)

    @property
    def input_names(self) -> set[str]:
        return {"input_ids"}

    def encode(self, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        fast = self.fast.encode(texts, length)
        fb = self.fallback.encode(texts, length)
        return {"input_ids": fast["input_ids"], **{f"fast.{k}": v for k, v in fast.items()},
                **{f"fallback.{k}": v for k, v in fb.items()}}  # fmt: skip

    @staticmethod
    def _part(
        batch: dict[str, np.ndarray], part: str, rows: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        prefix = f"{part}."
        return {
            k[len(prefix) :]: (v if rows is None else v[rows])
            for k, v in batch.items()
            if k.startswith(prefix)
        }

    def route(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logits, escalated mask): the fast part's logits where it is confident, else the fallback's."""
        out = np.asarray(self.fast.logits(self._part(batch, "fast")), dtype=np.float32)
        esc = escalated(confidence(out, self.measure), self.threshold)
        if esc.any():
            out = out.copy()
            out[esc] = self.fallback.logits(self._part(batch, "fallback", np.flatnonzero(esc)))
        return out, esc

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.route(batch)[0]

    def predict_routed(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, list[str]]:
        """Logits for every text, in order, and which part answered each ("fast" or "fallback")."""
        out = np.zeros((len(texts), len(self.info.labels)), dtype=np.float32)
        esc = np.zeros(len(texts), dtype=bool)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            out[idx], esc[idx] = self.route(self.encode([texts[i] for i in idx]))
        return out, ["fallback" if e else "fast" for e in esc]


# Kinds of cascade folder (``cascade.json``'s "kind"): two whole candidates here; an early exit
# (``early_exit.py``: one graph cut after an intermediate layer, whose second part reads the first
# part's hidden state) registers itself.
CASCADE_KINDS: dict[str, Callable[[Path, CandidateInfo, int | None], Predictor]] = {
    "cascade": CascadePredictor
}


def load_cascade(folder: Path, info: CandidateInfo, threads: int | None) -> Predictor:
    kind = str(read_spec(folder).get("kind", "cascade"))
    if kind not in CASCADE_KINDS:
        raise ValueError(
            f"{folder / CASCADE_FILE}: unknown cascade kind {kind!r}; known: {sorted(CASCADE_KINDS)}"
        )
    return CASCADE_KINDS[kind](folder, info, threads)


COMPOSITE_RUNTIMES[CASCADE_RUNTIME] = load_cascade
