"""Synthetic speech with espeak-ng (PyPI `espeakng-loader`, through ctypes) and a synthetic speaker model.

A speaker is a fixed combination of an espeak voice variant, an accent voice, base pitch, pitch range, speaking rate,
a vocal-tract-length warp (resampling) and a channel EQ. Each utterance adds pitch/rate jitter, gain, a time shift and
background noise at a random SNR. espeak output can differ by a few samples between calls, so the prepared dataset,
not this module, is the unit of reproducibility.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import threading

import numpy as np
import scipy.fft
import soxr

from kdjax.data.audio import SAMPLE_RATE

ESPEAK_RATE = 22_050
ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc")
_AUDIO_OUTPUT_RETRIEVAL, _POS_CHARACTER = 1, 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def variants() -> list[str]:
    """The espeak voice variants shipped with espeakng-loader (voices/!v), sorted."""
    import espeakng_loader

    vdir = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    return sorted(v for v in os.listdir(vdir) if " " not in v)  # "Mr serious" cannot be named in a voice string


class Espeak:
    """One espeak-ng engine per process (the C library keeps global state, so calls are serialised)."""

    _instance: "Espeak | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_RETRIEVAL, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"espeak-ng initialisation failed (returned {rate}, expected {ESPEAK_RATE} Hz)")
        self._chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._collect)  # keep a reference: the C side holds only the pointer
        self._lib.espeak_SetSynthCallback(self._cb)

    @classmethod
    def get(cls) -> "Espeak":
        """The process-wide engine, created on first use."""
        if cls._instance is None:
            cls._instance = Espeak()
        return cls._instance

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        """Synthesise `text` as int16 audio at 22.05 kHz."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            data = text.encode()
            self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
            self._lib.espeak_Synchronize()
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: everything about the voice that stays fixed across its utterances."""

    name: str
    voice: str  # "accent+variant"
    pitch: float  # espeak 0..99
    pitch_range: float  # espeak 0..99
    rate: float  # words per minute
    warp: float  # vocal-tract-length factor (>1: shorter tract, higher formants)
    eq_db: tuple[float, ...]  # channel gains in dB at log-spaced centre frequencies


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard the corpus is: speaker spread and per-utterance nuisance."""

    # calibrated with benchmarks/corpus_difficulty.py (see docs/datasets.md)
    snr_db: tuple[float, float] = (5.0, 30.0)
    pitch_jitter: float = 8.0  # +- espeak pitch units
    rate_jitter: float = 0.15  # +- relative
    gain_db: tuple[float, float] = (-12.0, 0.0)
    warp_range: tuple[float, float] = (0.85, 1.15)
    eq_db: float = 8.0  # std of per-band channel gain
    utt_eq_db: float = 1.0  # std of per-utterance channel gain (mic/position variation)


_EQ_CENTRES = np.geomspace(150.0, 6000.0, 8)


def make_speakers(n: int, seed: int, difficulty: Difficulty, prefix: str = "spk") -> list[Speaker]:
    """`n` reproducible speakers drawn from `seed`."""
    rng = np.random.default_rng([seed, 1])
    vs = variants()
    out = []
    for i in range(n):
        out.append(Speaker(
            name=f"{prefix}{i:04d}",
            voice=f"{ACCENTS[rng.integers(len(ACCENTS))]}+{vs[rng.integers(len(vs))]}",
            pitch=float(rng.uniform(25, 75)), pitch_range=float(rng.uniform(20, 80)),
            rate=float(rng.uniform(130, 200)), warp=float(rng.uniform(*difficulty.warp_range)),
            eq_db=tuple(float(g) for g in rng.normal(0.0, difficulty.eq_db, len(_EQ_CENTRES)))))
    return out


def _fast_length(n: int) -> int:
    """The FFT length for n samples: the next 2-3-5-smooth size (an utterance's own length is often nearly prime, and
    pocketfft then takes ~16x longer: 28% of the synthesis time went to those FFTs)."""
    return scipy.fft.next_fast_len(n, real=True)


