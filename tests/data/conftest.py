"""Helpers that write fake audio folders (the tiny prepared datasets are in tests/conftest.py)."""
import os

import numpy as np
import pytest
import soundfile as sf


def write_wav(path, seconds=0.5, rate=16_000, channels=1, subtype="PCM_16", seed=0, fmt=None):
    """A short random-tone clip (creating folders as needed); returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(t.size)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, x.astype(np.float32), rate, subtype=subtype, format=fmt)
    return path
