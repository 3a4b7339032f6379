"""The pure functions that get exported: audio [B, S] + attention mask [B, S] -> hidden states, KWS logits or an SV
embedding, with a symbolic batch and a symbolic length of a whole number of frame strides.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import export as jax_export

from kdjax.errors import ConfigError
from kdjax.models.encoder import Encoder

TASKS = ("encoder", "kws", "sv")
INPUT_NAMES = ("audio", "attention_mask")
OUTPUT_NAMES = {"encoder": "hidden_states", "kws": "logits", "sv": "embedding"}


@dataclasses.dataclass(frozen=True)
class Graph:
    """A function of (audio float32 [B, S], attention_mask int32 [B, S]) and the symbolic input specs it exports at."""

    fn: Callable[[jax.Array, jax.Array], jax.Array]
    specs: tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]
    output_name: str
    length_multiple: int  # S must be a multiple of this (the conv stack's total stride), and >= min_length
    min_length: int


def check_exportable(encoder: Encoder) -> None:
    """Raise ConfigError naming the setting that cannot be exported."""
    cfg = encoder.config
    if cfg.dtype != "float32":
        raise ConfigError(f"export: EncoderConfig.dtype={cfg.dtype!r} is not supported: expected 'float32' "
                          "(quantize with --quantize instead)")
    for act in {cfg.hidden_act, cfg.feat_extract_activation}:
        if act not in ("gelu", "gelu_new", "relu"):
            raise ConfigError(f"export: activation {act!r} (hidden_act / feat_extract_activation) is not supported "
                              "by the exporters: expected 'gelu', 'gelu_new' or 'relu'")


def _prepare(encoder: Encoder) -> Encoder:
    """The encoder in inference form: native conv for the positional embedding, layers unrolled, no remat."""
    check_exportable(encoder)
    graphdef, state = nnx.split(encoder)
    model = nnx.merge(graphdef, state)
    model.config = encoder.config.replace(pos_conv_impl="conv", scan_layers=False, remat=False)
    model.pos_conv.impl = "conv"
    # Fold the weight norm: the graph then holds the conv weight as a constant that int8 quantizers can quantize.
    weight = model.pos_conv.weight()
    object.__setattr__(model.pos_conv, "weight", lambda: weight)
    return model


def layer_indices(encoder: Encoder, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Validated hidden-state indices (0 = the transformer's input, i = layer i's output); None = all."""
    n = encoder.config.num_hidden_layers
    if layers is None:
        return tuple(range(n + 1))
    bad = [i for i in layers if not 0 <= int(i) <= n]
    if bad or not layers:
        raise ConfigError(f"export: --layers {list(layers)} is invalid: expected indices in 0..{n} "
                          f"(0 = the transformer's input, {n} = the last layer)")
    return tuple(int(i) for i in layers)


def build(encoder: Encoder, task: str = "encoder", *, kws=None, sv=None,
          layers: Sequence[int] | None = None, fixed_shape: tuple[int, int] | None = None) -> Graph:
    """The graph of `task`: "encoder" (stacked hidden states [L, B, T, H] of `layers`), "kws" or "sv"; dynamic batch
    and length unless `fixed_shape` = (batch, samples) (LiteRT runs a fixed-shape graph ~15x faster on CPU)."""
    if task not in TASKS:
        raise ConfigError(f"export: --task {task!r} is invalid: expected one of {TASKS}")
    model = _prepare(encoder)
    cfg = model.config
    if task == "kws" and kws is None:
        raise ConfigError("export: --task kws needs a source with a KWS head (a kdjax fine-tuning run of mode kws or "
                          "multitask); an HF folder holds only the encoder")
    if task == "sv" and sv is None:
        raise ConfigError("export: --task sv needs a source with an SV head (a kdjax fine-tuning run of mode sv or "
                          "multitask); an HF folder holds only the encoder")
    head = {"kws": kws, "sv": sv}.get(task)
    if head is not None:
        head = nnx.merge(*nnx.split(head))
        head.eval()
    picked = layer_indices(model, layers) if task == "encoder" else None
    # Layers past the last one needed are not computed (the stable-LN final norm then only applies to the full stack).
    needed = max(picked) if picked is not None else cfg.num_hidden_layers

    def fn(audio, attention_mask):
        out = model(audio, attention_mask, output_hidden_states=True, num_layers=needed)
        if task == "encoder":
            return jnp.stack([out.hidden_states[i] for i in picked], axis=0)
        if task == "kws":
            return head(out.hidden_states, out.frame_mask)
        return head.embed(out.hidden_states, out.frame_mask)

    stride, field = cfg.frame_stride, cfg.receptive_field
    # The symbol is the number of frames: samples = stride * (frames + lead - 1) gives exactly `frames` frames, and
    # naming the frame axis (not the sample count) lets jax2onnx recover every frame-axis size from a tensor's shape.
    lead = -(-field // stride)
    min_frames = _head_frames(head if task == "sv" else None)  # x-vector's VALID TDNNs need 15 frames
    batch, frames = jax_export.symbolic_shape("batch, frames", constraints=(f"frames >= {min_frames}",))
    samples = stride * (frames + lead - 1)
    specs = (jax.ShapeDtypeStruct((batch, samples), jnp.float32),
             jax.ShapeDtypeStruct((batch, samples), jnp.int32))
    min_units = min_frames + lead - 1
    if fixed_shape is not None:
        fixed_batch, fixed_samples = (int(v) for v in fixed_shape)
        if fixed_batch < 1 or fixed_samples < stride * min_units:
            raise ConfigError(f"export: --fixed-shape {fixed_batch}x{fixed_samples} is invalid: expected batch >= 1 "
                              f"and at least {stride * min_units} samples")
        specs = (jax.ShapeDtypeStruct((fixed_batch, fixed_samples), jnp.float32),
                 jax.ShapeDtypeStruct((fixed_batch, fixed_samples), jnp.int32))
        return Graph(fn, specs, OUTPUT_NAMES[task], 1, fixed_samples)
    return Graph(fn, specs, OUTPUT_NAMES[task], stride, stride * min_units)


def _head_frames(sv_head) -> int:
    """Frames an SV head needs for one valid output frame (1 unless its TDNNs are VALID convolutions)."""
    tdnn = getattr(getattr(sv_head, "head", None), "tdnn", None)
    if tdnn is None:
        return 1
    return 1 + sum((layer.kernel - 1) * layer.dilation for layer in tdnn if layer.padding == "VALID")


def pad_to_multiple(audio, attention_mask, multiple: int):
    """Right-pad numpy audio [B, S] and its mask to a multiple of `multiple` samples (what the graph accepts)."""
    import numpy as np

    extra = (-audio.shape[1]) % multiple
    if extra:
        audio = np.pad(audio, ((0, 0), (0, extra)))
        attention_mask = np.pad(attention_mask, ((0, 0), (0, extra)))
    return audio.astype(np.float32), attention_mask.astype(np.int32)
