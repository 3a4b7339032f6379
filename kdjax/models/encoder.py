"""The wav2vec 2.0 / HuBERT / WavLM encoder in Flax NNX: one module for all three, driven by EncoderConfig flags.

Numerics follow Hugging Face transformers (v5) exactly, including what it does at padded positions: padded frames are
zeroed before the positional convolution, attention masks padded keys only, and padded query frames are still computed
(their values are meaningless; `EncoderOutput.frame_mask` tells which frames are valid). WavLM adds a gated relative
position bias to the attention scores (kdjax.models.relpos); its padding semantics are the same.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.models import featconv, posconv, relpos
from kdjax.models.activations import ACTIVATIONS as _ACT
from kdjax.models.config import EncoderConfig



class EncoderOutput(NamedTuple):
    """What the encoder returns; `hidden_states` is None unless requested."""

    last_hidden_state: jax.Array  # [B, T, H]
    hidden_states: tuple[jax.Array, ...] | None  # input to layer 0, then each layer's output (as transformers)
    frame_mask: jax.Array  # [B, T] bool, True on frames that come from real (unpadded) samples


def conv_output_lengths(config: EncoderConfig, input_lengths: jax.Array) -> jax.Array:
    """Number of output frames of the conv feature encoder for inputs of the given sample lengths."""
    lengths = input_lengths
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = (lengths - kernel) // stride + 1
    return lengths


def frame_mask_from_attention_mask(config: EncoderConfig, attention_mask: jax.Array, num_frames: int) -> jax.Array:
    """Bool [B, num_frames] mask of valid frames for a right-padded sample-level attention mask."""
    # Frame t is valid iff the last sample of its receptive field is, i.e. t * frame_stride + receptive_field <= length
    # (the same as t < conv_output_lengths(length)): a strided slice of the mask, with neither an integer division nor
    # an iota, so that the graph exports with a symbolic length (ONNX / LiteRT).
    mask = jax.lax.slice_in_dim(attention_mask, config.receptive_field - 1, attention_mask.shape[1],
                                config.frame_stride, axis=1) > 0
    static = isinstance(mask.shape[1], int) and isinstance(num_frames, int)  # symbolic sizes agree by construction
    if static and mask.shape[1] != num_frames:  # a caller's longer or shorter frame axis
        mask = jnp.pad(mask, ((0, 0), (0, max(num_frames - mask.shape[1], 0))))[:, :num_frames]
    return mask


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _normal(std: float):
    return nnx.initializers.normal(stddev=std)


class ConvLayer(nnx.Module):
    """One conv of the feature encoder with its optional norm (GroupNorm per channel, or LayerNorm) and activation."""

    def __init__(self, config: EncoderConfig, index: int, *, rngs: nnx.Rngs):
        dim_in = config.conv_dim[index - 1] if index > 0 else 1
        dim_out = config.conv_dim[index]
        dtype = jnp.dtype(config.dtype)
        self.conv = nnx.Conv(dim_in, dim_out, kernel_size=(config.conv_kernel[index],),
                             strides=(config.conv_stride[index],), padding="VALID", use_bias=config.conv_bias,
                             kernel_init=nnx.initializers.he_normal(), dtype=dtype, rngs=rngs)
        if config.feat_extract_norm == "layer":
            self.norm_kind = "layer"
        else:
            self.norm_kind = "group" if index == 0 else None
        if self.norm_kind:
            # GroupNorm with one group per channel normalises each channel over time; LayerNorm over channels.
            self.norm = nnx.LayerNorm(dim_out, epsilon=1e-5, reduction_axes=1 if self.norm_kind == "group" else -1,
                                      feature_axes=-1, dtype=dtype, rngs=rngs)
        self.activation = _ACT[config.feat_extract_activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = featconv.apply(self.conv, x)  # self.conv(x), unless featconv.IMPL selects another backward pass
        if self.norm_kind == "group" and featconv.FORWARD == "matmul":
            x = featconv.channel_norm(x, self.norm.scale[...], self.norm.bias[...], self.norm.epsilon)
        elif self.norm_kind:
            x = self.norm(x)
        return self.activation(x)


class FeatureEncoder(nnx.Module):
    """The strided conv stack: raw samples [B, S] -> features [B, T, conv_dim[-1]]."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.conv_layers = nnx.List([ConvLayer(config, i, rngs=rngs) for i in range(len(config.conv_dim))])

    def __call__(self, input_values: jax.Array) -> jax.Array:
        x = input_values[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nnx.Module):
    """Optional LayerNorm, then a Linear from conv_dim[-1] to hidden_size."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.norm = (nnx.LayerNorm(config.conv_dim[-1], epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)
                     if config.feat_proj_layer_norm else None)
        self.dense = nnx.Linear(config.conv_dim[-1], config.hidden_size, kernel_init=_normal(config.initializer_range),
                                dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.norm is not None:
            x = self.norm(x)
        return self.dense(x)


class Attention(nnx.Module):
    """Multi-head self-attention; padded keys are masked out; WavLM adds the gated relative position bias."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        hidden = config.hidden_size
        dense = functools.partial(nnx.Linear, hidden, hidden, kernel_init=_normal(config.initializer_range),
                                  dtype=dtype, rngs=rngs)
        self.query, self.key, self.value, self.out = dense(), dense(), dense(), dense()
        self.num_heads = config.num_attention_heads
        self.dropout_rate = config.attention_dropout
        self.gate = relpos.PositionGate(config, rngs=rngs) if config.relative_position_bias else None

    def __call__(self, x: jax.Array, key_bias: jax.Array | None, rng: jax.Array | None,
                 position_bias: jax.Array | None = None) -> jax.Array:
        batch, length, hidden = x.shape
        head_dim = hidden // self.num_heads

        def heads(t):
            return t.reshape(batch, length, self.num_heads, head_dim)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim ** -0.5)
        scores = scores.astype(jnp.float32)
        if self.gate is not None:
            scores = scores + self.gate(x)[..., None] * position_bias[None]  # [B, H, Q, 1] * [1, H, Q, K]
        if key_bias is not None:
            scores = scores + key_bias[:, None, None, :]
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        probs = _dropout(probs, self.dropout_rate, rng)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, hidden)
        return self.out(context)


