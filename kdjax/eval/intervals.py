"""95% bootstrap confidence intervals for the test metrics, and for differences between two models on one test set.

KWS accuracy resamples test clips. SV EER resamples *speakers* (trials share speakers, so resampling trials would
understate the spread): a resample draws the test speakers with replacement, and a trial between speakers a and b
counts m_a * m_b times, m being how often each was drawn (a two-way bootstrap for pairs). A difference between two
models is bootstrapped paired, on the same resamples, so the test set's own difficulty cancels.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kdjax.eval.metrics import eer_from_curve

RESAMPLES = 1000
LEVEL = 0.95


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(values, np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def accuracy_interval(correct: np.ndarray, *, other: np.ndarray | None = None, resamples: int = RESAMPLES,
                      level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Interval of the accuracy of 0/1 `correct` per clip (or, with `other`, of accuracy(correct) - accuracy(other)
    over the same clips)."""
    a = np.asarray(correct, np.float64)
    d = a if other is None else a - np.asarray(other, np.float64)
    if d.ndim != 1 or not d.size:
        raise ValueError(f"accuracy_interval needs a non-empty 1-D per-clip array, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    return _interval(d[idx].mean(axis=1), level)


def _speaker_weights(speakers: np.ndarray, rng: np.random.Generator, resamples: int) -> Callable[[int], np.ndarray]:
    names, pairs = np.unique(np.asarray(speakers), return_inverse=True)
    pairs = pairs.reshape(-1, 2)
    draws = rng.integers(0, names.size, size=(resamples, names.size))

    def weights(r: int) -> np.ndarray:
        m = np.bincount(draws[r], minlength=names.size).astype(np.float64)
        return m[pairs[:, 0]] * m[pairs[:, 1]]

    return weights


class _SortedTrials:
    """The trials sorted by score once, so that each resample's weighted EER is two cumulative sums."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        order = np.argsort(np.asarray(scores, np.float64), kind="mergesort")
        self.order, self.labels = order, np.asarray(labels, bool)[order]
        _, self.first = np.unique(np.asarray(scores, np.float64)[order], return_index=True)

    def eer(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        tar = np.concatenate([[0.0], np.cumsum(w * self.labels)])[self.first]
        non = np.concatenate([[0.0], np.cumsum(w * ~self.labels)])[self.first]
        p_miss = np.append(tar / (w * self.labels).sum(), 1.0)
        p_fa = np.append(1.0 - non / (w * ~self.labels).sum(), 0.0)
        return eer_from_curve(p_fa, p_miss)[0]


def eer_interval(scores: np.ndarray, labels: np.ndarray, speakers: np.ndarray, *,
                 other_scores: np.ndarray | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """Interval of the EER of `scores` over trials between `speakers` [N, 2] (or, with `other_scores` on the same
    trials, of EER(scores) - EER(other_scores)); resamples that leave no target or no non-target trial are skipped."""
    s, l = np.asarray(scores), np.asarray(labels).astype(bool)
    spk = np.asarray(speakers)
    if spk.shape != (s.size, 2):
        raise ValueError(f"eer_interval needs speakers of shape [{s.size}, 2] (one pair per trial), got {spk.shape}")
    weights = _speaker_weights(spk, np.random.default_rng(seed), resamples)
    mine = _SortedTrials(s, l)
    theirs = None if other_scores is None else _SortedTrials(np.asarray(other_scores), l)
    values = []
    for r in range(resamples):
        w = weights(r)
        if not (w * l).sum() or not (w * ~l).sum():
            continue
        v = mine.eer(w)
        values.append(v if theirs is None else v - theirs.eer(w))
    if len(values) < resamples // 2:
        raise ValueError("eer_interval: most speaker resamples lack target or non-target trials (too few speakers)")
    return _interval(np.asarray(values), level)
