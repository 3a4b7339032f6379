"""Session-scoped tiny prepared datasets and helpers that write fake audio folders."""
import os

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data_dir holding synthetic_speech/{kws,sv,unlabeled}_tiny, prepared once per session."""
    from kdjax.data import prepare

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for config in ("kws_tiny", "sv_tiny", "unlabeled_tiny"):
        assert prepare.run(f"synthetic_speech/{config}", data_dir=data_dir, num_workers=1) == 0
    return data_dir


def write_wav(path, seconds=0.5, rate=16_000, channels=1, subtype="PCM_16", seed=0, fmt=None):
    """A short random-tone clip (creating folders as needed); returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(t.size)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, x.astype(np.float32), rate, subtype=subtype, format=fmt)
    return path
