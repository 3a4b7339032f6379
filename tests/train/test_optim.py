"""Optimizer from config: schedule values, clipping and AdamW by hand, frozen groups, gradient accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.errors import ConfigError
from kdjax.train import optim, sharding
from tests.train.toy import make_data

from .helpers import host_params, run_steps, toy_config


def _cfg(**kw):
    cfg = optim.default_config()
    cfg.update(kw)
    return cfg


def test_defaults_follow_s3prl():
    cfg = optim.default_config()
    assert (cfg.name, cfg.lr, cfg.warmup_frac, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, cfg.clip_norm) == (
        "adamw", 2e-4, 0.07, 0.9, 0.98, 1e-6, 1e-6, 5.0)


def test_schedule_linear_warmup_then_linear_decay():
    lr, total = 1e-3, 200
    sched = optim.make_schedule(_cfg(lr=lr), total)
    warm = 14  # 7% of 200

    def by_hand(s):  # s3prl get_linear_schedule_with_warmup
        return lr * (s / warm if s < warm else max(0.0, (total - s) / (total - warm)))

    for s in [0, 1, 7, 13, 14, 15, 100, 199, 200, 250]:
        assert float(sched(s)) == pytest.approx(by_hand(s), rel=1e-6, abs=1e-12), s
    opt = optim.make_optimizer(_cfg(lr=lr, accum_steps=4), total_steps=4 * total)
    assert float(opt.lr(4 * 7 + 3)) == pytest.approx(by_hand(7), rel=1e-6)  # schedule counts updates


def test_sgd_clipping_by_hand():
    opt = optim.make_optimizer(_cfg(name="sgd", lr=0.1, schedule="constant", warmup_steps=0), total_steps=10)
    params = {"w": jnp.ones(2)}
    grads = {"w": jnp.array([30.0, 40.0])}  # norm 50 -> scaled to norm 5
    updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.array([3.0, 4.0]), rtol=1e-6)
    small = {"w": jnp.array([0.3, 0.4])}  # norm 0.5: untouched
    updates, _ = opt.tx.update(small, opt.tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.array([0.3, 0.4]), rtol=1e-6)


def test_adamw_first_two_updates_by_hand():
    lr, b1, b2, eps, wd, total = 1e-2, 0.9, 0.98, 1e-6, 1e-6, 10
    opt = optim.make_optimizer(_cfg(lr=lr, warmup_steps=0), total_steps=total)
    p = np.array([1.0, -2.0], np.float32)
    g1, g2 = np.array([30.0, 40.0]), np.array([0.1, -0.2])  # g1 gets clipped to norm 5
    params, state = {"w": jnp.asarray(p)}, opt.tx.init({"w": jnp.asarray(p)})
    m = v = np.zeros(2)
    for t, g in enumerate([g1, g2], start=1):
        gc = g * min(1.0, 5.0 / np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * gc, b2 * v + (1 - b2) * gc**2
        mh, vh = m / (1 - b1**t), v / (1 - b2**t)
        lr_t = lr * (total - (t - 1)) / total
        p = p - lr_t * (mh / (np.sqrt(vh) + eps) + wd * p)
        updates, state = opt.tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], p, rtol=1e-5)


def _two_group_params():
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {"encoder": {"w": jax.random.normal(k[0], (4, 3))}, "head": {"w": jax.random.normal(k[1], (3,))}}


def _labels(params):
    return {"encoder": jax.tree.map(lambda _: "encoder", params["encoder"]),
            "head": jax.tree.map(lambda _: "head", params["head"])}


def test_frozen_group_is_bit_identical_and_other_group_uses_its_lr():
    cfg = _cfg(lr=1e-3, warmup_steps=0, clip_norm=1.0)
    cfg.groups = {"encoder": {"frozen": True}, "head": {"lr": 5e-2}}
    opt = optim.make_optimizer(cfg, total_steps=10, param_labels=_labels, labels=["encoder", "head"])
    ref = optim.make_optimizer(_cfg(lr=5e-2, warmup_steps=0, clip_norm=1.0), total_steps=10)  # head alone
    params = _two_group_params()
    head, state, ref_state = params["head"], opt.tx.init(params), ref.tx.init(params["head"])
    for i in range(3):
        grads = jax.tree.map(lambda x: 10.0 * jax.random.normal(jax.random.PRNGKey(i + 1), x.shape), params)
        updates, state = opt.tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = ref.tx.update(grads["head"], ref_state, head)
        head = optax.apply_updates(head, ref_updates)
    np.testing.assert_array_equal(params["encoder"]["w"], _two_group_params()["encoder"]["w"])
    # frozen gradients do not count in the clipping norm: the head moves exactly as if trained alone
    np.testing.assert_allclose(params["head"]["w"], head["w"], rtol=1e-6)
    assert not np.allclose(params["head"]["w"], _two_group_params()["head"]["w"])


def test_group_errors_name_the_group():
    cfg = _cfg()
    cfg.groups = {"encodr": {"lr": 1e-4}}
    with pytest.raises(ConfigError, match="encodr"):
        optim.make_optimizer(cfg, 10, param_labels=_labels, labels=["encoder", "head"])
    cfg.groups = {"head": {"learning_rate": 1e-4}}
    with pytest.raises(ConfigError, match="groups.head"):
        optim.make_optimizer(cfg, 10, param_labels=_labels, labels=["encoder", "head"])


def test_gradient_accumulation_equals_big_batch_step():
    k, micro, updates = 4, 8, 2
    common = ["--config.toy.dropout=0.0", "--config.optim.warmup_steps=0", "--config.optim.lr=1e-2"]
    big_cfg = toy_config(*common, f"--config.batch_size={k * micro}", f"--config.total_steps={updates}")
    acc_cfg = toy_config(*common, f"--config.batch_size={micro}", f"--config.total_steps={k * updates}",
                         f"--config.optim.accum_steps={k}")
    data = make_data(big_cfg.toy, k * micro * updates, seed=3)
    big = [{n: v[i * k * micro:(i + 1) * k * micro] for n, v in data.items()} for i in range(updates)]
    small = [{n: v[j * micro:(j + 1) * micro] for n, v in data.items()} for j in range(k * updates)]
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    a, b = host_params(run_steps(big_cfg, mesh, big)), host_params(run_steps(acc_cfg, mesh, small))
    init = host_params(run_steps(big_cfg, mesh, []))
    for x, y, x0 in zip(a, b, init):
        np.testing.assert_allclose(y, x, atol=1e-6, rtol=0)
        assert not np.allclose(x, x0)
