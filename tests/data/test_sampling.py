"""kdjax.data.sampling on in-memory sources: class-balanced stream (s3prl's WeightedRandomSampler), the balanced
dev resample, s3prl's length-sorted buckets and equal-length evaluation batches."""
import collections

import numpy as np
import pytest

from kdjax.data import pipeline, sampling


def _source(labels, lengths):
    return [{"audio": (np.arange(n) % 7 + 100 * i).astype(np.int16), "label": int(c), "speaker": 0,
             "id": f"u{i}"} for i, (c, n) in enumerate(zip(labels, lengths))]


def _rows(batch):
    return [int(round(x * 32768)) for x in batch["input_values"][:, 0]]  # first sample: 100 * clip + offset % 7


LABELS = [0] * 40 + [1] * 4 + [2] * 1  # _unknown_-like majority, a rare class, one _silence_ file
SRC = _source(LABELS, [8] * 44 + [50])


def test_balanced_stream_matches_weighted_sampler_and_resumes():
    assert sampling.balanced_weights(LABELS).tolist() == [45 / 40] * 40 + [45 / 4] * 4 + [45.0]
    it = sampling.balanced_iterator(SRC, batch_size=16, max_samples=8, seed=3, normalize=False,
                                    process_index=0, process_count=1)
    clips = [r // 100 for _ in range(60) for r in _rows(next(it))]
    freq = collections.Counter(LABELS[c] for c in clips)
    assert all(abs(freq[c] / len(clips) - 1 / 3) < 0.03 for c in range(3))  # each class 1/3, not 40/45
    assert len({c for c in clips if LABELS[c] == 0}) > 30  # uniform within a class, with replacement
    # resume: the state after 5 batches gives the same next batches
    a = sampling.balanced_iterator(SRC, batch_size=4, max_samples=8, seed=1, normalize=False,
                                   process_index=0, process_count=1)
    for _ in range(5):
        next(a)
    state = a.get_state()
    want = [next(a)["input_values"] for _ in range(3)]
    b = sampling.balanced_iterator(SRC, batch_size=4, max_samples=8, seed=1, normalize=False,
                                   process_index=0, process_count=1)
    b.set_state(state)
    assert all(np.array_equal(w, next(b)["input_values"]) for w in want)


def test_balanced_stream_is_process_count_free_and_crops_long_clips_at_random():
    one = sampling.balanced_iterator(SRC, batch_size=8, max_samples=8, seed=5, normalize=False,
                                     process_index=0, process_count=1)
    two = [sampling.balanced_iterator(SRC, batch_size=4, max_samples=8, seed=5, normalize=False,
                                      process_index=p, process_count=2) for p in range(2)]
    for _ in range(4):
        whole = next(one)["input_values"]
        assert np.array_equal(whole, np.concatenate([next(t)["input_values"] for t in two]))
    it = sampling.balanced_iterator(SRC, batch_size=16, max_samples=8, seed=0, normalize=False,
                                    process_index=0, process_count=1)
    offsets = {r - 4400 for _ in range(20) for r in _rows(next(it)) if r >= 4400}
    assert len(offsets) > 3  # the 50-sample "noise file" is cropped at many offsets (values i % 7 repeat)


def test_balanced_resample_and_seeded_eval_crops():
    dev = sampling.balanced_resample(LABELS, seed=0)
    assert len(dev) == len(LABELS) and np.array_equal(dev, sampling.balanced_resample(LABELS, seed=0))
    assert not np.array_equal(dev, sampling.balanced_resample(LABELS, seed=1))
    big = sampling.balanced_resample(LABELS, seed=0, num_samples=3000)
    share = np.bincount(np.asarray(LABELS)[big]) / 3000
    assert np.all(np.abs(share - 1 / 3) < 0.04)
    batches = list(pipeline.process_eval_batches(SRC, global_batch_size=8, max_samples=8, normalize=False,
                                                 indices=big[:40], crop_seed=2))
    index = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert index.tolist() == big[:40].tolist()
    again = list(pipeline.process_eval_batches(SRC, global_batch_size=8, max_samples=8, normalize=False,
                                               indices=big[:40], crop_seed=2))
    assert all(np.array_equal(x["input_values"], y["input_values"]) for x, y in zip(batches, again))


def test_sorted_buckets_as_s3prl(tmp_path):
    lengths = [5, 30, 12, 30, 7, 18, 9]
    cache = str(tmp_path / "lengths.npy")
    assert sampling.example_lengths(_source([0] * 7, lengths), cache=cache).tolist() == lengths
    assert sampling.example_lengths([{}] * 7, cache=cache).tolist() == lengths  # read back, not recomputed
    assert sampling.sorted_buckets(lengths, 3) == [[1, 3, 5], [2, 6, 4]]  # longest first; last partial batch dropped
    src = _source([0] * 7, lengths)
    it = sampling.sorted_bucket_iterator(src, batch_size=3, max_samples=20, seed=0, lengths=lengths, num_epochs=1,
                                         normalize=False, process_index=0, process_count=1)
    shapes = sorted(b["input_values"].shape for b in it)
    assert shapes == [(3, 12), (3, 20)]  # padded to the longest clip after cropping at max_samples
    halves = [list(sampling.sorted_bucket_iterator(src, batch_size=1, max_samples=20, seed=0, lengths=lengths,
                                                   num_epochs=1, normalize=False, process_index=p,
                                                   process_count=3)) for p in range(3)]
    assert all(b["input_values"].shape[1] == halves[0][k]["input_values"].shape[1]
               for h in halves for k, b in enumerate(h))  # every process pads to the global batch's longest


def test_equal_length_batches_never_pad_a_row():
    lengths = [10, 12, 10, 10, 12, 33]
    src = _source([0] * 6, lengths)
    batches = list(sampling.equal_length_batches(src, batch_size=2, normalize=False, lengths=lengths))
    for b in batches:
        assert b["attention_mask"][b["valid"]].all()
    assert sorted(i for b in batches for i in b["index"][b["valid"]]) == list(range(6))
    assert [b["input_values"].shape[1] for b in batches] == [10, 10, 12, 33]
    rounded = list(sampling.equal_length_batches(src, batch_size=4, normalize=False, round_to=10))
    assert [b["input_values"].shape[1] for b in rounded] == [10, 10, 30]  # tails trimmed, never padded
    quiet = next(sampling.equal_length_batches(src, batch_size=2, normalize=False, gain_db=-3.0))
    np.testing.assert_allclose(quiet["input_values"], batches[0]["input_values"] * 10 ** (-3 / 20), rtol=1e-6)
    with pytest.raises(Exception, match="round_to"):
        next(sampling.equal_length_batches(src, round_to=0))
