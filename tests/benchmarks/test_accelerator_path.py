"""What the accelerator rows rely on, checked on CPU: bfloat16 compute keeps float32 params and float32 loss math,
and pos_conv_impl="auto" picks the native grouped conv off CPU (the two implementations agree: see
tests/models/test_encoder.py::test_posconv_einsum_gradient_equals_native_conv)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.distill.losses import LossConfig, distill_loss, make_heads
from kdjax.models import posconv
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder

TINY = EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16,
                     num_conv_pos_embedding_groups=4, mask_time_prob=0.0)


def test_bfloat16_compute_keeps_float32_params_and_loss():
    cfg = TINY.replace(dtype="bfloat16")
    student = Encoder(cfg, rngs=nnx.Rngs(0))
    heads = make_heads(LossConfig(target_layers=(1, 2)), cfg, cfg, rngs=nnx.Rngs(1))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state((student, heads), nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
    x = jax.random.normal(jax.random.key(0), (2, 1600))

    @nnx.jit
    def run(student, heads, x, targets):
        loss, metrics = distill_loss(student, heads, targets, {"input_values": x}, LossConfig(target_layers=(1, 2)))
        return student(x).last_hidden_state, loss, metrics

    hidden, loss, metrics = run(student, heads, x, jnp.zeros((2, 2, 79, 32)))
    assert hidden.dtype == jnp.bfloat16
    assert loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in metrics.values())


@pytest.mark.parametrize("backend,custom", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_auto_pos_conv_is_native_off_cpu(monkeypatch, backend, custom):
    monkeypatch.setattr(posconv.jax, "default_backend", lambda: backend)
    module = posconv.PositionalConv(TINY, rngs=nnx.Rngs(0))
    jaxpr = str(jax.make_jaxpr(lambda x: module(x))(jnp.zeros((1, 20, 32))))
    assert ("custom_vjp" in jaxpr) == custom, jaxpr[:500]
    assert "feature_group_count=4" in jaxpr.replace(" ", "")  # both run the grouped conv forward


def test_native_and_einsum_pos_conv_agree_on_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 20, 32))
    outs = []
    for impl in ("conv", "einsum"):
        m = posconv.PositionalConv(TINY.replace(pos_conv_impl=impl, dtype="bfloat16"), rngs=nnx.Rngs(0))
        outs.append(nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x.astype(jnp.bfloat16)).astype(jnp.float32) ** 2)))(m, x))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=3e-2, atol=3e-2)