class FeedForward(nnx.Module):
    """Linear -> activation -> dropout -> Linear -> dropout."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        init = _normal(config.initializer_range)
        self.intermediate = nnx.Linear(config.hidden_size, config.intermediate_size, kernel_init=init, dtype=dtype,
                                       rngs=rngs)
        self.output = nnx.Linear(config.intermediate_size, config.hidden_size, kernel_init=init, dtype=dtype, rngs=rngs)
        self.activation = _ACT[config.hidden_act]
        self.activation_dropout = config.activation_dropout
        self.hidden_dropout = config.hidden_dropout

    def __call__(self, x: jax.Array, rngs: tuple[jax.Array | None, jax.Array | None]) -> jax.Array:
        x = _dropout(self.activation(self.intermediate(x)), self.activation_dropout, rngs[0])
        return _dropout(self.output(x), self.hidden_dropout, rngs[1])


class TransformerLayer(nnx.Module):
    """Post-LN (wav2vec2-base, HuBERT) or pre-LN (`do_stable_layer_norm`, the large models) transformer layer."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.attention = Attention(config, rngs=rngs)
        self.attention_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)
        self.output_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.pre_norm = config.do_stable_layer_norm
        self.hidden_dropout = config.hidden_dropout

    def __call__(self, x: jax.Array, key_bias: jax.Array | None, rng: jax.Array | None,
                 position_bias: jax.Array | None = None) -> jax.Array:
        keys = tuple(jax.random.split(rng, 4)) if rng is not None else (None,) * 4
        if self.pre_norm:
            attended = self.attention(self.attention_norm(x), key_bias, keys[0], position_bias)
            x = x + _dropout(attended, self.hidden_dropout, keys[1])
            return x + self.feed_forward(self.output_norm(x), keys[2:])
        attended = self.attention(x, key_bias, keys[0], position_bias)
        x = self.attention_norm(x + _dropout(attended, self.hidden_dropout, keys[1]))
        return self.output_norm(x + self.feed_forward(x, keys[2:]))


