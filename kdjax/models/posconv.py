"""The positional convolutional embedding: a weight-normalised grouped conv over time, with a CPU-friendly gradient.

XLA's CPU backend computes the weight gradient of a grouped convolution about 20x slower than the same contraction
written as an einsum over shifted frames (see the repository's perf notes). On CPU the "einsum" implementation keeps the
native conv for the forward pass and the input gradient (both fast) and computes only the weight gradient as an einsum,
in chunks of kernel taps so memory stays bounded. Accelerators use the native conv throughout ("conv").
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.models.activations import ACTIVATIONS
from kdjax.models.config import EncoderConfig


def _grouped_conv(x: jax.Array, w: jax.Array, groups: int, padding: tuple[int, int] = (0, 0)) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, window_strides=(1,), padding=(padding,),
                                        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)


def _tap_chunk(kernel: int) -> int:
    return next(c for c in (16, 8, 4, 2, 1) if kernel % c == 0)


def _weight_grad(x: jax.Array, dy: jax.Array, kernel: int, groups: int) -> jax.Array:
    """d(loss)/d(w) of `_grouped_conv` as einsums over shifted input frames, `_tap_chunk` taps at a time."""
    batch, frames, channels_out = dy.shape
    channels_in = x.shape[-1] // groups
    xg = x.reshape(batch, x.shape[1], groups, channels_in)
    dyg = dy.reshape(batch, frames, groups, channels_out // groups)
    chunk = _tap_chunk(kernel)

    def taps(start):
        shifted = jnp.stack([jax.lax.dynamic_slice_in_dim(xg, start + j, frames, axis=1) for j in range(chunk)], 2)
        return jnp.einsum("btjgc,btgo->jcgo", shifted, dyg, preferred_element_type=jnp.float32)

    grads = jax.lax.map(taps, jnp.arange(0, kernel, chunk))  # [kernel/chunk, chunk, C_in/G, G, C_out/G]
    return grads.reshape(kernel, channels_in, channels_out).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_conv_cpu(x: jax.Array, w: jax.Array, groups: int, padding: tuple[int, int] = (0, 0)) -> jax.Array:
    """Same value as the native grouped conv; its weight gradient is computed with `_weight_grad`."""
    return _grouped_conv(x, w, groups, padding)


def _fwd(x, w, groups, padding):
    return _grouped_conv(x, w, groups, padding), (x, w)


def _bwd(groups, padding, residuals, dy):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x_: _grouped_conv(x_, w, groups, padding), x)
    (dx,) = input_vjp(dy)
    xp = jnp.pad(x, ((0, 0), padding, (0, 0)))
    return dx, _weight_grad(xp, dy, w.shape[0], groups).reshape(w.shape)


grouped_conv_cpu.defvjp(_fwd, _bwd)


class PositionalConv(nnx.Module):
    """Conv1d(hidden, hidden, K, groups=G, padding=K//2) with weight norm over the kernel axis, then GELU."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        kernel, groups, hidden = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups, config.hidden_size
        std = 2.0 * (1.0 / (kernel * hidden / groups)) ** 0.5
        v = std * jax.random.normal(rngs.params(), (kernel, hidden // groups, hidden))
        self.weight_v = nnx.Param(v)  # [K, hidden/G, hidden]  (HF: [hidden, hidden/G, K])
        self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(v * v, axis=(1, 2))))  # [K] (HF: [1, 1, K]); w = v initially
        self.bias = nnx.Param(jnp.zeros((hidden,)))
        self.kernel, self.groups = kernel, groups
        self.dtype = jnp.dtype(config.dtype)
        self.impl = config.pos_conv_impl
        self.activation = ACTIVATIONS[config.feat_extract_activation]

    def weight(self) -> jax.Array:
        """The effective conv weight g * v / ||v||, the norm taken per kernel tap (PyTorch weight_norm, dim=2)."""
        v = self.weight_v[...]
        norm = jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
        return self.weight_g[...][:, None, None] * v / norm

    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.kernel // 2
        # "same" padding of an even kernel yields one frame too many and HF drops the last: padding one frame less
        # on the right is the same, and padding inside the conv keeps the graph free of a pad and of a slice of
        # symbolic length (export with a dynamic length).
        padding = (pad, pad - 1 + self.kernel % 2)
        impl = self.impl
        if impl == "auto":
            impl = "einsum" if jax.default_backend() == "cpu" else "conv"
        conv = grouped_conv_cpu if impl == "einsum" else _grouped_conv
        y = conv(x, self.weight().astype(self.dtype), self.groups, padding) + self.bias[...].astype(self.dtype)
        return self.activation(y)
