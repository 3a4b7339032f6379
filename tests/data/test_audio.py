"""Transforms and audio checks of kdjax.data.audio."""
import numpy as np
import pytest

from kdjax.data import audio
from kdjax.errors import AudioError

from .conftest import write_wav


def test_normalize_matches_hf_over_valid_samples():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32) * 3 + 1
    mask = np.zeros(1000, np.int32)
    mask[:600] = 1
    out = audio.normalize(x, mask)
    ref = (x[:600] - x[:600].mean()) / np.sqrt(x[:600].var() + 1e-7)  # HF zero_mean_unit_var_norm
    np.testing.assert_allclose(out[:600], ref, rtol=1e-5, atol=1e-5)
    assert np.all(out[600:] == 0)
    np.testing.assert_allclose(audio.normalize(x), (x - x.mean()) / np.sqrt(x.var() + 1e-7), rtol=1e-5, atol=1e-5)


def test_crop_or_pad():
    x = np.arange(10, dtype=np.float32)
    y, m = audio.crop_or_pad(x, 4, start=3)
    assert y.tolist() == [3, 4, 5, 6] and m.tolist() == [1, 1, 1, 1]
    y, m = audio.crop_or_pad(x, 4)  # centre
    assert y.tolist() == [3, 4, 5, 6]
    y, m = audio.crop_or_pad(x, 12)
    assert y[10:].tolist() == [0, 0] and m.tolist() == [1] * 10 + [0, 0] and m.dtype == np.int32


def test_mono_and_resample(tmp_path):
    path = write_wav(str(tmp_path / "a.wav"), seconds=0.5, rate=44_100, channels=2)
    clip = audio.load_clip(path)
    assert clip.dtype == np.int16 and abs(clip.shape[0] - 8000) <= 2


@pytest.mark.parametrize("x,reason", [(np.zeros(0), "empty_audio"), (np.full(1000, np.nan), "non_finite"),
                                      (np.full(1000, np.inf), "non_finite"), (np.zeros(399), "too_short")])
def test_check_errors(x, reason):
    with pytest.raises(AudioError) as e:
        audio.prepare_clip(x, 16_000, "clip.wav")
    assert e.value.reason == reason and "clip.wav" in str(e.value)


def test_bad_rate():
    with pytest.raises(AudioError, match="clip.wav.*sample rate 1000"):
        audio.prepare_clip(np.zeros(4000), 1000, "clip.wav")
