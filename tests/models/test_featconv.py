"""The matmul backward pass of the feature encoder's strided convs equals XLA's native gradient (1e-5 relative)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.models import featconv
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import FeatureEncoder


# first layer (C_in 1), K > s with the last block zero-padded, K == s with trailing frames unused
@pytest.mark.parametrize("kernel,stride,frames,c_in", [(10, 5, 103, 1), (3, 2, 41, 8), (2, 2, 41, 8)])
def test_conv_backward_equals_native_gradient(kernel, stride, frames, c_in):
    kx, kw, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, frames, c_in))
    w = jax.random.normal(kw, (kernel, c_in, 16))
    dy = jax.random.normal(kd, (2, (frames - kernel) // stride + 1, 16))

    @jax.jit
    def both(x, w, dy):
        native = jax.vjp(lambda x, w: featconv._native(x, w, stride), x, w)[1](dy)
        return native, featconv.conv_backward(x, w, dy, stride)

    for want, got in zip(*both(x, w, dy)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_encoder_gradients_match_with_matmul_backward(monkeypatch):
    cfg = EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                        conv_dim=(16, 16, 16, 16), conv_kernel=(10, 3, 3, 2), conv_stride=(5, 2, 2, 2),
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.0)
    model = FeatureEncoder(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 1200))
    graphdef, state = nnx.split(model)

    def grads():  # a fresh trace reads featconv.IMPL
        return jax.jit(jax.grad(lambda s: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x)))))(state)

    want = grads()
    monkeypatch.setattr(featconv, "IMPL", "matmul")
    got = grads()
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5 * float(np.abs(a).max() + 1e-30))
    monkeypatch.setattr(featconv, "IMPL", "fast")
    with pytest.raises(ConfigError, match="featconv.IMPL='fast'"):
        model(x)


# the same three cases (wide enough for the row-scaled form, kernel x c_in >= INT8_MIN_DEPTH, except the first
# layer's), plus a frame count where K > s needs no padding and one where K == s uses every frame
@pytest.mark.parametrize("kernel,stride,frames,c_in", [(10, 5, 103, 1), (10, 5, 105, 1), (3, 2, 41, 32),
                                                       (2, 2, 41, 32), (2, 2, 40, 32), (3, 2, 41, 8)])
def test_conv_as_matmul_equals_native_conv(kernel, stride, frames, c_in):
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (2, frames, c_in)) * jnp.linspace(0.01, 30.0, frames)[None, :, None]  # loud and quiet
    x = x.at[1, :7].set(0.0)  # an all-zero block (its row scale is clamped, not a division by zero)
    w = jax.random.normal(kw, (kernel, c_in, 16))
    want = featconv._native(x, w, stride)
    got = featconv.conv_as_matmul(x, w, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    with pytest.raises(ConfigError, match="kernel 5 > 2 x stride 2 is not supported.*static-int8"):
        featconv.conv_as_matmul(x[..., :1], jnp.ones((5, 1, 4)), 2)


def test_matmul_forward_of_the_encoder_equals_native():
    """Under featconv.forward("matmul") the whole conv stack (group norm included) gives the native output."""
    cfg = EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                        conv_dim=(16, 16, 16, 16), conv_kernel=(10, 3, 3, 2), conv_stride=(5, 2, 2, 2),
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.0)
    model = FeatureEncoder(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 1203)) * 3.0
    want = model(x)
    with featconv.forward("matmul"):
        got = model(x)
    assert featconv.FORWARD == "native"  # restored on leaving the block
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match=r"forward\('fast'\)"):
        with featconv.forward("fast"):
            pass
