"""MFCC targets and k-means, checked against scipy / scikit-learn and hand computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from sklearn.cluster import KMeans

from kdjax.models.config import preset
from kdjax.models.encoder import conv_output_lengths
from kdjax.pretrain import features
from kdjax.pretrain.kmeans import KMeansModel, fit_kmeans


def test_mfcc_frames_align_with_encoder_frames():
    config = preset("facebook/hubert-base-ls960")
    for samples in (400, 719, 720, 16000, 12345, 32000):
        x = jnp.zeros((1, samples))
        assert features.mfcc(x).shape == (1, int(conv_output_lengths(config, jnp.array(samples))), 39)


def test_dct_matches_scipy():
    x = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    ours = x @ features.dct_matrix(40, 13)
    np.testing.assert_allclose(ours, scipy.fft.dct(x, type=2, norm="ortho")[:, :13], atol=1e-5)


def test_mel_filterbank_peaks_where_a_tone_is():
    bank = features.mel_filterbank(16000, 512, 40)
    t = np.arange(400) / 16000
    for hz in (300.0, 1000.0, 4000.0):
        frame = np.sin(2 * np.pi * hz * t) * np.hamming(400)
        spectrum = np.abs(np.fft.rfft(frame, 512)) ** 2
        band = int(np.argmax(spectrum @ bank))
        edges = 700 * (10 ** (np.linspace(2595 * np.log10(1 + 20 / 700), 2595 * np.log10(1 + 8000 / 700), 42)
                              / 2595) - 1)
        assert edges[band] <= hz <= edges[band + 2], (hz, band)


def test_deltas_of_a_ramp_are_its_slope():
    ramp = jnp.arange(20.0)[None, :, None] * 3.0
    d = np.asarray(features.deltas(ramp))[0, :, 0]
    np.testing.assert_allclose(d[2:-2], 3.0, rtol=1e-6)


def test_kmeans_matches_scikit_learn_on_blobs():
    rng = np.random.default_rng(0)
    centers = rng.uniform(-10, 10, (6, 4))
    x = np.concatenate([c + rng.standard_normal((300, 4)) for c in centers]).astype(np.float32)
    ours = fit_kmeans(x, 6, seed=0)
    z = (x - ours.mean) / ours.std
    ours_inertia = float(np.min(((z[:, None] - ours.centroids[None]) ** 2).sum(-1), 1).sum())
    ref = KMeans(6, n_init=10, random_state=0).fit(z)
    assert ours_inertia <= ref.inertia_ * 1.01
    labels = np.asarray(ours.assign(jnp.asarray(x)))
    assert len(set(labels.tolist())) == 6
    for i in range(6):  # each true blob gets one cluster id
        assert np.bincount(labels[i * 300:(i + 1) * 300]).max() >= 295


def test_kmeans_model_round_trips(tmp_path):
    model = KMeansModel(np.ones((3, 2), np.float32), np.zeros(2, np.float32), np.ones(2, np.float32))
    model.save(str(tmp_path / "k.npz"))
    loaded = KMeansModel.load(str(tmp_path / "k.npz"))
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npz"]


def test_kmeans_rejects_too_few_points():
    with pytest.raises(ValueError, match="N >= k=5"):
        fit_kmeans(np.zeros((3, 2)), 5)
