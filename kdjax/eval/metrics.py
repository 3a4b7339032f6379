"""Evaluation metrics in pure numpy: KWS accuracy and confusion matrix; SV cosine scoring, AS-norm, EER, minDCF, DET.

Conventions: a trial is accepted when score >= threshold; error rates are fractions in [0, 1]; SV labels are 1 for
target (same speaker) trials and 0 for non-target trials. Trial lists are read by kdjax.data.trials.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from kdjax.data.trials import check_index_table
from kdjax.errors import DatasetError


# ----------------------------------------------------------------------------------------------------- KWS
def _predictions(logits_or_preds: np.ndarray) -> np.ndarray:
    a = np.asarray(logits_or_preds)
    return a.argmax(-1) if a.ndim == 2 else a.astype(np.int64)


def accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions, from logits [N, C] or predicted class ids [N]."""
    preds, labels = _predictions(logits_or_preds), np.asarray(labels)
    if preds.shape != labels.shape:
        raise DatasetError(f"accuracy: {preds.shape[0]} predictions for {labels.shape[0]} labels")
    return float((preds == labels).mean()) if labels.size else float("nan")


def confusion_matrix(labels: np.ndarray, logits_or_preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts; rows are true classes, columns predicted classes."""
    labels, preds = np.asarray(labels, np.int64), _predictions(logits_or_preds)
    for name, a in (("label", labels), ("prediction", preds)):
        bad = np.flatnonzero((a < 0) | (a >= num_classes))
        if bad.size:
            raise DatasetError(f"confusion_matrix: {name} {a[bad[0]]} at example {bad[0]} is outside "
                               f"[0, {num_classes}) (num_classes={num_classes})")
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


# ----------------------------------------------------------------------------------------------------- scoring
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    k = min(top_k, cohort.shape[0])
    mean, std = np.empty(emb.shape[0]), np.empty(emb.shape[0])
    for i in range(0, emb.shape[0], chunk):  # chunks bound memory to chunk x cohort scores
        s = emb[i:i + chunk] @ cohort.T
        top = np.partition(s, s.shape[1] - k, axis=1)[:, -k:]
        mean[i:i + chunk], std[i:i + chunk] = top.mean(1), top.std(1)
    return mean, np.maximum(std, 1e-12)


def cosine_scores(embeddings: np.ndarray, trials: np.ndarray, *, cohort: np.ndarray | None = None,
                  top_k: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N], labels [N]) for trials (is_target, a, b) over embeddings [E, D]; AS-norm when a cohort is given.

    AS-norm (adaptive symmetric normalisation): each side is z-normalised by the mean and std of its top_k cohort
    scores and the two are averaged.
    """
    emb = l2_normalize(embeddings)
    t = check_index_table(trials, emb.shape[0])
    a, b = t[:, 1], t[:, 2]
    scores = np.einsum("nd,nd->n", emb[a], emb[b])
    if cohort is not None:
        used = np.unique(np.concatenate([a, b]))
        mean, std = np.zeros(emb.shape[0]), np.ones(emb.shape[0])
        mean[used], std[used] = _cohort_stats(emb[used], l2_normalize(cohort), top_k)
        scores = 0.5 * ((scores - mean[a]) / std[a] + (scores - mean[b]) / std[b])
    return scores, t[:, 0].astype(bool)


# ----------------------------------------------------------------------------------------------------- SV errors
def _check_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, l = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    if s.shape != l.shape:
        raise DatasetError(f"{s.size} scores for {l.size} labels")
    if not np.all(np.isfinite(s)):
        raise DatasetError(f"score {int(np.flatnonzero(~np.isfinite(s))[0])} is not finite")
    if l.all() or not l.any():
        raise DatasetError("SV metrics need both target and non-target trials")
    return s, l


def det_curve(scores: np.ndarray, labels: np.ndarray,
              weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P_fa, P_miss, thresholds) at every distinct threshold, from accept-all up to reject-all (threshold +inf).

    `weights` counts each trial that many times (a bootstrap resample's multiplicities); default one each.
    """
    s, l = _check_scores(scores, labels)
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.shape != s.shape:
        raise DatasetError(f"{w.size} weights for {s.size} scores")
    order = np.argsort(s, kind="mergesort")
    s, l, w = s[order], l[order], w[order]
    thresholds, first = np.unique(s, return_index=True)
    tar_below = np.concatenate([[0], np.cumsum(w * l)])[first]  # target weight scored strictly below each threshold
    non_below = np.concatenate([[0], np.cumsum(w * ~l)])[first]
    n_tar, n_non = (w * l).sum(), (w * ~l).sum()
    if n_tar <= 0 or n_non <= 0:
        raise DatasetError("SV metrics need both target and non-target trials (of non-zero weight)")
    p_miss = np.append(tar_below / n_tar, 1.0)
    p_fa = np.append((n_non - non_below) / n_non, 0.0)
    return p_fa, p_miss, np.append(thresholds, np.inf)


def eer(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(equal error rate, threshold): P_miss = P_fa, interpolated linearly between the two DET points around it."""
    p_fa, p_miss, thr = det_curve(scores, labels, weights)
    value, i = eer_from_curve(p_fa, p_miss)
    return value, float(thr[i])


def eer_from_curve(p_fa: np.ndarray, p_miss: np.ndarray) -> tuple[float, int]:
    """(EER, index of the first DET point at or past the crossing) of a DET curve from accept-all to reject-all."""
    i = int(np.argmax(p_miss >= p_fa))  # first point at or past the crossing; i >= 1 since the first is (1, 0)
    d0, d1 = p_miss[i - 1] - p_fa[i - 1], p_miss[i] - p_fa[i]
    alpha = -d0 / (d1 - d0)
    return float(p_miss[i - 1] + alpha * (p_miss[i] - p_miss[i - 1])), i


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> tuple[float, float]:
    """(normalised minimum detection cost, its threshold), as NIST SRE: DCF / min(C_miss p, C_fa (1 - p))."""
    p_fa, p_miss, thr = det_curve(scores, labels)
    dcf = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    i = int(np.argmin(dcf))
    return float(dcf[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thr[i])


def sv_metrics(scores: np.ndarray, labels: np.ndarray, p_targets: Iterable[float] = (0.01, 0.05)) -> dict[str, float]:
    """{"eer", "mindcf_<p>"...} for one set of trial scores."""
    out = {"eer": eer(scores, labels)[0]}
    for p in p_targets:
        out[f"mindcf_{p:g}"] = min_dcf(scores, labels, p)[0]
    return out