def _apply_eq(x: np.ndarray, gains_db: np.ndarray) -> np.ndarray:
    """Filter with a smooth magnitude response interpolated (in log frequency) between band gains (zero-padded to a
    fast FFT length, then cut back)."""
    n_fft = _fast_length(x.shape[0])
    spec = np.fft.rfft(x, n=n_fft)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    resp = np.interp(np.log(np.maximum(freqs, 1.0)), np.log(_EQ_CENTRES), gains_db)
    return np.fft.irfft(spec * 10.0 ** (resp / 20.0), n=n_fft)[:x.shape[0]].astype(np.float32)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink or brown noise (random colour) with unit RMS (coloured noise is shaped at a fast FFT length, then
    cut to n)."""
    colour = rng.integers(3)
    if colour:
        n_fft = _fast_length(n)
        spec = np.fft.rfft(rng.standard_normal(n_fft))
        f = np.maximum(np.arange(spec.shape[0]), 1.0)
        white = np.fft.irfft(spec / f ** (0.5 * colour), n=n_fft)[:n]
    else:
        white = rng.standard_normal(n)
    return (white / (np.sqrt(np.mean(white ** 2)) + 1e-12)).astype(np.float32)


def speak(speaker: Speaker, text: str, rng: np.random.Generator, difficulty: Difficulty) -> np.ndarray:
    """Clean speech of `speaker` saying `text` with utterance jitter, as float32 at 16 kHz (before noise)."""
    raw = Espeak.get().say(
        text, speaker.voice,
        rate=speaker.rate * (1 + rng.uniform(-difficulty.rate_jitter, difficulty.rate_jitter)),
        pitch=np.clip(speaker.pitch + rng.uniform(-difficulty.pitch_jitter, difficulty.pitch_jitter), 0, 99),
        pitch_range=speaker.pitch_range)
    x = raw.astype(np.float32) / 32768.0
    # Vocal-tract warp: play 22.05 kHz audio as if it were warp*22.05 kHz, then resample to 16 kHz in one go.
    x = soxr.resample(x, ESPEAK_RATE * speaker.warp, SAMPLE_RATE, quality="HQ").astype(np.float32)
    gains = np.asarray(speaker.eq_db) + rng.normal(0.0, difficulty.utt_eq_db, len(_EQ_CENTRES))
    return _apply_eq(x, gains)


def place(speech: np.ndarray, length: int, rng: np.random.Generator, difficulty: Difficulty,
          noise_only: bool = False) -> np.ndarray:
    """Put speech at a random offset in a `length`-sample window, set gain, add noise at a random SNR."""
    out = np.zeros(length, np.float32)
    if not noise_only:
        speech = speech[:length]
        start = int(rng.integers(0, length - speech.shape[0] + 1))
        out[start:start + speech.shape[0]] = speech
        rms = float(np.sqrt(np.mean(speech ** 2))) + 1e-8
    else:
        rms = 0.05
    level = 10.0 ** (rng.uniform(*difficulty.gain_db) / 20.0) * 0.1 / rms  # speech RMS around 0.1 before gain
    out *= level
    snr = rng.uniform(*difficulty.snr_db)
    out += _noise(length, rng) * (rms * level) / 10.0 ** (snr / 20.0)
    return np.clip(out, -1.0, 1.0)


def speaker_split(name: str, validation_pct: float = 10.0, test_pct: float = 10.0) -> str:
    """Train/validation/test by a stable hash of the speaker name, as Speech Commands' `which_set`."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100_000 / 1000.0
    if bucket < validation_pct:
        return "validation"
    if bucket < validation_pct + test_pct:
        return "test"
    return "train"


KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine", "one",
                 "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "backward", "forward", "follow",
                 "learn", "visual")
VOCAB = tuple("""the of and to in is you that it he was for are as with his they at be this from have or by one had
not but what all were when we there can an your which their said if do will each about how up out them then she many
some so these would other into has more her two like him see time could no make than first been its who now people my
made over did down only way find use may water long little very after words called just where most know get through
back much before go good new write our used me man too any day same right look think also around another came come
work three word must because does part even place well such here take why things help put years different away again
off went old number great tell men say small every found still between name should home big give air line set own
under read last never us left end along while might next sound below saw something thought both few those always
looked show large often together asked house world going want school important until form food keep children feet
land side without boy once animals life enough took sometimes four head above kind began almost live page got earth
need far hand high year mother light parts country father let night following picture being study second eyes soon
times story boys since white days ever paper hard near sentence better best across during today others however sure
means knew try told young miles sun ways thing whole hear example heard several change answer room sea against top
turned learn point city play toward five using himself usually""".split())


@dataclasses.dataclass(frozen=True)
class Job:
    """One utterance to render: who says what, into how long a window (0: the speech's own length plus padding)."""

    key: str
    speaker: Speaker
    speaker_index: int
    text: str  # "" renders background noise only
    length: int
    label: int  # -1: unlabelled
    seed: tuple[int, ...]


def render(job: Job, difficulty: Difficulty) -> tuple[str, dict]:
    """Render a Job into a (key, example) pair with int16 16 kHz audio (runs in generation workers)."""
    rng = np.random.default_rng(list(job.seed))
    if job.text:
        speech = speak(job.speaker, job.text, rng, difficulty)
        x = place(speech, job.length or speech.shape[0] + int(rng.integers(1600, 6400)), rng, difficulty)
    else:
        x = place(np.zeros(0, np.float32), job.length, rng, difficulty, noise_only=True)
    ex = {"audio": np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16),
          "speaker": job.speaker_index, "id": job.key}
    if job.label >= 0:
        ex["label"] = job.label
    return job.key, ex
