"""Reading API: sources, training iterator (determinism, resume, sharding), eval batches, labels, trials."""
import subprocess
import sys

import numpy as np
import pytest

from kdjax.data import pipeline
from kdjax.errors import DatasetError

KWS = "synthetic_speech/kws_tiny"


def _it(src, **kw):
    args = dict(batch_size=4, max_samples=12_000, seed=0, process_index=0, process_count=1)
    args.update(kw)
    return pipeline.train_iterator(src, **args)


def test_batch_keys_shapes(tiny_data_dir):
    src = pipeline.load_source(KWS, "train", tiny_data_dir)
    b = next(_it(src))
    assert b["input_values"].shape == (4, 12_000) and b["input_values"].dtype == np.float32
    assert b["attention_mask"].dtype == np.int32 and b["attention_mask"].shape == (4, 12_000)
    assert b["label"].dtype == np.int32 and b["speaker"].dtype == np.int32
    v = b["input_values"][0][b["attention_mask"][0] == 1]
    assert abs(v.mean()) < 1e-3 and abs(v.std() - 1) < 1e-2
    b = next(_it(src, max_samples=20_000))  # 1 s clips: padded
    assert b["attention_mask"].sum(1).max() == 16_000 and np.all(b["input_values"][:, 16_000:] == 0)


def test_deterministic_and_exact_resume(tiny_data_dir):
    src = pipeline.load_source(KWS, "train", tiny_data_dir)
    a = _it(src)
    first = [next(a) for _ in range(3)]
    state = a.get_state()
    rest = [next(a) for _ in range(40)]  # crosses an epoch boundary (108 examples / 4)
    b = _it(src)
    for want in first:
        np.testing.assert_array_equal(next(b)["input_values"], want["input_values"])
    c = _it(src)
    c.set_state(state)
    for want in rest:
        got = next(c)
        np.testing.assert_array_equal(got["input_values"], want["input_values"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert not np.array_equal(next(_it(src, seed=1))["input_values"], first[0]["input_values"])


def test_process_shards_are_disjoint(tiny_data_dir):
    src = pipeline.load_source(KWS, "train", tiny_data_dir)
    for p in range(2):
        it = _it(src, process_index=p, process_count=2, num_epochs=1, batch_size=2)
        assert sum(1 for _ in it) == len(range(p, len(src), 2)) // 2
    ids = [set(pipeline.utterance_ids(src)[p::2]) for p in range(2)]
    assert not ids[0] & ids[1] and len(ids[0]) + len(ids[1]) == len(src)


def test_epochs_and_min_samples(tiny_data_dir):
    src = pipeline.load_source(KWS, "train", tiny_data_dir)
    assert sum(1 for _ in _it(src, num_epochs=1)) == len(src) // 4
    assert sum(1 for _ in _it(src, num_epochs=1, min_samples=16_001)) == 0


def test_eval_batches_cover_all_in_order(tiny_data_dir):
    src = pipeline.load_source(KWS, "test", tiny_data_dir)
    batches = list(pipeline.eval_batches(src, batch_size=5))
    idx = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert idx.tolist() == list(range(len(src)))
    assert batches[-1]["valid"].sum() == len(src) - 5 * (len(batches) - 1)
    labels = np.concatenate([b["label"][b["valid"]] for b in batches])
    assert labels.tolist() == [src[i]["label"] for i in range(len(src))]
    assert next(iter(pipeline.eval_batches(src, batch_size=2, max_samples=8000)))["input_values"].shape == (2, 8000)


def test_labels_metadata_trials(tiny_data_dir):
    assert pipeline.label_names(KWS, tiny_data_dir)[-2:] == ["_unknown_", "_silence_"]
    meta = pipeline.metadata("synthetic_speech/sv_tiny", tiny_data_dir)
    assert meta["num_train_speakers"] == 6 and meta["config"]["num_speakers"] == 12  # 2 validation, 4 test
    trials = pipeline.load_trials("synthetic_speech/sv_tiny", tiny_data_dir)
    assert len(trials) == 24 and sum(t for t, _, _ in trials) == 12
    test_ids = set(pipeline.utterance_ids(pipeline.load_source("synthetic_speech/sv_tiny", "test", tiny_data_dir)))
    train_spk = {pipeline.load_source("synthetic_speech/sv_tiny", "train", tiny_data_dir)[i]["speaker"]
                 for i in range(18)}
    assert all(a in test_ids and b in test_ids for _, a, b in trials) and max(train_spk) < 6
    with pytest.raises(DatasetError, match="no labels"):
        pipeline.label_names("synthetic_speech/sv_tiny", tiny_data_dir)


def test_not_prepared_error(tmp_path):
    with pytest.raises(DatasetError, match="kdjax prepare synthetic_speech/kws"):
        pipeline.load_source("synthetic_speech/kws", "train", str(tmp_path))
    with pytest.raises(DatasetError, match="unknown dataset"):
        pipeline.load_source("nope", "train", str(tmp_path))


def test_no_tensorflow_after_full_read(tiny_data_dir):
    code = f"""
import sys
from kdjax.data import pipeline
for name in ("kws_tiny", "sv_tiny", "unlabeled_tiny"):
    src = pipeline.load_source("synthetic_speech/" + name, "train", {tiny_data_dir!r})
    for b in pipeline.train_iterator(src, batch_size=2, max_samples=8000, seed=0, num_epochs=1,
                                     process_index=0, process_count=1):
        pass
    list(pipeline.eval_batches(src, batch_size=4))
pipeline.load_trials("synthetic_speech/sv_tiny", {tiny_data_dir!r})
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_bucketed_iterator(tiny_data_dir):
    src = pipeline.load_source("synthetic_speech/unlabeled_tiny", "train", tiny_data_dir)
    it = pipeline.bucketed_iterator(src, batch_size=2, boundaries=[24_000, 40_000], seed=0, num_epochs=1,
                                    process_index=0, process_count=1)
    batches = list(it)
    assert batches and all(b["input_values"].shape[1] in (24_000, 40_000) for b in batches)
    for b in batches:
        assert b["attention_mask"].sum(1).min() > 0 and b["input_values"].shape[0] == 2
    it = pipeline.bucketed_iterator(src, batch_size=2, boundaries=[24_000, 40_000], seed=0,
                                    process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    want = next(it)
    again = pipeline.bucketed_iterator(src, batch_size=2, boundaries=[24_000, 40_000], seed=0,
                                       process_index=0, process_count=1)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["input_values"], want["input_values"])


def test_process_eval_batches_have_fixed_shapes_and_cover_every_example(tiny_data_dir):
    src = pipeline.load_source("synthetic_speech/kws_tiny", "test", tiny_data_dir)
    limit = len(src) - 1
    assert limit > 8
    batches = list(pipeline.process_eval_batches(src, global_batch_size=8, max_samples=12_000, limit=limit))
    assert len(batches) == -(-limit // 8)
    assert all(b["input_values"].shape == (8, 12_000) and b["attention_mask"].shape == (8, 12_000) for b in batches)
    idx = np.concatenate([b["index"][b["valid"]] for b in batches])
    np.testing.assert_array_equal(idx, np.arange(limit))


def test_eval_batches_pad_to_rounds_lengths_up(tiny_data_dir):
    src = pipeline.load_source("synthetic_speech/sv_tiny", "test", tiny_data_dir)
    for b in pipeline.eval_batches(src, batch_size=4, pad_to=8000):
        assert b["input_values"].shape[1] % 8000 == 0
