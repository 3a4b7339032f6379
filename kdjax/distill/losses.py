"""Distillation heads and losses: DistilHuBERT layer prediction and FitHuBERT-style layer-to-layer hints.

Prediction heads (mode "prediction") follow s3prl's DistilHuBERT (`upstream/distiller/model.py`, out_layer_type and
task_emb_type "expand-last") exactly: the LAST student layer goes through Linear(D_s, D_i * N) -> GELU (exact, erf) ->
a split linear (N independent Linear(D_i, D_t), one per target) -> N predictions. D_i = D_s by default. All head
weights and biases start uniform in +-1/sqrt(fan_in) (PyTorch's nn.Linear default and s3prl's SplitLinear init).

Hints (mode "hint"): student layer student_layers[k] (0 = the input to layer 1) predicts teacher layer
target_layers[k] through its own Linear(D_s, D_t).

Loss per target layer (s3prl `pretrain_expert.compute_loss`, loss_type l1, cosine_loss lambda):
    l1  = mean over frames and dims of |pred - target|
    cos = mean over frames of -log sigmoid(cos_sim(pred, target))
    total = reduce over layers of (l1 + lambda * cos)
s3prl averages over every element of the [B, N, T, D] tensor, which is the MEAN over target layers
(layer_reduction="mean", the default); the paper writes a sum over layers (layer_reduction="sum", N times larger).
Padded frames (frame_mask False) are excluded by default; `include_padding=True` averages over all frames, which is
s3prl's formula exactly (it does not mask padding).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder, EncoderOutput

MODES = ("prediction", "hint")
COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What to distil and how to weigh it (config.distill.loss)."""

    mode: str = "prediction"
    target_layers: tuple[int, ...] = (4, 8, 12)
    student_layers: tuple[int, ...] = ()  # mode "hint": the student layer that predicts each target layer
    cos_weight: float = 1.0
    include_padding: bool = False
    layer_reduction: str = "mean"  # "mean" (s3prl's code) | "sum" (the paper's formula)
    head_inter_dim: int = 0  # prediction heads' inner width; 0 = the student's hidden_size (s3prl)

    def __post_init__(self):
        object.__setattr__(self, "target_layers", tuple(int(i) for i in self.target_layers))
        object.__setattr__(self, "student_layers", tuple(int(i) for i in self.student_layers))

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any] | None, where: str = "config.distill.loss") -> "LossConfig":
        """From a ConfigDict/dict; unknown fields raise ConfigError naming them."""
        fields = dict(fields or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**fields)

    def validate(self, student: EncoderConfig, teacher: EncoderConfig, where: str = "config.distill.loss") -> None:
        """Raise ConfigError naming the field that does not fit the student and teacher."""
        if self.mode not in MODES:
            raise ConfigError(f"{where}.mode={self.mode!r}: expected one of {MODES}")
        if self.layer_reduction not in ("mean", "sum"):
            raise ConfigError(f"{where}.layer_reduction={self.layer_reduction!r}: expected 'mean' or 'sum'")
        if not self.target_layers:
            raise ConfigError(f"{where}.target_layers is empty: name at least one teacher layer")
        for j in self.target_layers:
            if not 0 <= j <= teacher.num_hidden_layers:
                raise ConfigError(f"{where}.target_layers has {j}: the teacher has layers 0..{teacher.num_hidden_layers}"
                                  " (0 = the input to layer 1)")
        if self.cos_weight < 0:
            raise ConfigError(f"{where}.cos_weight={self.cos_weight} must be >= 0")
        if self.head_inter_dim < 0:
            raise ConfigError(f"{where}.head_inter_dim={self.head_inter_dim} must be >= 0")
        if self.mode == "hint":
            if len(self.student_layers) != len(self.target_layers):
                raise ConfigError(f"{where}.student_layers={self.student_layers} must pair one to one with "
                                  f"target_layers={self.target_layers} in mode 'hint'")
            for i in self.student_layers:
                if not 0 <= i <= student.num_hidden_layers:
                    raise ConfigError(f"{where}.student_layers has {i}: the student has layers "
                                      f"0..{student.num_hidden_layers}")
        elif self.student_layers:
            raise ConfigError(f"{where}.student_layers={self.student_layers} is only used with mode='hint'")


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class PredictionHeads(nnx.Module):
    """DistilHuBERT's heads: Linear(D_s, D_i*N) -> GELU -> N split Linear(D_i, D_t); output [N, B, T, D_t]."""

    def __init__(self, in_dim: int, out_dim: int, num_targets: int, inter_dim: int = 0, *, rngs: nnx.Rngs):
        inter = inter_dim or in_dim
        self.num_targets, self.inter_dim = num_targets, inter
        self.expand = nnx.Linear(in_dim, inter * num_targets, kernel_init=_uniform(in_dim ** -0.5),
                                 bias_init=_uniform(in_dim ** -0.5), rngs=rngs)
        self.split_kernel = nnx.Param(_uniform(inter ** -0.5)(rngs.params(), (num_targets, inter, out_dim)))
        self.split_bias = nnx.Param(_uniform(inter ** -0.5)(rngs.params(), (num_targets, out_dim)))

    def __call__(self, out: EncoderOutput) -> jax.Array:
        h = out.last_hidden_state
        b, t, _ = h.shape
        x = jax.nn.gelu(self.expand(h), approximate=False).reshape(b, t, self.num_targets, self.inter_dim)
        kernel = self.split_kernel[...].astype(x.dtype)
        return jnp.einsum("btni,nio->nbto", x, kernel) + self.split_bias[...].astype(x.dtype)[:, None, None, :]


