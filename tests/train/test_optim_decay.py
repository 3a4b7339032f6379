"""optim.no_decay: s3prl's weight-decay parameter groups (0.01 on every param, 0 on names containing "bias"), checked
against torch.optim.AdamW with the same two groups, on an NNX module's params and with frozen/labelled groups."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from kdjax.train import optim


class Tiny(nnx.Module):
    def __init__(self):
        self.proj = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        self.layer_norm = nnx.LayerNorm(2, rngs=nnx.Rngs(0))


def _cfg(**kw):
    cfg = optim.default_config()
    cfg.update(dict(lr=1e-2, schedule="constant", warmup_frac=0.0, b2=0.999, eps=1e-8, weight_decay=0.01,
                    clip_norm=0.0, **kw))
    return cfg


def test_bias_params_get_no_decay_as_torch_param_groups():
    params = nnx.state(Tiny(), nnx.Param)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    names = {optim.param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    mask = optim.decay_mask(("bias", "LayerNorm.bias", "LayerNorm.weight"))(params)
    decayed = {optim.param_path(path) for path, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m}
    assert decayed == {n for n in names if "bias" not in n} and any("layer_norm" in n for n in decayed)

    tx = optim.make_optimizer(_cfg(no_decay=("bias",)), total_steps=10).tx
    state, p = tx.init(params), params
    tensors = {n: torch.nn.Parameter(torch.tensor(np.asarray(v))) for n, v in names.items()}
    ref = torch.optim.AdamW([{"params": [t for n, t in tensors.items() if "bias" not in n], "weight_decay": 0.01},
                             {"params": [t for n, t in tensors.items() if "bias" in n], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    step = jax.jit(lambda g, s, p: (lambda u, s: (jax.tree.map(jnp.add, p, u), s))(*tx.update(g, s, p)))
    for _ in range(3):
        p, state = step(grads, state, p)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            tensors[optim.param_path(path)].grad = torch.tensor(np.asarray(g))
        ref.step()
    for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]:
        np.testing.assert_allclose(np.asarray(leaf), tensors[optim.param_path(path)].detach().numpy(),
                                   rtol=1e-5, atol=1e-7)
    plain = optim.make_optimizer(_cfg(), total_steps=10).tx  # default: decay on everything
    up, _ = jax.jit(plain.update)(jax.tree.map(jnp.zeros_like, grads), plain.init(params), params)
    assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(up))


def test_no_decay_with_param_groups():
    params = {"head": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "enc": {"bias": jnp.ones(2)}}
    opt = optim.make_optimizer(_cfg(no_decay=("bias",)), total_steps=10,
                               param_labels=lambda t: {"head": {"kernel": "head", "bias": "head"},
                                                       "enc": {"bias": "enc"}}, labels=["head", "enc"])
    zeros = jax.tree.map(jnp.zeros_like, params)
    up, _ = jax.jit(opt.tx.update)(zeros, opt.tx.init(params), params)
    assert float(jnp.abs(up["head"]["kernel"]).max()) > 0
    assert float(jnp.abs(up["head"]["bias"]).max()) == 0 and float(jnp.abs(up["enc"]["bias"]).max()) == 0
