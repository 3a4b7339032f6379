"""Mesh and sharding: 8 CPU devices (batch split on `data`, or FSDP params) match one device."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from kdjax.errors import ConfigError
from kdjax.train import sharding
from tests.train.toy import make_data

from .helpers import host_params, run_steps, toy_config


def _batches(config, n):
    data = make_data(config.toy, n * config.batch_size, seed=5)
    bs = config.batch_size
    return [{k: v[i * bs:(i + 1) * bs] for k, v in data.items()} for i in range(n)]


def test_eight_devices_equal_one_device_after_three_steps():
    assert jax.device_count() == 8
    config = toy_config("--config.toy.dropout=0.0", "--config.optim.warmup_steps=0")
    batches = _batches(config, 3)
    one = host_params(run_steps(config, sharding.make_mesh(devices=jax.devices()[:1]), batches))
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1}
    eight = run_steps(config, mesh, batches)
    assert all(x.sharding.spec == P() for x in jax.tree.leaves(eight.params))  # replicated
    for a, b in zip(host_params(eight), one):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_fsdp_shards_params_and_matches_one_device():
    config = toy_config("--config.toy.dropout=0.0", "--config.mesh.fsdp=2", "--config.mesh.fsdp_min_size=1")
    batches = _batches(config, 3)
    mesh = sharding.make_mesh(config.mesh)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    state = run_steps(config, mesh, batches)
    specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
    assert any("fsdp" in tuple(s) for s in specs)
    one = host_params(run_steps(config, sharding.make_mesh(devices=jax.devices()[:1]), batches))
    for a, b in zip(host_params(state), one):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_param_spec_rules():
    assert sharding.param_spec((64, 128), fsdp=1) == P()
    assert sharding.param_spec((64, 512), fsdp=4) == P(None, "fsdp")  # largest divisible dim
    assert sharding.param_spec((3, 6), fsdp=4, fsdp_min_size=1) == P()  # nothing divisible
    assert sharding.param_spec((8,), fsdp=2, fsdp_min_size=100) == P()  # too small


def test_to_global_splits_rows_over_all_devices():
    mesh = sharding.make_mesh()
    batch = sharding.to_global({"x": np.arange(32.0).reshape(16, 2), "sub": {"y": np.arange(16)}}, mesh)
    assert batch["x"].shape == (16, 2) and batch["sub"]["y"].shape == (16,)
    assert batch["x"].sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 2)}
    np.testing.assert_array_equal(np.asarray(batch["sub"]["y"]), np.arange(16))


def test_bad_fsdp_size_names_the_field():
    with pytest.raises(ConfigError, match="config.mesh.fsdp=3"):
        sharding.make_mesh(toy_config("--config.mesh.fsdp=3").mesh)


def test_mesh_devices_selects_a_subset_and_names_a_bad_count():
    import ml_collections

    from kdjax.errors import ConfigError

    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(fsdp=1, devices=2)))
    assert mesh.devices.size == 2
    with pytest.raises(ConfigError, match=r"config.mesh.devices=99"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(fsdp=1, devices=99)))
