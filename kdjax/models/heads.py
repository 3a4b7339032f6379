"""Downstream heads on encoder hidden states: layer featurizer, KWS head, x-vector and ECAPA-TDNN heads, margin losses.

SV heads: `head(x, mask)` is the test embedding and `head.training_embedding(x, mask)` what the speaker loss sees
(the same for XVectorHead and ECAPAHead; SUPERBXVectorHead's differ, as s3prl's UtteranceExtractor).

Heads take plain arrays (hidden states [B, T, D] plus a frame mask [B, T], True on valid frames), so they work on any
encoder. Layout is channels-last throughout.

Padding: every head gives the same output for an utterance whatever padding follows it (in eval mode). Convolutions
see padded frames as zeros (invalid frames are zeroed before each conv), poolings average over valid frames only, and
BatchNorm in training mode takes its batch statistics over valid frames only (`mask=` of nnx.BatchNorm), so padding
changes neither the normalised values nor the running statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from kdjax.errors import ConfigError

_EPS = 1e-5


# ----------------------------------------------------------------------------------------------------- featurizer
@jax.tree_util.register_dataclass  # a pytree: it passes through jit like the array it holds
@dataclasses.dataclass(frozen=True)
class BatchMajor:
    """Hidden states stacked batch-major, [B, L, T, D] (the feature cache's layout). The Featurizer weighs them in
    place: moving them to [L, B, T, D] first costs a transposing copy (the demo teacher's cached SV step on 2 cores:
    56.6 ms with the copy, 48.5 ms without)."""

    array: jax.Array


def _stack(hidden_states: Sequence[jax.Array] | jax.Array) -> jax.Array:
    return hidden_states if isinstance(hidden_states, jax.Array) else jnp.stack(list(hidden_states), axis=0)


class Featurizer(nnx.Module):
    """SUPERB featurizer: softmax-weighted sum of all hidden states ("weighted_sum"), the last one ("last"), or the
    one at index N ("layer=N", as s3prl's --upstream_layer_selection; 0 is the input of the first layer).

    `layer_norm=True` normalises each hidden state over features (no affine) before the sum; SUPERB's runner leaves
    this off unless `--upstream_feature_normalize` is given, so the default is False.
    """

    def __init__(self, num_layers: int, *, mode: str = "weighted_sum", layer_norm: bool = False):
        self.layer = _selected_layer(mode, num_layers)
        self.num_layers, self.mode, self.layer_norm = num_layers, mode, layer_norm
        # Zeros -> uniform softmax at the start, as SUPERB.
        self.weights = nnx.Param(jnp.zeros((num_layers,), jnp.float32)) if mode == "weighted_sum" else None

    def __call__(self, hidden_states: Sequence[jax.Array] | jax.Array | BatchMajor) -> jax.Array:
        """[L, B, T, D] (stacked or a sequence of [B, T, D]) or BatchMajor([B, L, T, D]) -> [B, T, D]."""
        batch_major = isinstance(hidden_states, BatchMajor)
        hs = hidden_states.array if batch_major else _stack(hidden_states)
        axis = 1 if batch_major else 0
        if hs.shape[axis] != self.num_layers:
            raise ConfigError(f"Featurizer got {hs.shape[axis]} hidden states, expected num_layers={self.num_layers}")
        if self.mode == "last":
            return jnp.take(hs, -1, axis=axis)
        if self.layer is not None:
            return jnp.take(hs, self.layer, axis=axis)
        if self.layer_norm:
            mean = hs.mean(-1, keepdims=True)
            hs = (hs - mean) * jax.lax.rsqrt(jnp.square(hs - mean).mean(-1, keepdims=True) + _EPS)
        w = jax.nn.softmax(self.weights[...]).astype(hs.dtype)
        if batch_major:
            return jnp.einsum("l,bl...->b...", w, hs)
        # Layer-major: a broadcast multiply-and-sum, not einsum: XLA:CPU lowers this layout's einsum weight gradient
        # to a slow transposing dot (fwd+bwd of 9 x [32, 99, 256] on 2 cores: 40 ms as einsum, 16 ms as this).
        return (w.reshape((-1,) + (1,) * (hs.ndim - 1)) * hs).sum(0)


def _selected_layer(mode: str, num_layers: int) -> int | None:
    """N of a "layer=N" featurizer mode (checked against num_layers), None for the other modes."""
    if mode in ("weighted_sum", "last"):
        return None
    name, _, index = mode.partition("=")
    if name != "layer" or not index.strip().isdigit() or not 0 <= int(index) < num_layers:
        raise ConfigError(f"Featurizer mode={mode!r}: expected 'weighted_sum', 'last' or 'layer=N' with N in "
                          f"0..{num_layers - 1} (hidden states of the encoder)")
    return int(index)


# ----------------------------------------------------------------------------------------------------- pooling
def _fmask(mask: jax.Array, x: jax.Array) -> jax.Array:
    return mask.astype(x.dtype)[..., None]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of [B, T, D] over valid frames ([B, T] bool) -> [B, D]; zeros when no frame is valid."""
    m = _fmask(mask, x)
    x = jnp.where(m > 0, x, 0)  # where, not multiply: garbage (even NaN) in padding must not leak
    return x.sum(1) / jnp.maximum(m.sum(1), 1.0)


def statistics_pooling(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Concatenated mean and standard deviation over valid frames: [B, T, D] -> [B, 2D]."""
    x = jnp.where(mask[..., None], x, 0)  # first: NaN in padding would give NaN gradients through (x - mean)^2
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean[:, None]), mask)
    return jnp.concatenate([mean, jnp.sqrt(var + _EPS)], axis=-1)


def attentive_statistics_pooling(x: jax.Array, scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention-weighted mean and std over valid frames; scores [B, T, D] or [B, T, 1] are softmaxed over time."""
    # A finite floor, not -inf: a row without valid frames then softmaxes to uniform (later zeroed), not to NaN,
    # which would poison gradients even through the where below.
    scores = jnp.where(mask[..., None], scores, jnp.finfo(scores.dtype).min)
    w = jnp.where(mask[..., None], jax.nn.softmax(scores, axis=1), 0)
    x = jnp.where(mask[..., None], x, 0)
    mean = (w * x).sum(1)
    var = (w * jnp.square(x - mean[:, None])).sum(1)
    return jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, 0) + _EPS)], axis=-1)


