"""Distillation losses against a NumPy transcription of s3prl's DistilHuBERT loss, with and without padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.distill.losses import (HintProjections, LossConfig, PredictionHeads, combine, cosine_similarity,
                                  layer_losses)
from kdjax.models.encoder import EncoderOutput


def _np_losses(pred, target, mask=None):
    """Per-layer (L1, -log sigmoid(cos)) as s3prl computes them, restricted to mask's frames when given."""
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    l1 = np.abs(pred - target).mean(-1)  # [N, B, T]
    cos = (pred * target).sum(-1) / (np.maximum(np.linalg.norm(pred, axis=-1), 1e-8)
                                     * np.maximum(np.linalg.norm(target, axis=-1), 1e-8))
    sim = np.log1p(np.exp(-cos))  # -log sigmoid
    if mask is None:
        return l1.mean((1, 2)), sim.mean((1, 2))
    m = mask.astype(bool)
    return np.array([x[m].mean() for x in l1]), np.array([x[m].mean() for x in sim])


def _s3prl_total(pred, target, cos_weight):
    """s3prl compute_loss: L1Loss(reduction='none').mean() + cos_weight * (-logsigmoid(cos)).mean() over B,N,T(,D)."""
    p, t = np.moveaxis(pred, 0, 1).astype(np.float64), np.moveaxis(target, 0, 1).astype(np.float64)  # B x N x T x D
    rec = np.abs(p - t).mean()
    cos = (p * t).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1))
    return rec + cos_weight * np.log1p(np.exp(-cos)).mean()


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((3, 2, 7, 16)).astype(np.float32)
    target = (0.5 * pred + rng.standard_normal(pred.shape)).astype(np.float32)
    mask = np.arange(7)[None, :] < np.array([[7], [4]])
    return pred, target, mask


def test_unmasked_equals_numpy_and_s3prl(tensors):
    pred, target, _ = tensors
    l1, cos = layer_losses(jnp.asarray(pred), jnp.asarray(target))
    ref_l1, ref_cos = _np_losses(pred, target)
    np.testing.assert_allclose(l1, ref_l1, rtol=1e-5)
    np.testing.assert_allclose(cos, ref_cos, rtol=1e-5)
    total, metrics = combine(l1, cos, LossConfig(target_layers=(4, 8, 12), cos_weight=1.0))
    np.testing.assert_allclose(total, _s3prl_total(pred, target, 1.0), rtol=1e-5)
    np.testing.assert_allclose(metrics["l1/l8"], ref_l1[1], rtol=1e-5)
    np.testing.assert_allclose(metrics["cos/l12"], ref_cos[2], rtol=1e-5)
    total_sum, _ = combine(l1, cos, LossConfig(target_layers=(4, 8, 12), layer_reduction="sum", cos_weight=0.5))
    np.testing.assert_allclose(total_sum, np.sum(ref_l1 + 0.5 * ref_cos), rtol=1e-5)


def test_padding_excluded_by_default_and_included_on_request(tensors):
    pred, target, mask = tensors
    target_garbage = target.copy()
    target_garbage[:, 1, 4:] = 1e3  # padded frames: any value must not matter
    l1, cos = layer_losses(jnp.asarray(pred), jnp.asarray(target_garbage), jnp.asarray(mask))
    ref_l1, ref_cos = _np_losses(pred, target, mask)
    np.testing.assert_allclose(l1, ref_l1, rtol=1e-5)
    np.testing.assert_allclose(cos, ref_cos, rtol=1e-5)
    # include_padding=True is s3prl's formula exactly: the mask is ignored.
    l1_all, cos_all = layer_losses(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), include_padding=True)
    total, _ = combine(l1_all, cos_all, LossConfig())
    np.testing.assert_allclose(total, _s3prl_total(pred, target, 1.0), rtol=1e-5)


def test_cosine_similarity_matches_torch():
    import torch

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 5, 9)).astype(np.float32)
    b[0] = 0.0  # zero vector: the eps clamp
    ref = torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=-1).numpy()
    np.testing.assert_allclose(cosine_similarity(jnp.asarray(a), jnp.asarray(b)), ref, atol=1e-6)


def test_prediction_heads_match_s3prl_expand_last():
    """Linear -> exact GELU -> per-target Linear, on the last hidden state; as a NumPy transcription."""
    heads = PredictionHeads(8, 6, 3, rngs=nnx.Rngs(0))
    h = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    out = heads(EncoderOutput(jnp.asarray(h), None, jnp.ones((2, 5), bool)))
    assert out.shape == (3, 2, 5, 6)
    from scipy.special import erf

    x = h @ np.asarray(heads.expand.kernel[...]) + np.asarray(heads.expand.bias[...])
    x = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    x = x.reshape(2, 5, 3, 8)
    ref = np.einsum("btni,nio->nbto", x, np.asarray(heads.split_kernel[...])) \
        + np.asarray(heads.split_bias[...])[:, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    bound = 8 ** -0.5
    for leaf in jax.tree.leaves(nnx.state(heads, nnx.Param)):
        assert np.abs(np.asarray(leaf)).max() <= bound


def test_hint_projections_use_the_mapped_student_layers():
    hints = HintProjections(4, 6, (2, 0), rngs=nnx.Rngs(0))
    hs = tuple(jnp.full((1, 3, 4), float(i)) for i in range(3))
    out = hints(EncoderOutput(hs[-1], hs, jnp.ones((1, 3), bool)))
    k, b = np.asarray(hints.kernel[...]), np.asarray(hints.bias[...])
    np.testing.assert_allclose(out[0], np.full((1, 3, 4), 2.0) @ k[0] + b[0], rtol=1e-5)
    np.testing.assert_allclose(out[1], np.zeros((1, 3, 4)) @ k[1] + b[1], rtol=1e-5)
