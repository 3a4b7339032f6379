"""Audio decoding, validation and transforms shared by the builders and the pipeline.

Every problem with a clip raises `AudioError` naming the file and the problem, so that a builder can either fail at
prepare time or (with skip_bad_examples) skip the clip and count it under `AudioError.reason`.
"""
from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf
import soxr

from kdjax.errors import AudioError, DatasetError

SAMPLE_RATE = 16_000
MIN_SAMPLES = 400  # receptive field of the wav2vec2 feature encoder at 16 kHz (one 25 ms frame)
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 4_000, 192_000  # soxr handles these; outside is a broken header or not speech


def _error(name: str, reason: str, detail: str) -> AudioError:
    """An AudioError whose message names the file; `reason` is the short key used in skip counts."""
    err = AudioError(f"{name}: {detail}")
    err.reason = reason
    return err


def decode(source: str | os.PathLike | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode a wav/flac file (path or bytes) to float32 [time, channels] and its sample rate."""
    name = name or str(source if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        if not source:
            raise _error(name, "empty_file", "file is empty (0 bytes)")
        fobj = io.BytesIO(source)
    else:
        if not os.path.exists(source):
            raise _error(name, "missing_file", "file does not exist")
        if os.path.getsize(source) == 0:
            raise _error(name, "empty_file", "file is empty (0 bytes)")
        fobj = source
    _check_wav_length(source, name)
    try:
        data, rate = sf.read(fobj, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError for broken headers
        raise _error(name, "corrupt_file", f"cannot decode audio ({type(e).__name__}: {e})") from e
    return data, int(rate)


def _check_wav_length(source: str | os.PathLike | bytes, name: str) -> None:
    """A truncated WAV decodes without error in libsndfile (it trusts the file size); compare with the header."""
    if isinstance(source, bytes):
        head, size = source[:4096], len(source)
    else:
        with open(source, "rb") as f:
            head = f.read(4096)
        size = os.path.getsize(source)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"data":
            if length != 0xFFFFFFFF and pos + 8 + length > size:  # 0xFFFFFFFF: streamed, length unknown
                raise _error(name, "truncated_file", f"WAV data chunk declares {length} bytes but the file ends "
                                                     f"after {size - pos - 8} (truncated)")
            return
        pos += 8 + length + (length & 1)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Down-mix [time, channels] (or [time]) to mono float32 [time] by averaging channels."""
    data = np.asarray(data, dtype=np.float32)
    return data.mean(axis=1) if data.ndim == 2 else data


def resample(x: np.ndarray, rate: int, name: str = "<array>", target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float audio from `rate` to `target` Hz with soxr (high quality)."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise _error(name, "bad_sample_rate",
                     f"sample rate {rate} Hz cannot be handled (expected {MIN_SOURCE_RATE}..{MAX_SOURCE_RATE} Hz)")
    if rate == target:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x.astype(np.float32, copy=False), rate, target, quality="HQ").astype(np.float32)


def check(x: np.ndarray, name: str = "<array>", min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Validate mono audio: non-empty, finite and at least `min_samples` long; returns it unchanged."""
    if x.size == 0:
        raise _error(name, "empty_audio", "audio has no samples")
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise _error(name, "non_finite", f"audio has {bad} NaN/inf samples")
    if x.shape[0] < min_samples:
        raise _error(name, "too_short", f"clip has {x.shape[0]} samples at 16 kHz, shorter than the encoder's "
                                        f"receptive field ({min_samples} samples)")
    return x


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16 (clipped), the storage format of every kdjax dataset."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def prepare_clip(data: np.ndarray, rate: int, name: str = "<array>") -> np.ndarray:
    """Any decoded or synthesised audio -> validated mono int16 at 16 kHz (the builders' one entry point)."""
    x = to_mono(data)
    if x.size and not np.all(np.isfinite(x)):  # check before resampling spreads NaNs
        check(x, name)
    x = resample(x, rate, name)
    return to_int16(check(x, name))


def load_clip(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Decode, down-mix, resample and validate a file into int16 16 kHz mono."""
    name = name or str(source)
    data, rate = decode(source, name)
    return prepare_clip(data, rate, name)


def normalize(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Zero-mean unit-variance over valid samples, as HF's Wav2Vec2FeatureExtractor(do_normalize=True)."""
    x = x.astype(np.float32, copy=False)
    valid = x if mask is None else x[mask.astype(bool)]
    if valid.size == 0:
        return np.zeros_like(x)
    out = (x - valid.mean()) / np.sqrt(valid.var() + 1e-7)
    if mask is not None:
        out = np.where(mask.astype(bool), out, 0.0).astype(np.float32)
    return out.astype(np.float32)


def crop_or_pad(x: np.ndarray, max_samples: int, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crop to `max_samples` at `start` (centre when None) or zero-pad at the end; returns (audio, int32 mask)."""
    n = x.shape[0]
    if n >= max_samples:
        start = (n - max_samples) // 2 if start is None else start
        return x[start:start + max_samples], np.ones(max_samples, np.int32)
    out = np.zeros(max_samples, x.dtype)
    out[:n] = x
    mask = np.zeros(max_samples, np.int32)
    mask[:n] = 1
    return out, mask


def to_float(x: np.ndarray) -> np.ndarray:
    """int16 storage -> float32 in [-1, 1)."""
    return x.astype(np.float32) / 32768.0


def sox_effects(x: np.ndarray, *, gain_db: float = 0.0, trim_silence: bool = False, name: str = "<array>",
                rate: int = SAMPLE_RATE) -> np.ndarray:
    """s3prl's SoX chain on float audio: `gain GAIN_DB` and, with trim_silence, `silence 1 0.1 0.1% -1 0.1 0.1%`
    (leading silence and every silence over 0.1 s below 0.1% of full scale removed), via the sox package and binary.
    """
    try:
        import sox
    except ImportError as e:
        raise DatasetError(f"{name}: SoX effects need the `sox` package and binary (pip install 'kdjax[sox]' and "
                           f"apt-get install sox)") from e
    t = sox.Transformer()
    if gain_db:
        t.gain(gain_db=float(gain_db), normalize=False)
    if trim_silence:
        t.silence(location=0, silence_threshold=0.1, min_silence_duration=0.1)
    if not t.effects:
        return x.astype(np.float32, copy=False)
    try:
        y = t.build_array(input_array=x.astype(np.float32, copy=False), sample_rate_in=rate)
    except (OSError, sox.core.SoxError) as e:
        raise _error(name, "sox_failed", f"sox {' '.join(t.effects)} failed ({type(e).__name__}: {e})") from e
    return np.asarray(y, np.float32).reshape(-1)