# ----------------------------------------------------------------------------------------------------- KWS
class KWSHead(nnx.Module):
    """SUPERB keyword-spotting head: Linear -> hidden, mean over valid frames, Linear -> num_classes."""

    def __init__(self, input_dim: int, num_classes: int, *, hidden: int = 256, rngs: nnx.Rngs):
        self.projector = nnx.Linear(input_dim, hidden, rngs=rngs)
        self.classifier = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """[B, T, D] features, [B, T] mask -> [B, num_classes] logits."""
        return self.classifier(masked_mean(self.projector(x), mask))


# ----------------------------------------------------------------------------------------------------- x-vector
class TDNNLayer(nnx.Module):
    """Conv1d over time -> ReLU -> BatchNorm (Kaldi x-vector order), with masked batch statistics.

    `padding="VALID"` (x-vector) shrinks the sequence by (kernel-1)*dilation frames, and an output frame is valid only
    when its whole receptive field is; `"SAME"` (ECAPA) keeps the length and the mask. `batch_norm=False` drops the
    BatchNorm (s3prl's SUPERB x-vector: `batch_norm: False`).
    """

    def __init__(self, dim_in: int, dim_out: int, kernel: int, dilation: int = 1, *, padding: str = "VALID",
                 batch_norm: bool = True, rngs: nnx.Rngs):
        self.kernel, self.dilation, self.padding = kernel, dilation, padding
        self.conv = nnx.Conv(dim_in, dim_out, kernel_size=(kernel,), kernel_dilation=(dilation,), padding=padding,
                             rngs=rngs)
        self.norm = nnx.BatchNorm(dim_out, momentum=0.9, rngs=rngs) if batch_norm else None

    def output_mask(self, mask: jax.Array) -> jax.Array:
        """Valid output frames for valid input frames [B, T]."""
        if self.padding == "SAME":
            return mask
        span = (self.kernel - 1) * self.dilation
        t_out = mask.shape[1] - span
        # lax.slice, not indexing: with a symbolic length (export) indexing would become a gather.
        return jnp.stack([jax.lax.slice_in_dim(mask, j * self.dilation, j * self.dilation + t_out, axis=1)
                          for j in range(self.kernel)]).all(0)

    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """([B, T, Din], [B, T]) -> ([B, T', Dout], [B, T'])."""
        x = jnp.where(mask[..., None], x, 0)
        y = jax.nn.relu(self.conv(x))
        out_mask = self.output_mask(mask)
        return (y if self.norm is None else self.norm(y, mask=out_mask[..., None])), out_mask


