"""Bootstrap intervals: they cover the truth at about their level, shrink with data, and the weighted EER is the EER
of the repeated trials."""
import numpy as np
import pytest

from kdjax.eval import intervals
from kdjax.eval.metrics import eer


def test_weighted_eer_equals_eer_of_repeated_trials():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = rng.normal(size=300) + labels
    w = rng.integers(0, 4, 300)
    assert eer(scores, labels, w)[0] == pytest.approx(eer(np.repeat(scores, w), np.repeat(labels, w))[0], abs=1e-12)
    sorted_trials = intervals._SortedTrials(scores, labels)
    assert sorted_trials.eer(w.astype(float)) == pytest.approx(eer(scores, labels, w)[0], abs=1e-12)


def test_accuracy_interval_covers_the_truth_and_matches_the_binomial_width():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(40):
        correct = rng.random(2400) < 0.8
        lo, hi = intervals.accuracy_interval(correct, resamples=400, seed=trial)
        covered += lo <= 0.8 <= hi
        assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 2400), rel=0.2)
    assert covered >= 34  # 95% nominal; 34/40 leaves room for the bootstrap's own noise
    same = rng.random(500) < 0.7
    lo, hi = intervals.accuracy_interval(same, other=same)
    assert lo == hi == 0.0  # a model against itself: no difference in any resample


def _trials(rng, n_speakers, shift):
    """Trials over n_speakers: each speaker's target scores share a speaker offset (so trials are not independent)."""
    offset = rng.normal(0, 1.0, n_speakers)
    a = rng.integers(0, n_speakers, 4000)
    target = rng.random(4000) < 0.5
    b = np.where(target, a, (a + 1 + rng.integers(0, n_speakers - 1, 4000)) % n_speakers)
    scores = rng.normal(size=4000) + target * (shift + offset[a])
    return scores, target, np.stack([a, b], 1)


def test_eer_interval_widens_with_fewer_speakers_and_pairs_differences():
    rng = np.random.default_rng(2)
    scores, labels, spk = _trials(rng, 20, 2.0)
    lo20, hi20 = intervals.eer_interval(scores, labels, spk, resamples=300)
    assert lo20 <= eer(scores, labels)[0] <= hi20
    scores, labels, spk = _trials(rng, 200, 2.0)
    lo200, hi200 = intervals.eer_interval(scores, labels, spk, resamples=300)
    assert hi200 - lo200 < hi20 - lo20  # more speakers, a narrower interval
    better = scores + labels * 1.0
    dlo, dhi = intervals.eer_interval(better, labels, spk, other_scores=scores, resamples=300)
    assert dhi < 0  # a clearly better model: the whole interval of the difference is below zero
    with pytest.raises(ValueError, match=r"speakers of shape \[4000, 2\]"):
        intervals.eer_interval(scores, labels, spk[:, 0])
