"""WavLM's gated relative position bias (Chen et al., 2022), with transformers' numerics.

Relative positions (key - query) fall into `num_buckets` buckets, half per direction: exact buckets for small
distances, log-spaced ones up to `max_bucket_distance`. One [num_buckets, heads] embedding (HF: layer 0's
`attention.rel_attn_embed`) turns them into a per-head bias that is computed once and passed to every layer; each
layer scales it per head and query frame by a gate computed from its attention input (`gru_rel_pos_*` in HF).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models.config import EncoderConfig


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 [length, length] bucket of each (query, key) pair, computed on the host in float32 as transformers."""
    half = num_buckets // 2
    max_exact = half // 2
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    # float32 throughout, in transformers' operation order, so bucket edges fall on the same frames
    scaled = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum((np.float32(max_exact) + scaled).astype(np.int64), half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class RelativePositionBias(nnx.Module):
    """The bucket embedding: frames T -> float32 bias [heads, T, T] (ungated)."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.num_buckets, self.max_distance = config.num_buckets, config.max_bucket_distance
        init = nnx.initializers.normal(stddev=config.initializer_range)
        self.embedding = nnx.Param(init(rngs.params(), (config.num_buckets, config.num_attention_heads)))

    def __call__(self, length: int) -> jax.Array:
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        return jnp.take(self.embedding[...].astype(jnp.float32), jnp.asarray(buckets), axis=0).transpose(2, 0, 1)


class PositionGate(nnx.Module):
    """The gate of each head and query frame from the attention input split into heads: [B, T, H*D] -> [B, H, T]."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads
        head_dim = config.hidden_size // self.num_heads
        self.linear = nnx.Linear(head_dim, 8, kernel_init=nnx.initializers.normal(stddev=config.initializer_range),
                                 dtype=jnp.dtype(config.dtype), rngs=rngs)
        self.const = nnx.Param(jnp.ones((self.num_heads,)))  # HF: gru_rel_pos_const [1, H, 1, 1]

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, hidden = x.shape
        proj = self.linear(x.reshape(batch, length, self.num_heads, hidden // self.num_heads))  # [B, T, H, 8]
        proj = proj.astype(jnp.float32).reshape(batch, length, self.num_heads, 2, 4).sum(-1)
        gate_a, gate_b = jnp.moveaxis(jax.nn.sigmoid(proj), -1, 0)  # each [B, T, H]
        gate = gate_a * (gate_b * self.const[...].astype(jnp.float32) - 1.0) + 2.0
        return gate.transpose(0, 2, 1)
