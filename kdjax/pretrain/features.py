"""MFCC features (13 + deltas + delta-deltas) on encoder-aligned frames: the targets of HuBERT iteration 1.

Frames use the encoder's own geometry (25 ms windows every 20 ms at 16 kHz for the base conv stack), so there is
exactly one target per encoder frame and no label-rate resampling. Everything is jnp, so targets are computed inside
the jitted training step from the (randomly cropped) batch itself.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.data.audio import SAMPLE_RATE


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, low_hz: float = 20.0) -> np.ndarray:
    """Triangular HTK-mel filters, [n_fft // 2 + 1, n_mels]."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(low_hz), _hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (center - lower)
    falling = (upper - bins[None, :]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis, [n_in, n_out]."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def deltas(x: jax.Array, width: int = 2) -> jax.Array:
    """Regression deltas over time (axis -2), edges repeated: sum_n n (x[t+n] - x[t-n]) / (2 sum_n n^2)."""
    frames = x.shape[-2]
    padded = jnp.concatenate([jnp.repeat(x[..., :1, :], width, -2), x, jnp.repeat(x[..., -1:, :], width, -2)], -2)
    num = sum(n * (padded[..., width + n:width + n + frames, :] - padded[..., width - n:width - n + frames, :])
              for n in range(1, width + 1))
    return num / (2 * sum(n * n for n in range(1, width + 1)))


def mfcc(audio: jax.Array, *, sample_rate: int = SAMPLE_RATE, window: int = 400, hop: int = 320, n_fft: int = 512,
         n_mels: int = 40, n_mfcc: int = 13, with_deltas: bool = True) -> jax.Array:
    """MFCCs of [B, S] audio on frames of `window` samples every `hop`: [B, T, 39] (or [B, T, 13])."""
    samples = audio.shape[-1]
    num_frames = (samples - window) // hop + 1
    index = np.arange(num_frames)[:, None] * hop + np.arange(window)[None, :]
    frames = audio[..., index].astype(jnp.float32)
    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)  # remove DC per frame
    frames = jnp.concatenate([frames[..., :1], frames[..., 1:] - 0.97 * frames[..., :-1]], -1)  # pre-emphasis
    frames = frames * jnp.asarray(np.hamming(window).astype(np.float32))
    power = jnp.abs(jnp.fft.rfft(frames, n=n_fft)) ** 2
    log_mel = jnp.log(jnp.maximum(power @ mel_filterbank(sample_rate, n_fft, n_mels), 1e-10))
    coeffs = log_mel @ dct_matrix(n_mels, n_mfcc)
    if not with_deltas:
        return coeffs
    d1 = deltas(coeffs)
    return jnp.concatenate([coeffs, d1, deltas(d1)], axis=-1)
