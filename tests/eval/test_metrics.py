"""Metrics against independent references: scikit-learn's ROC, brute-force threshold sweeps, hand-checked cases."""
import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from kdjax.errors import DatasetError
from kdjax.eval import metrics as M


def _random_trials(seed, n_tar=300, n_non=2000, shift=1.5):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1, n_tar), rng.normal(0, 1, n_non)])
    labels = np.concatenate([np.ones(n_tar, bool), np.zeros(n_non, bool)])
    perm = rng.permutation(scores.size)
    return scores[perm], labels[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_matches_sklearn_roc(seed):
    scores, labels = _random_trials(seed)
    fpr, tpr, _ = roc_curve(labels, scores)
    ref = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert M.eer(scores, labels)[0] == pytest.approx(ref, abs=1e-9)


def test_eer_hand_checked():
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert M.eer(np.array([3.0, 4, 5, 0, 1, 2]), labels)[0] == 0.0  # perfect separation
    assert M.eer(np.array([0.0, 1, 2, 3, 4, 5]), labels)[0] == 1.0  # perfectly wrong
    # One non-target above one target out of three each: the DET crosses at 1/3.
    assert M.eer(np.array([1.0, 3, 4, 0, 2, -1]), labels)[0] == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    same = rng.normal(size=20000)
    assert M.eer(same, rng.random(20000) < 0.5)[0] == pytest.approx(0.5, abs=0.02)


def _brute_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    tar, non = scores[labels], scores[~labels]
    best = np.inf
    for t in list(np.unique(scores)) + [np.inf]:
        dcf = c_miss * p * np.mean(tar < t) + c_fa * (1 - p) * np.mean(non >= t)
        best = min(best, dcf)
    return best / min(c_miss * p, c_fa * (1 - p))


@pytest.mark.parametrize("p", [0.01, 0.05])
def test_min_dcf_matches_brute_force(p):
    scores, labels = _random_trials(3, n_tar=200, n_non=800)
    scores = np.round(scores, 1)  # ties must be handled as one threshold
    assert M.min_dcf(scores, labels, p)[0] == pytest.approx(_brute_min_dcf(scores, labels, p), abs=1e-12)
    assert M.min_dcf(scores, labels, p, c_miss=10)[0] == pytest.approx(
        _brute_min_dcf(scores, labels, p, c_miss=10), abs=1e-12)


def test_min_dcf_bounds_and_sv_metrics():
    labels = np.array([1, 1, 0, 0, 0], bool)
    assert M.min_dcf(np.array([5.0, 6, 0, 1, 2]), labels)[0] == 0.0
    rng = np.random.default_rng(0)
    out = M.sv_metrics(rng.normal(size=500), rng.random(500) < 0.3)
    assert set(out) == {"eer", "mindcf_0.01", "mindcf_0.05"}
    assert all(0 <= v <= 1.0 + 1e-12 for v in out.values())  # normalised minDCF never exceeds the trivial system


def test_det_curve_matches_sklearn():
    scores, labels = _random_trials(4, 50, 70)
    p_fa, p_miss, thr = M.det_curve(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(np.sort(p_fa), np.sort(fpr), atol=1e-12)  # same points, reject-all included
    np.testing.assert_allclose(np.sort(p_miss), np.sort(1 - tpr), atol=1e-12)
    assert np.all(np.diff(p_fa) <= 0) and np.all(np.diff(p_miss) >= 0) and thr[-1] == np.inf


def test_cosine_scores_and_as_norm_reference():
    rng = np.random.default_rng(0)
    emb, cohort = rng.normal(size=(10, 8)), rng.normal(size=(30, 8))
    trials = np.array([[1, 0, 1], [0, 2, 3], [1, 4, 4], [0, 9, 5]])
    scores, labels = M.cosine_scores(emb * 7.0, trials)
    ref = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for _, a, b in trials]
    np.testing.assert_allclose(scores, ref, atol=1e-12)
    assert labels.tolist() == [True, False, True, False]

    normed, _ = M.cosine_scores(emb, trials, cohort=cohort, top_k=5)
    for s, raw, (_, a, b) in zip(normed, ref, trials):
        stats = []
        for i in (a, b):
            c = sorted(cohort @ emb[i] / np.linalg.norm(cohort, axis=1) / np.linalg.norm(emb[i]))[-5:]
            stats.append((np.mean(c), np.std(c)))
        assert s == pytest.approx(0.5 * sum((raw - m) / sd for m, sd in stats), abs=1e-9)


def test_bad_trials_name_the_row_or_line():
    emb = np.zeros((4, 3))
    with pytest.raises(DatasetError, match="row 1: index"):
        M.cosine_scores(emb, np.array([[1, 0, 1], [0, 2, 4]]))
    with pytest.raises(DatasetError, match="row 0: is_target"):
        M.cosine_scores(emb, np.array([[2, 0, 1]]))
    with pytest.raises(DatasetError, match="both target and non-target"):
        M.eer(np.array([1.0, 2.0]), np.array([1, 1]))


def test_accuracy_and_confusion_matrix():
    logits = np.array([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [5, 0, 0]])
    labels = np.array([0, 1, 1, 2])
    assert M.accuracy(logits, labels) == 0.5
    assert M.accuracy(np.array([0, 1, 2, 0]), labels) == 0.5
    cm = M.confusion_matrix(labels, logits, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    with pytest.raises(DatasetError, match="label 3 at example 1"):
        M.confusion_matrix(np.array([0, 3]), np.array([0, 0]), 3)
