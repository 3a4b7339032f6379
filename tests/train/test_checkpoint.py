"""Checkpoints: data iterator state restored exactly, half-written checkpoints never loaded, best-by-metric kept."""
import os

import jax
import numpy as np

from kdjax.train import registry, sharding
from kdjax.train.checkpoint import Checkpointer
from tests.train.toy import make_data, train_iterator

from .helpers import toy_config


def _state_and_abstract():
    config = toy_config()
    task = registry.make_task(config)
    init = task.init
    mesh = sharding.make_mesh()
    shard = sharding.state_sharding(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    state = jax.jit(init, out_shardings=shard)(jax.random.PRNGKey(0))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    return config, state, abstract


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_iterator_state_restored_sees_the_same_batches(tmp_path):
    config, state, abstract = _state_and_abstract()
    data = make_data(config.toy, 40, seed=0)
    it = train_iterator(data, batch_size=8, seed=1)  # 5 batches an epoch: crosses an epoch boundary
    for _ in range(7):
        next(it)
    ckpt = Checkpointer(tmp_path / "ck", save_every=1)
    ckpt.save(7, state, {"train": it.get_state()})
    ckpt.close()
    expected = [next(it) for _ in range(6)]

    fresh = train_iterator(data, batch_size=8, seed=1)
    ckpt = Checkpointer(tmp_path / "ck", save_every=1)
    restored, it_states = ckpt.restore(abstract)
    fresh.set_state(it_states["train"])
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["x"], want["x"])
        np.testing.assert_array_equal(got["y"], want["y"])
    _assert_same(restored, state)
    assert all(x.sharding == y.sharding for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)))
    ckpt.close()


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    _, state, abstract = _state_and_abstract()
    ckpt = Checkpointer(tmp_path, save_every=1)
    ckpt.save(3, state, {"train": {"n": 3}})
    ckpt.close()
    # what a kill during the save of step 9 leaves: orbax's tmp dir, never renamed to "9"
    tmp = tmp_path / "9.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "manifest.ocdbt").write_bytes(b"\0garbage")
    (tmp / "data").mkdir()
    (tmp / "data" / "process_0-of-1.json").write_text("{not json")
    ckpt = Checkpointer(tmp_path, save_every=1)
    assert ckpt.latest_step() == 3 and ckpt.all_steps() == [3]
    restored, it_states = ckpt.restore(abstract)
    assert it_states == {"train": {"n": 3}}
    _assert_same(restored, state)
    ckpt.close()
    assert not tmp.exists()  # cleaned up when the manager opened the directory


def test_keep_latest_and_best_by_metric(tmp_path):
    _, state, _ = _state_and_abstract()
    ckpt = Checkpointer(tmp_path, save_every=1, keep=2, best_metric="mse", best_mode="min")
    for step, mse in [(1, 0.5), (2, 0.1), (3, 0.4), (4, 0.3), (5, 0.6)]:
        ckpt.save(step, state, {}, metrics={"mse": mse})
    ckpt.wait()
    assert ckpt.best_step() == 2
    assert sorted(ckpt.all_steps()) == [2, 4, 5]
    ckpt.close()
    assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [2, 4, 5]
