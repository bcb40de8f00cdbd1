"""Pictures a reviewer would rather look at than read, for the pipeline's MLflow run: training
curves, the confusion matrix and per-class figures of the chosen model, and the latency
distribution of the finalists. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    """One column per trained model (teacher, student, recovery): losses on top, validation
    figures below, per epoch. ``histories[model][metric] = [(epoch, value), ...]``."""
    models = [m for m, h in histories.items() if any(h.values())]
    if not models:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6), dpi=110, squeeze=False)
    for col, model in enumerate(models):
        h = histories[model]
        top, bottom = axes[0][col], axes[1][col]
        for key in ("train_loss", "val_loss"):
            if h.get(key):
                xs, ys = zip(*sorted(h[key]), strict=True)
                top.plot(xs, ys, marker="o", label=key.replace("_", " "))
        top.set_title(model)
        top.set_ylabel("loss")
        top.legend(fontsize=8)
        for key in sorted(k for k in h if k.startswith("val_") and k != "val_loss"):
            if h[key]:
                xs, ys = zip(*sorted(h[key]), strict=True)
                bottom.plot(xs, ys, marker="o", label=key.removeprefix("val_"))
        bottom.set_xlabel("epoch")
        bottom.set_ylabel("validation")
        bottom.legend(fontsize=8)
        epochs = sorted({e for series in h.values() for e, _ in series})
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if len(epochs) <= 20:
                ax.set_xticks(epochs)
    fig.suptitle("Training curves (per epoch)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion(report: dict[str, Any], title: str, path: Path) -> Path:
    """The confusion matrix (counts, and the share of each true class) with per-class
    precision, recall and F1 beside it."""
    import numpy as np

    plt = _plt()
    labels = report["labels"]
    m = np.asarray(report["confusion"], dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(labels)
    fig, (ax, tab) = plt.subplots(
        1, 2, figsize=(5 + 0.5 * k + 4, 3 + 0.45 * k), dpi=110, gridspec_kw={"width_ratios": [1.2, 1]}
    )
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_title(title, fontsize=9)
    rows = [[c["label"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])]
            for c in report["per_class"]]  # fmt: skip
    tab.axis("off")
    t = tab.table(cellText=rows, colLabels=["class", "precision", "recall", "F1", "support"], loc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def latency(rows: list[dict[str, Any]], batch_size: int, path: Path, best: str | None = None) -> Path | None:
    """p50 with its 95% CI and p95/p99 of every measured candidate at ``batch_size`` on data
    lengths, fastest first (log scale): how far apart the finalists really are."""
    pts = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        s = next((x for x in r["bench"]["settings"]
                  if x["batch_size"] == batch_size and x["length"] == "data"), None)  # fmt: skip
        if s:
            pts.append((r["name"], s))
    if not pts:
        return None
    pts.sort(key=lambda p: p[1]["p50_ms"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(pts) + 1.6), dpi=110)
    for i, (name, s) in enumerate(pts):
        color = "tab:red" if name == best else ("tab:gray" if s.get("reliable") is False else "tab:blue")
        err = [[s["p50_ms"] - s["p50_ci_low_ms"]], [s["p50_ci_high_ms"] - s["p50_ms"]]]
        ax.errorbar(s["p50_ms"], i, xerr=err, fmt="o", color=color, capsize=3)
        ax.plot([s["p50_ms"], s["p95_ms"]], [i, i], color=color, lw=1, alpha=0.5)
        ax.plot(s["p95_ms"], i, "|", color=color, ms=10)
        if "p99_ms" in s:
            ax.plot(s["p99_ms"], i, "x", color=color, ms=5)
    ax.set_yticks(range(len(pts)), [p[0] + ("  (unreliable)" if p[1].get("reliable") is False else "")
                                    for p in pts], fontsize=8)  # fmt: skip
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"latency, batch {batch_size}, ms (dot: p50 with 95% CI; bar: p95; x: p99)")
    ax.grid(alpha=0.3, which="both", axis="x")
    ax.set_title("Latency of the candidates" + (f" (red: {best})" if best else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