class XVectorHead(nnx.Module):
    """SUPERB x-vector head: Linear -> 512, 5 TDNN layers, statistics pooling over valid frames, Linear -> embedding.

    With VALID convolutions the receptive field is 15 frames; an utterance shorter than that has no valid frame and
    pools to (0, sqrt(eps)) -- crop training clips to at least 15 frames (0.3 s at 20 ms per frame).
    """

    CONTEXT = (5, 3, 3, 1, 1)
    DILATION = (1, 2, 3, 1, 1)

    def __init__(self, input_dim: int, *, hidden: int = 512, widths: Sequence[int] = (512, 512, 512, 512, 1500),
                 embed_dim: int = 512, rngs: nnx.Rngs):
        self.projector = nnx.Linear(input_dim, hidden, rngs=rngs)
        dims = (hidden, *widths)
        self.tdnn = nnx.List([TDNNLayer(dims[i], dims[i + 1], k, d, rngs=rngs)
                              for i, (k, d) in enumerate(zip(self.CONTEXT, self.DILATION))])
        self.embedding = nnx.Linear(2 * widths[-1], embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """[B, T, D] features, [B, T] mask -> [B, embed_dim] embeddings."""
        x = self.projector(x)
        for layer in self.tdnn:
            x, mask = layer(x, mask)
        return self.embedding(statistics_pooling(x, mask))

    def training_embedding(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """What the speaker loss sees: the same embedding as at test time for this head."""
        return self(x, mask)


def unbiased_statistics_pooling(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean and Bessel-corrected standard deviation (torch.std) over valid frames: [B, T, D] -> [B, 2D]."""
    x = jnp.where(mask[..., None], x, 0)
    count = mask.astype(x.dtype).sum(1)[:, None]
    mean = x.sum(1) / jnp.maximum(count, 1.0)
    sq = jnp.where(mask[..., None], jnp.square(x - mean[:, None]), 0).sum(1)
    return jnp.concatenate([mean, jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0) + 1e-12)], axis=-1)


class SUPERBXVectorHead(nnx.Module):
    """s3prl's SUPERB ASV model (sv_voxceleb1 configs/amsoftmax.yaml): x-vector without BatchNorm, two-layer block.

    connector Linear(input_dim -> 512), 5 TDNN layers (context 5/3/3/1/1, dilation 1/2/3/1/1, widths 512 x 4 and
    1500, ReLU, no BatchNorm, no dropout), statistics pooling (mean and torch.std over valid frames -> 3000), then
    s3prl's UtteranceExtractor: training output ReLU(Linear2(ReLU(Linear1 3000->512))) 512->512, test embedding
    ReLU(Linear1) (`__call__`). s3prl counts one padded frame into each padded row's pooling (its mask arithmetic);
    here pooling covers valid frames only.
    """

    CONTEXT = XVectorHead.CONTEXT
    DILATION = XVectorHead.DILATION

    def __init__(self, input_dim: int, *, hidden: int = 512, agg_dim: int = 1500, rngs: nnx.Rngs):
        self.projector = nnx.Linear(input_dim, hidden, rngs=rngs)
        dims = (hidden,) * 5 + (agg_dim,)
        self.tdnn = nnx.List([TDNNLayer(dims[i], dims[i + 1], k, d, batch_norm=False, rngs=rngs)
                              for i, (k, d) in enumerate(zip(self.CONTEXT, self.DILATION))])
        self.linear1 = nnx.Linear(2 * agg_dim, hidden, rngs=rngs)
        self.linear2 = nnx.Linear(hidden, hidden, rngs=rngs)

    def _pooled(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.projector(x)
        for layer in self.tdnn:
            x, mask = layer(x, mask)
        return unbiased_statistics_pooling(x, mask)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """The test embedding ReLU(Linear1(pooled)) [B, hidden] (s3prl UtteranceExtractor.inference)."""
        return jax.nn.relu(self.linear1(self._pooled(x, mask)))

    def training_embedding(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """What AM-softmax sees in training: ReLU(Linear2(ReLU(Linear1(pooled)))) (UtteranceExtractor.forward)."""
        return jax.nn.relu(self.linear2(self(x, mask)))


# ----------------------------------------------------------------------------------------------------- ECAPA-TDNN
class SEBlock(nnx.Module):
    """Squeeze-excitation over time: masked mean -> bottleneck -> sigmoid gate on channels."""

    def __init__(self, channels: int, bottleneck: int = 128, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(channels, bottleneck, rngs=rngs)
        self.fc2 = nnx.Linear(bottleneck, channels, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        gate = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(masked_mean(x, mask)))))
        return x * gate[:, None]


class SERes2Block(nnx.Module):
    """ECAPA SE-Res2 block: 1x1 TDNN, Res2Net dilated convs over `scale` channel groups, 1x1 TDNN, SE, residual."""

    def __init__(self, channels: int, kernel: int, dilation: int, *, scale: int = 8, se_bottleneck: int = 128,
                 rngs: nnx.Rngs):
        if channels % scale:
            raise ConfigError(f"ECAPA channels={channels} must be divisible by res2net scale={scale}")
        width = channels // scale
        self.scale = scale
        self.tdnn1 = TDNNLayer(channels, channels, 1, padding="SAME", rngs=rngs)
        self.res2 = nnx.List([TDNNLayer(width, width, kernel, dilation, padding="SAME", rngs=rngs)
                              for _ in range(scale - 1)])
        self.tdnn2 = TDNNLayer(channels, channels, 1, padding="SAME", rngs=rngs)
        self.se = SEBlock(channels, se_bottleneck, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h, _ = self.tdnn1(x, mask)
        chunks = jnp.split(h, self.scale, axis=-1)
        outs, y = [chunks[0]], None
        for chunk, conv in zip(chunks[1:], self.res2):
            y, _ = conv(chunk if y is None else chunk + y, mask)
            outs.append(y)
        h, _ = self.tdnn2(jnp.concatenate(outs, axis=-1), mask)
        return self.se(h, mask) + x


class AttentiveStatsPool(nnx.Module):
    """Channel- and context-dependent attentive statistics pooling (ECAPA), masked to valid frames."""

    def __init__(self, channels: int, attention_channels: int = 128, *, rngs: nnx.Rngs):
        self.tdnn = TDNNLayer(3 * channels, attention_channels, 1, padding="SAME", rngs=rngs)
        self.score = nnx.Linear(attention_channels, channels, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """[B, T, C], [B, T] -> [B, 2C]."""
        stats = statistics_pooling(x, mask)  # global context: utterance mean and std appended to every frame
        ctx = jnp.broadcast_to(stats[:, None], (*x.shape[:2], stats.shape[-1]))
        h, _ = self.tdnn(jnp.concatenate([x, ctx], axis=-1), mask)
        return attentive_statistics_pooling(x, self.score(jnp.tanh(h)), mask)


class ECAPAHead(nnx.Module):
    """ECAPA-TDNN speaker head (Desplanques et al. 2020) on encoder features -> [B, embed_dim] embeddings.

    Convolutions use zero "SAME" padding (SpeechBrain pads by reflection); zeros keep padded batches exact.
    """

    def __init__(self, input_dim: int, *, channels: int = 512, embed_dim: int = 192, mfa_channels: int | None = None,
                 scale: int = 8, attention_channels: int = 128, rngs: nnx.Rngs):
        mfa = mfa_channels or 3 * channels
        self.stem = TDNNLayer(input_dim, channels, 5, padding="SAME", rngs=rngs)
        self.blocks = nnx.List([SERes2Block(channels, 3, d, scale=scale, rngs=rngs) for d in (2, 3, 4)])
        self.mfa = TDNNLayer(3 * channels, mfa, 1, padding="SAME", rngs=rngs)
        self.pool = AttentiveStatsPool(mfa, attention_channels, rngs=rngs)
        self.pool_norm = nnx.BatchNorm(2 * mfa, momentum=0.9, rngs=rngs)
        self.embedding = nnx.Linear(2 * mfa, embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """[B, T, D] features, [B, T] mask -> [B, embed_dim] embeddings."""
        x, _ = self.stem(x, mask)
        outs = []
        for block in self.blocks:
            x = block(x, mask)
            outs.append(x)
        x, _ = self.mfa(jnp.concatenate(outs, axis=-1), mask)
        return self.embedding(self.pool_norm(self.pool(x, mask)))

    def training_embedding(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """What the speaker loss sees: the same embedding as at test time for this head."""
        return self(x, mask)


# ----------------------------------------------------------------------------------------------------- losses
def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy with integer labels (optionally weighted per example, e.g. to skip padding)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    if weights is None:
        return losses.mean()
    weights = weights.astype(losses.dtype)
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def cosine_logits(embeddings: jax.Array, class_weights: jax.Array) -> jax.Array:
    """Cosine between L2-normalised embeddings [B, D] and class vectors (columns of [D, C]) -> [B, C]."""
    e = embeddings * jax.lax.rsqrt(jnp.sum(jnp.square(embeddings), -1, keepdims=True) + 1e-12)
    w = class_weights * jax.lax.rsqrt(jnp.sum(jnp.square(class_weights), 0, keepdims=True) + 1e-12)
    return e @ w


def am_softmax_logits(cosine: jax.Array, labels: jax.Array, scale: float = 30.0, margin: float = 0.4) -> jax.Array:
    """Additive-margin softmax logits: s * (cos - m) on the target class, s * cos elsewhere."""
    onehot = jax.nn.one_hot(labels, cosine.shape[-1], dtype=cosine.dtype)
    return scale * (cosine - margin * onehot)


def aam_softmax_logits(cosine: jax.Array, labels: jax.Array, scale: float = 30.0, margin: float = 0.2,
                       easy_margin: bool = False) -> jax.Array:
    """Additive angular margin (ArcFace) logits: s * cos(theta + m) on the target class, s * cos elsewhere.

    Past theta = pi - m, cos(theta + m) stops decreasing; as ArcFace/SpeechBrain, use cos - m*sin(m) there instead
    (or, with easy_margin, apply the margin only where cos > 0).
    """
    cosine = jnp.clip(cosine, -1.0, 1.0)
    sine = jnp.sqrt(jnp.clip(1.0 - jnp.square(cosine), 1e-7, 1.0))  # floor keeps the gradient finite at |cos| = 1
    phi = cosine * jnp.cos(margin) - sine * jnp.sin(margin)
    if easy_margin:
        phi = jnp.where(cosine > 0, phi, cosine)
    else:
        phi = jnp.where(cosine > jnp.cos(jnp.pi - margin), phi, cosine - jnp.sin(jnp.pi - margin) * margin)
    onehot = jax.nn.one_hot(labels, cosine.shape[-1], dtype=bool)
    return scale * jnp.where(onehot, phi, cosine)


class MarginSoftmax(nnx.Module):
    """Speaker classifier with a margin loss: `kind` "am" (s=30, m=0.4 default) or "aam" (s=30, m=0.2 default)."""

    def __init__(self, embed_dim: int, num_classes: int, *, kind: str = "aam", scale: float = 30.0,
                 margin: float | None = None, rngs: nnx.Rngs):
        if kind not in ("am", "aam"):
            raise ConfigError(f"margin loss kind={kind!r}: expected 'am' or 'aam'")
        self.kind, self.scale = kind, scale
        self.margin = margin if margin is not None else (0.4 if kind == "am" else 0.2)
        self.weight = nnx.Param(nnx.initializers.xavier_normal()(rngs.params(), (embed_dim, num_classes)))

    def __call__(self, embeddings: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(loss, margin-free cosine logits scaled by s, for accuracy) for embeddings [B, D] and labels [B]."""
        cos = cosine_logits(embeddings.astype(jnp.float32), self.weight[...])
        fn = am_softmax_logits if self.kind == "am" else aam_softmax_logits
        logits = fn(cos, labels, self.scale, self.margin)
        return cross_entropy(logits, labels), self.scale * cos
