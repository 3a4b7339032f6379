"""PNG plots for the report (matplotlib, Agg backend): training curves, DET curves, KWS confusion matrix."""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdjax.eval import metrics  # noqa: E402

_PROBIT = np.vectorize(NormalDist().inv_cdf)


_CURVE_METRICS = ("loss", "accuracy", "masked_accuracy", "eer")  # what a reader judges a run by; not lr or speed


def _curve_panels(history: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{panel title: {"train" | "validation" | "test": [(step, value)]}} for the metrics worth plotting."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for h in history:
        for key, value in h.items():
            parts = key.split("/")
            if parts[-1] not in _CURVE_METRICS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            split = next((p for p in ("validation", "test") if p in parts[:-1]), "train")
            stream = [p for p in parts[:-1] if p not in ("validation", "test", "train", "eval")]
            title = " ".join(stream + [parts[-1]])
            panels.setdefault(title, {}).setdefault(split, []).append((h["step"], value))
    unique: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for title, splits in sorted(panels.items()):
        if splits not in unique.values():  # a single-task run logs its loss twice: "loss" and "sv loss"
            unique[title] = splits
    return unique


def training_curves(history: list[dict[str, Any]], title: str, path: str, max_panels: int = 6) -> str:
    """Training and validation curves of the run's losses, accuracies and EERs (one panel per quantity, train and
    validation together); returns the path written."""
    panels = list(_curve_panels(history).items())[:max_panels]
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, splits) in zip(axes.flat, panels):
        for split, pts in splits.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=split,
                    marker="." if len(pts) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def det(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str) -> str:
    """DET curves (normal-deviate axes) for (name, scores, labels) triples, EER in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    eers = [metrics.eer(scores, labels)[0] for _, scores, labels in curves]
    lo, hi = 1e-3, 0.5 if max(eers, default=0.0) < 0.2 else 0.95  # weak systems: show the whole curve
    for (name, scores, labels), eer in zip(curves, eers):
        p_fa, p_miss, _ = metrics.det_curve(scores, labels)
        x, y = np.clip(p_fa, lo / 2, 1 - lo / 2), np.clip(p_miss, lo / 2, 1 - lo / 2)
        ax.plot(_PROBIT(x), _PROBIT(y), label=f"{name} (EER {100 * eer:.2f}%)")
    ticks = [t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9) if lo <= t <= hi]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(_PROBIT(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(_PROBIT(lo), _PROBIT(hi))
    ax.set_ylim(_PROBIT(lo), _PROBIT(hi))
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(cm: np.ndarray, class_names: Sequence[str] | None, title: str, path: str) -> str:
    """Row-normalised confusion matrix (rows true class) as an image."""
    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = cm.shape[0]
    names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
    size = max(4, 0.4 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