class HintProjections(nnx.Module):
    """One Linear(D_s, D_t) per (student layer, teacher layer) pair; output [N, B, T, D_t]."""

    def __init__(self, in_dim: int, out_dim: int, student_layers: Sequence[int], *, rngs: nnx.Rngs):
        self.student_layers = tuple(student_layers)
        n = len(self.student_layers)
        self.kernel = nnx.Param(_uniform(in_dim ** -0.5)(rngs.params(), (n, in_dim, out_dim)))
        self.bias = nnx.Param(_uniform(in_dim ** -0.5)(rngs.params(), (n, out_dim)))

    def __call__(self, out: EncoderOutput) -> jax.Array:
        if out.hidden_states is None:
            raise ConfigError("hint distillation needs the student's hidden states (output_hidden_states=True)")
        h = jnp.stack([out.hidden_states[i] for i in self.student_layers])  # [N, B, T, D_s]
        return jnp.einsum("nbti,nio->nbto", h, self.kernel[...].astype(h.dtype)) \
            + self.bias[...].astype(h.dtype)[:, None, None, :]


def make_heads(cfg: LossConfig, student: EncoderConfig, teacher: EncoderConfig, *, rngs: nnx.Rngs,
               where: str = "config.distill.loss") -> nnx.Module:
    """The heads of `cfg.mode` from the student's width to the teacher's (call cfg.validate once before)."""
    if cfg.mode == "prediction":
        return PredictionHeads(student.hidden_size, teacher.hidden_size, len(cfg.target_layers), cfg.head_inter_dim,
                               rngs=rngs)
    return HintProjections(student.hidden_size, teacher.hidden_size, cfg.student_layers, rngs=rngs)


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = COS_EPS) -> jax.Array:
    """torch.nn.functional.cosine_similarity over the last axis."""
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return jnp.sum(a * b, axis=-1) / (na * nb)


def layer_losses(pred: jax.Array, target: jax.Array, frame_mask: jax.Array | None = None, *,
                 include_padding: bool = False) -> tuple[jax.Array, jax.Array]:
    """(L1 [N], -log sigmoid(cos) [N]) per target layer for pred/target [N, B, T, D] (float32 math)."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    l1 = jnp.mean(jnp.abs(pred - target), axis=-1)  # [N, B, T]
    cos = -jax.nn.log_sigmoid(cosine_similarity(pred, target))  # [N, B, T]
    if include_padding or frame_mask is None:
        return jnp.mean(l1, axis=(1, 2)), jnp.mean(cos, axis=(1, 2))
    w = frame_mask.astype(jnp.float32)
    w = w / jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum(l1 * w, axis=(1, 2)), jnp.sum(cos * w, axis=(1, 2))


def combine(l1: jax.Array, cos: jax.Array, cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and metrics {loss, l1/l<j>, cos/l<j>} from per-layer losses."""
    per_layer = l1 + cfg.cos_weight * cos
    total = jnp.mean(per_layer) if cfg.layer_reduction == "mean" else jnp.sum(per_layer)
    metrics = {"loss": total}
    for k, j in enumerate(cfg.target_layers):
        metrics[f"l1/l{j}"] = l1[k]
        metrics[f"cos/l{j}"] = cos[k]
    return total, metrics


def teacher_targets(teacher: Encoder, input_values: jax.Array, attention_mask: jax.Array | None,
                    target_layers: Sequence[int]) -> jax.Array:
    """The teacher's hidden states of `target_layers`, stacked [N, B, T, D] float32, without gradient.

    Only the layers up to the deepest target are computed; the teacher runs deterministically (no dropout).
    """
    out = teacher(input_values, attention_mask, output_hidden_states=True, deterministic=True,
                  num_layers=max(target_layers))
    return jax.lax.stop_gradient(jnp.stack([out.hidden_states[j].astype(jnp.float32) for j in target_layers]))


def score_student(heads: nnx.Module, out: EncoderOutput, teacher_hidden: jax.Array, cfg: LossConfig,
                  frame_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Score the heads' predictions from the student output `out` against teacher_hidden [N, B, T, D].

    frame_mask [B, T] (None: every frame counts). Returns (loss, metrics).
    """
    pred = heads(out)
    if pred.shape != teacher_hidden.shape:
        raise ConfigError(f"student predictions {pred.shape} and teacher targets {teacher_hidden.shape} differ: "
                          "student and teacher must share the conv stack geometry")
    l1, cos = layer_losses(pred, teacher_hidden, frame_mask, include_padding=cfg.include_padding)
    return combine(l1, cos, cfg)


def distill_loss(student: Encoder, heads: nnx.Module, teacher_hidden: jax.Array, batch: Mapping[str, jax.Array],
                 cfg: LossConfig, *, rng: jax.Array | None = None,
                 deterministic: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Run the student on batch["input_values"] / ["attention_mask"] and score its heads against teacher_hidden.

    teacher_hidden: [N, B, T, D] (see teacher_targets). Returns (loss, metrics).
    """
    mask = batch.get("attention_mask")
    out = student(batch["input_values"], mask, output_hidden_states=cfg.mode == "hint",
                  deterministic=deterministic, rng=rng)
    return score_student(heads, out, teacher_hidden, cfg, None if mask is None else out.frame_mask)
