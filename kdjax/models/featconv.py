"""The feature encoder's strided convolutions with an optional matmul formulation of their backward pass.

A VALID conv of kernel K and stride s (K <= 2s, as every wav2vec 2.0 / HuBERT conv layer) reads, for output frame t,
block t (s frames) and the first K - s frames of block t + 1 of its input. Its weight gradient is then two matmuls
of those blocks with the output gradient, and its input gradient two matmuls of the output gradient with the kernel
taps, folded back into blocks. `IMPL = "matmul"` computes the backward pass so (the forward stays XLA's native conv);
"native" (the default) lets XLA differentiate its conv. Measured on a 2-core CPU, the matmul form was not faster
(docs/performance.md), so it stays an opt-in for re-measurement on other machines.

The forward pass can be traced as matmuls too (`forward("matmul")`, `conv_as_matmul`, `channel_norm`): kdjax.export
does so for int8 graphs, where onnxruntime's int8 matmuls are ~4x faster than its float convolutions.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.errors import ConfigError

IMPL = "native"  # "native" | "matmul" (module-level switch read at trace time; not part of EncoderConfig)
INT8_MIN_DEPTH = 64  # matmuls over fewer inputs (the first conv: kernel 10 x 1 channel) stay float in int8 graphs
FORWARD = "native"  # "native" | "matmul": the forward pass as a conv, or as matmuls for int8 runtimes (`forward`)


@contextlib.contextmanager
def forward(impl: str):
    """Trace the conv stack's forward pass as `impl` inside the block: "matmul" writes each conv as one matmul over
    frame blocks and the first layer's GroupNorm with matmul sums (what int8 runtimes run fast; kdjax.export uses it
    for int8 graphs), "native" as XLA's conv."""
    global FORWARD
    if impl not in ("native", "matmul"):
        raise ConfigError(f"kdjax.models.featconv.forward({impl!r}): expected 'native' or 'matmul'")
    before, FORWARD = FORWARD, impl
    try:
        yield
    finally:
        FORWARD = before


def _native(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (stride,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))


def _blocks(x: jax.Array, kernel: int, stride: int) -> tuple[jax.Array, int, int]:
    """Input [B, T, C] as blocks [B, nb, stride*C] (zero-padded at the end when needed), frames out, nb."""
    batch, frames, channels = x.shape
    out = (frames - kernel) // stride + 1
    nb = out + (1 if kernel > stride else 0)
    need = nb * stride
    if need > frames:  # zero frames appended by concatenation, not jnp.pad: the ONNX exporter cannot pad a tensor of
        x = jnp.concatenate([x, jnp.zeros_like(jax.lax.slice_in_dim(x, 0, need - frames, axis=1))], 1)  # symbolic
    else:  # shape; slices, not indexing, which would become a gather
        x = jax.lax.slice_in_dim(x, 0, need, axis=1)
    return x.reshape(batch, nb, stride * channels), out, nb