def _span_mask(key: jax.Array, lengths: jax.Array, size: int, prob: float, span: int, min_spans: int) -> jax.Array:
    """SpecAugment spans as transformers draws them, on device: bool [B, size], spans only inside each length."""
    batch = lengths.shape[0]
    if span > size:
        raise ConfigError(f"mask length {span} is longer than the sequence ({size} frames): lower mask_time_length")
    key_eps, key_pos = jax.random.split(key)
    epsilon = jax.random.uniform(key_eps, ())
    max_spans = max(int(prob * size / span + 1.0), min_spans)
    max_spans = min(max_spans, size // span, size - span + 1)

    def num_spans(length):
        n = jnp.maximum(jnp.floor(prob * length / span + epsilon).astype(jnp.int32), min_spans)
        n = jnp.minimum(n, size // span)
        return jnp.clip(n, 0, jnp.maximum(length - (span - 1), 0))

    counts = num_spans(lengths)
    # Distinct random starts in [0, length - span]: the top-k of uniform scores over allowed positions.
    scores = jax.random.uniform(key_pos, (batch, size))
    allowed = jnp.arange(size)[None, :] <= (lengths[:, None] - span)
    scores = jnp.where(allowed, scores, -1.0)
    _, starts = jax.lax.top_k(scores, max_spans)  # [B, S]
    used = jnp.arange(max_spans)[None, :] < counts[:, None]
    t = jnp.arange(size)[None, None, :]
    covered = (t >= starts[..., None]) & (t < starts[..., None] + span) & used[..., None]
    return jnp.any(covered, axis=1)


def time_mask(config: EncoderConfig, key: jax.Array, frame_mask: jax.Array) -> jax.Array:
    """Random time-mask spans (bool [B, T]) inside the valid frames, per the config's mask_time_* fields."""
    return _span_mask(key, jnp.sum(frame_mask, axis=-1), frame_mask.shape[1], config.mask_time_prob,
                      config.mask_time_length, config.mask_time_min_masks)


class Encoder(nnx.Module):
    """wav2vec 2.0 / HuBERT / WavLM: conv features -> projection -> (masking) -> positional conv -> transformer."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.feature_encoder = FeatureEncoder(config, rngs=rngs)
        self.feature_projection = FeatureProjection(config, rngs=rngs)
        if config.mask_time_prob > 0 or config.mask_feature_prob > 0:
            self.masked_spec_embed = nnx.Param(jax.random.uniform(rngs.params(), (config.hidden_size,)))
        else:
            self.masked_spec_embed = None
        self.pos_conv = posconv.PositionalConv(config, rngs=rngs)
        self.encoder_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps,
                                          dtype=jnp.dtype(config.dtype), rngs=rngs)
        self.layers = nnx.List([TransformerLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        # WavLM: HF keeps the bucket embedding in layer 0 only; it lives here so the layers stay alike (scan_layers)
        self.rel_pos_bias = (relpos.RelativePositionBias(config, rngs=rngs)
                             if config.relative_position_bias and config.num_hidden_layers > 0 else None)

    def __call__(self, input_values: jax.Array, attention_mask: jax.Array | None = None, *,
                 output_hidden_states: bool = False, deterministic: bool = True, rng: jax.Array | None = None,
                 num_layers: int | None = None, mask_time_indices: jax.Array | None = None) -> EncoderOutput:
        """Encode [B, S] float samples; `rng` is required when `deterministic=False` (dropout, masking, layerdrop).

        `num_layers` runs only the first layers (a teacher that must supply layer 8 need not compute 9-12); the
        stable-LN final LayerNorm is then not applied. `mask_time_indices` (bool [B, T]) replaces those frames by
        `masked_spec_embed` instead of drawing random spans (masked prediction pre-training chooses its own).
        Freezing the conv stack (or the whole encoder) is not done here: it is an optimizer group
        (kdjax.train.optim), whose zero gradient lets XLA drop that backward pass.
        """
        cfg = self.config
        if not deterministic and rng is None:
            raise ConfigError("Encoder.__call__: deterministic=False needs rng= (a jax.random key)")
        num_layers = cfg.num_hidden_layers if num_layers is None else num_layers
        if not 0 <= num_layers <= cfg.num_hidden_layers:
            raise ConfigError(f"num_layers={num_layers}: expected 0..{cfg.num_hidden_layers} (num_hidden_layers)")
        keys = list(jax.random.split(rng, 5)) if rng is not None and not deterministic else [None] * 5

        x = input_values.astype(jnp.dtype(cfg.dtype))
        # The frame mask first: in an export with a symbolic length it is the first tensor with the frame axis,
        # from which the exporter recovers the sizes of the conv stack's slices (kdjax.models.featconv).
        frame_mask = None
        if attention_mask is not None:
            frames = conv_output_lengths(cfg, attention_mask.shape[1])
            frame_mask = frame_mask_from_attention_mask(cfg, attention_mask,
                                                        max(frames, 0) if isinstance(frames, int) else frames)
        features = self.feature_encoder(x)
        batch, frames, _ = features.shape
        if frame_mask is None:
            frame_mask = jnp.ones((batch, frames), dtype=bool)
        h = _dropout(self.feature_projection(features), cfg.feat_proj_dropout, keys[0])
        if mask_time_indices is not None:
            if self.masked_spec_embed is None:
                raise ConfigError("mask_time_indices needs masked_spec_embed: set mask_time_prob > 0 in the config")
            h = jnp.where(mask_time_indices[..., None], self.masked_spec_embed[...].astype(h.dtype), h)
        elif keys[1] is not None and cfg.apply_spec_augment:
            h = self._mask(h, frame_mask, keys[1])

        key_bias = None
        if attention_mask is not None:
            h = jnp.where(frame_mask[..., None], h, 0)
            key_bias = jnp.where(frame_mask, 0.0, jnp.finfo(jnp.float32).min)
        h = h + self.pos_conv(h)
        if not cfg.do_stable_layer_norm:
            h = self.encoder_norm(h)
        h = _dropout(h, cfg.hidden_dropout, keys[2])

        position_bias = self.rel_pos_bias(frames) if self.rel_pos_bias is not None and num_layers else None
        h, hidden_states = self._run_layers(h, key_bias, position_bias, num_layers, keys[3], keys[4])
        last = self.encoder_norm(h) if cfg.do_stable_layer_norm and num_layers == cfg.num_hidden_layers else h
        return EncoderOutput(last, hidden_states if output_hidden_states else None, frame_mask)

    def _mask(self, h: jax.Array, frame_mask: jax.Array, key: jax.Array) -> jax.Array:
        cfg = self.config
        key_time, key_feat = jax.random.split(key)
        batch, frames, hidden = h.shape
        if cfg.mask_time_prob > 0:
            spans = time_mask(cfg, key_time, frame_mask)
            h = jnp.where(spans[..., None], self.masked_spec_embed[...].astype(h.dtype), h)
        if cfg.mask_feature_prob > 0:
            spans = _span_mask(key_feat, jnp.full((batch,), hidden), hidden, cfg.mask_feature_prob,
                               cfg.mask_feature_length, cfg.mask_feature_min_masks)
            h = jnp.where(spans[:, None, :], 0, h)
        return h

    def _run_layers(self, h, key_bias, position_bias, num_layers, layer_key, drop_key):
        cfg = self.config
        layers = list(self.layers)[:num_layers]
        hidden_states = [h]
        if not layers:
            return h, tuple(hidden_states)
        graphdef, _ = nnx.split(layers[0])

        def apply(state, h, rng):
            return nnx.merge(graphdef, state)(h, key_bias, rng, position_bias)

        if cfg.remat:
            apply = jax.checkpoint(apply)
        training = layer_key is not None
        layer_keys = jax.random.split(layer_key, num_layers) if training else [None] * num_layers
        drops = (jax.random.uniform(drop_key, (num_layers,)) < cfg.layerdrop
                 if training and cfg.layerdrop > 0 else None)
        if drops is not None and cfg.relative_position_bias:
            drops = drops.at[0].set(False)  # HF's WavLM never drops layer 0 (it computes the position bias there)

        def step(h, state, rng, drop):
            out = apply(state, h, rng)
            # LayerDrop skips the layer's update; the layer still runs so the step stays one static graph.
            return out if drop is None else jnp.where(drop, h, out)

        states = [nnx.state(layer) for layer in layers]
        if cfg.scan_layers:
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
            xs = (stacked, jnp.stack(layer_keys) if training else None, drops)

            def body(h, x):
                state, rng, drop = x
                h = step(h, state, rng, drop)
                return h, h

            h, outs = jax.lax.scan(body, h, xs)
            hidden_states += [outs[i] for i in range(num_layers)]
        else:
            for i, state in enumerate(states):
                h = step(h, state, layer_keys[i], None if drops is None else drops[i])
                hidden_states.append(h)
        return h, tuple(hidden_states)


def init_encoder(config: EncoderConfig, seed: int = 0) -> Encoder:
    """A randomly initialised encoder (HF-like initialisation)."""
    return Encoder(config, rngs=nnx.Rngs(seed))


def count_params(module: nnx.Module) -> int:
    """Number of trainable parameters of an NNX module."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