def conv_as_matmul(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """`_native(x, w, stride)` as one matmul: output frame t reads block t and the first K - s frames of block t + 1
    (a matmul is what int8 runtimes run fastest; their integer convolutions are slower than float ones)."""
    kernel, c_in, c_out = w.shape
    if kernel > 2 * stride:
        raise ConfigError(f"conv_as_matmul: a conv of kernel {kernel} > 2 x stride {stride} is not supported (the "
                          "matmul form of dynamic-int8 exports; export it with --quantize none or static-int8)")
    blk, out, _ = _blocks(x, kernel, stride)
    # Slices whose sizes are affine in the symbolic frame count: the exporters follow them once a tensor with that
    # frame axis exists (kdjax.models.encoder computes the frame mask before the conv stack for this).
    cols = jax.lax.slice_in_dim(blk, 0, out, axis=1)
    if kernel > stride:
        tail = jax.lax.slice_in_dim(jax.lax.slice_in_dim(blk, 1, out + 1, axis=1), 0, (kernel - stride) * c_in, axis=2)
        cols = jnp.concatenate([cols, tail], -1)
    elif kernel < stride:
        cols = jax.lax.slice_in_dim(cols, 0, kernel * c_in, axis=2)
    w = w.reshape(kernel * c_in, c_out)
    if kernel * c_in < INT8_MIN_DEPTH:  # the first layer: left in float by the quantizers, so no row scaling
        return cols @ w
    # Each row divided by its largest magnitude, the product scaled back: the same value, but a dynamic int8
    # quantizer's one range per tensor then fits every frame (unnormalised conv activations follow the signal's
    # loudness: frames of a silence quantized with the range of a loud vowel came out as zeros).
    scale = jnp.maximum(jnp.abs(cols).max(-1, keepdims=True), 1e-12)
    return ((cols * (1.0 / scale)) @ w) * scale


def channel_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """GroupNorm with one group per channel (each channel over time) on [B, T, C], its sums over time as matmuls with
    a ones row: onnxruntime reduces a [1, 3199, 512] tensor over its middle axis 10x slower, and its transpose
    optimiser moves a transpose put in front of the reduction back out of it. The affine parts fold into one
    multiply-add per element."""
    ones = jnp.swapaxes(jax.lax.slice_in_dim(x, 0, 1, axis=2) * 0 + 1, 1, 2)  # [B, 1, T], no constant of symbolic shape
    count = ones.sum(-1, keepdims=True)
    mean = (ones @ x) / count
    var = (ones @ jnp.square(x)) / count - jnp.square(mean)
    gain = jax.lax.rsqrt(jnp.maximum(var, 0.0) + epsilon) * scale
    return x * gain + (bias - mean * gain)


def conv_backward(x: jax.Array, w: jax.Array, dy: jax.Array, stride: int) -> tuple[jax.Array, jax.Array]:
    """(d input, d kernel) of `_native(x, w, stride)` for the output gradient dy, as matmuls over blocks."""
    kernel, c_in, c_out = w.shape
    if kernel > 2 * stride:
        raise ValueError(f"conv_backward: kernel {kernel} > 2 x stride {stride} is not supported")
    batch, frames, _ = x.shape
    blk, out, nb = _blocks(x, kernel, stride)
    head = min(kernel, stride)  # taps read from block t; the rest from block t + 1
    dy2 = dy.reshape(batch * out, c_out)
    dw = (blk[:, :out, :head * c_in].reshape(batch * out, head * c_in).T @ dy2).reshape(head, c_in, c_out)
    dblk = jnp.pad((dy2 @ w[:head].reshape(head * c_in, c_out).T).reshape(batch, out, head * c_in),
                   ((0, 0), (0, nb - out), (0, (stride - head) * c_in)))
    if kernel > stride:
        tail = kernel - stride
        dw_tail = blk[:, 1:, :tail * c_in].reshape(batch * out, tail * c_in).T @ dy2
        dw = jnp.concatenate([dw, dw_tail.reshape(tail, c_in, c_out)], 0)
        dtail = (dy2 @ w[stride:].reshape(tail * c_in, c_out).T).reshape(batch, out, tail * c_in)
        dblk = dblk + jnp.pad(dtail, ((0, 0), (1, 0), (0, (2 * stride - kernel) * c_in)))
    dx = dblk.reshape(batch, nb * stride, c_in)
    dx = dx[:, :frames] if nb * stride >= frames else jnp.pad(dx, ((0, 0), (0, frames - nb * stride), (0, 0)))
    return dx.astype(x.dtype), dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def strided_conv_mm(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """The native strided conv; its backward pass is `conv_backward`."""
    return _native(x, w, stride)


strided_conv_mm.defvjp(lambda x, w, stride: (_native(x, w, stride), (x, w)),
                       lambda stride, res, dy: conv_backward(res[0], res[1], dy, stride))


def apply(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a VALID, undilated nnx.Conv over [B, T, C], with the backward pass of `IMPL`."""
    if FORWARD == "matmul":
        y = conv_as_matmul(x, conv.kernel[...], int(conv.strides[0]))
        return y if conv.bias is None else y + conv.bias[...]
    if IMPL == "native":
        return conv(x)
    if IMPL != "matmul":
        raise ConfigError(f"kdjax.models.featconv.IMPL={IMPL!r}: expected 'native' or 'matmul'")
    dtype = conv.dtype or x.dtype
    y = strided_conv_mm(x.astype(dtype), conv.kernel[...].astype(dtype), int(conv.strides[0]))
    return y if conv.bias is None else y + conv.bias[...].astype(dtype)
