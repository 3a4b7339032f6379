"""Heads: featurizer and margin losses vs numpy, padding invariance of poolings and embeddings, heads that learn."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.models import heads as H

RNG = np.random.default_rng(0)


def _batch(b=3, t=24, d=8, lengths=(24, 17, 16), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    mask = np.arange(t)[None] < np.asarray(lengths)[:, None]
    return x, mask


def _pad_with_garbage(x, mask, extra, seed=1):
    """Append `extra` frames of large garbage (mask False), and put garbage in already-padded frames too."""
    rng = np.random.default_rng(seed)
    x = np.where(mask[..., None], x, rng.normal(scale=1e3, size=x.shape)).astype(np.float32)
    junk = rng.normal(scale=1e3, size=(x.shape[0], extra, x.shape[2])).astype(np.float32)
    return np.concatenate([x, junk], 1), np.concatenate([mask, np.zeros((mask.shape[0], extra), bool)], 1)


# ----------------------------------------------------------------------------------------------------- featurizer
@pytest.mark.parametrize("layer_norm", [False, True])
def test_featurizer_matches_numpy(layer_norm):
    hs = RNG.normal(size=(4, 2, 5, 8)).astype(np.float32)
    f = H.Featurizer(4, layer_norm=layer_norm)
    w = np.array([0.3, -1.0, 2.0, 0.1], np.float32)
    f.weights[...] = w
    ref = hs
    if layer_norm:
        ref = (hs - hs.mean(-1, keepdims=True)) / np.sqrt(hs.var(-1, keepdims=True) + 1e-5)
    p = np.exp(w) / np.exp(w).sum()
    np.testing.assert_allclose(f(tuple(jnp.asarray(h) for h in hs)), np.tensordot(p, ref, 1), atol=1e-5)
    np.testing.assert_allclose(H.Featurizer(4, mode="last")(jnp.asarray(hs)), hs[-1])
    # the feature cache's batch-major layout [B, L, T, D] gives the same sums, and trains the same weights
    bm = H.BatchMajor(jnp.asarray(np.moveaxis(hs, 0, 1)))
    np.testing.assert_allclose(f(bm), np.tensordot(p, ref, 1), atol=1e-5)
    grad = lambda x: nnx.grad(lambda m: jnp.sum(m(x) ** 2))(f)["weights"][...]  # noqa: E731
    np.testing.assert_allclose(grad(bm), grad(jnp.asarray(hs)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(H.Featurizer(4, mode="last")(bm), hs[-1])
    np.testing.assert_allclose(H.Featurizer(4, mode="layer=1")(bm), hs[1])
    with pytest.raises(ConfigError, match="got 2 hidden states"):
        f(H.BatchMajor(bm.array[:, :2]))
    with pytest.raises(ConfigError, match="num_layers=4"):
        f(jnp.asarray(hs[:3]))
    with pytest.raises(ConfigError, match="mode='mean'"):
        H.Featurizer(4, mode="mean")
    np.testing.assert_allclose(H.Featurizer(4, mode="layer=2")(jnp.asarray(hs)), hs[2])
    assert H.Featurizer(4, mode="layer=2").weights is None  # nothing to train
    with pytest.raises(ConfigError, match=r"mode='layer=4'.*N in 0..3"):
        H.Featurizer(4, mode="layer=4")


# ----------------------------------------------------------------------------------------------------- pooling
def test_poolings_use_valid_frames_only():
    x, mask = _batch()
    scores = RNG.normal(size=x.shape).astype(np.float32)
    xg, mg = _pad_with_garbage(x, mask, 9)
    sg = np.concatenate([scores, RNG.normal(size=(3, 9, 8)).astype(np.float32) * 1e3], 1)
    for b, n in enumerate((24, 17, 16)):  # numpy reference on the valid frames alone
        v = x[b, :n]
        np.testing.assert_allclose(H.masked_mean(x, mask)[b], v.mean(0), atol=1e-5)
        np.testing.assert_allclose(H.statistics_pooling(x, mask)[b], np.concatenate([v.mean(0), np.sqrt(
            v.var(0) + 1e-5)]), atol=1e-5)
        w = np.exp(scores[b, :n]) / np.exp(scores[b, :n]).sum(0)
        mu = (w * v).sum(0)
        np.testing.assert_allclose(H.attentive_statistics_pooling(x, scores, mask)[b], np.concatenate(
            [mu, np.sqrt((w * (v - mu) ** 2).sum(0) + 1e-5)]), atol=1e-5)
    for fn in (H.masked_mean, H.statistics_pooling):
        np.testing.assert_allclose(fn(xg, mg), fn(x, mask), atol=1e-5)
    np.testing.assert_allclose(H.attentive_statistics_pooling(xg, sg, mg),
                               H.attentive_statistics_pooling(x, scores, mask), atol=1e-5)


def test_poolings_without_valid_frames_stay_finite():
    x, mask = _batch()
    x[0] = np.nan  # garbage everywhere in an utterance with no valid frame
    mask[0] = False
    for fn in (H.masked_mean, H.statistics_pooling, lambda x, m: H.attentive_statistics_pooling(x, x, m)):
        out, grad = jax.value_and_grad(lambda x: fn(x, mask).sum())(jnp.asarray(x))
        assert np.isfinite(out) and np.all(np.isfinite(grad))


def test_tdnn_output_mask_follows_receptive_field():
    layer = H.TDNNLayer(2, 2, kernel=3, dilation=2, rngs=nnx.Rngs(0))
    mask = jnp.arange(10)[None] < jnp.array([[10], [7], [4]])
    # Output t sees inputs t, t+2, t+4: valid iff t + 4 < length.
    assert layer.output_mask(mask).sum(1).tolist() == [6, 3, 0]


# One width everywhere: eager initialisation compiles each distinct (op, shape) once, so few shapes keep tests fast.
def _tiny_xvector(d=8):
    return H.XVectorHead(d, hidden=8, widths=(8,) * 5, embed_dim=8, rngs=nnx.Rngs(0))


def _tiny_ecapa(d=8):
    return H.ECAPAHead(d, channels=8, scale=2, mfa_channels=8, attention_channels=8, embed_dim=8, rngs=nnx.Rngs(0))


@nnx.jit
def _forward(model, x, mask):
    return model(x, mask)


@pytest.mark.parametrize("make", [_tiny_xvector, _tiny_ecapa, lambda: H.KWSHead(8, 4, hidden=8, rngs=nnx.Rngs(0))])
def test_embeddings_unchanged_when_padding_grows(make):
    x, mask = _batch()
    xg, mg = _pad_with_garbage(x, mask, 11)
    model = make()
    model.eval()
    ref = _forward(model, x, mask)
    np.testing.assert_allclose(_forward(model, xg, mg), ref, atol=1e-4)


def test_batchnorm_statistics_ignore_padding_in_training():
    x, mask = _batch()
    xg, mg = _pad_with_garbage(x, mask, 11)
    a = _tiny_xvector()
    b = nnx.clone(a)
    np.testing.assert_allclose(_forward(a, x, mask), _forward(b, xg, mg), atol=1e-4)
    for la, lb in zip(a.tdnn, b.tdnn):
        np.testing.assert_allclose(la.norm.mean[...], lb.norm.mean[...], atol=1e-5)
        np.testing.assert_allclose(la.norm.var[...], lb.norm.var[...], atol=1e-4)


# ----------------------------------------------------------------------------------------------------- losses
def _np_ce(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels])


def test_margin_logits_match_numpy():
    cos = np.concatenate([RNG.uniform(-1, 1, size=(6, 5)), [[-0.99, 0.2, 0.1, 0.0, 0.5]]]).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0, 0])  # the last row's target has theta > pi - m
    onehot = np.eye(5, dtype=bool)[labels]
    am = 30 * np.where(onehot, cos - 0.4, cos)
    np.testing.assert_allclose(H.am_softmax_logits(cos, labels), am, rtol=1e-5, atol=1e-4)
    theta = np.arccos(cos)
    m = 0.2
    target = np.where(theta + m <= np.pi, np.cos(theta + m), cos - m * np.sin(m))
    aam = 30 * np.where(onehot, target, cos)
    np.testing.assert_allclose(H.aam_softmax_logits(cos, labels), aam, rtol=1e-4, atol=1e-3)
    assert aam[-1, 0] == pytest.approx(30 * (-0.99 - m * np.sin(m)), rel=1e-5)


@pytest.mark.parametrize("kind", ["am", "aam"])
def test_margin_softmax_loss_matches_numpy(kind):
    emb, labels = RNG.normal(size=(8, 6)).astype(np.float32), RNG.integers(0, 4, 8)
    head = H.MarginSoftmax(6, 4, kind=kind, rngs=nnx.Rngs(0))
    w = np.asarray(head.weight[...])
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    onehot = np.eye(4, dtype=bool)[labels]
    if kind == "am":
        logits = 30 * np.where(onehot, cos - 0.4, cos)
    else:
        logits = 30 * np.where(onehot, np.cos(np.arccos(np.clip(cos, -1, 1)) + 0.2), cos)
        assert np.all(np.arccos(cos[onehot]) < np.pi - 0.2)  # plain ArcFace regime for this draw
    loss, out_logits = head(jnp.asarray(emb), jnp.asarray(labels))
    assert float(loss) == pytest.approx(_np_ce(logits, labels), rel=1e-4)
    np.testing.assert_allclose(out_logits, 30 * cos, atol=1e-3)
    assert float(H.cross_entropy(jnp.asarray(logits), labels)) == pytest.approx(_np_ce(logits, labels), rel=1e-5)
    weights = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    assert float(H.cross_entropy(jnp.asarray(logits), labels, jnp.asarray(weights))) == pytest.approx(
        _np_ce(logits[weights == 1], labels[weights == 1]), rel=1e-5)


# ----------------------------------------------------------------------------------------------------- learning
def _separable(num_classes, n=32, t=20, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(num_classes, d))
    labels = np.arange(n) % num_classes
    x = centers[labels][:, None] + rng.normal(size=(n, t, d))
    mask = np.arange(t)[None] < rng.integers(16, t + 1, n)[:, None]
    return jnp.asarray(x, jnp.float32), jnp.asarray(mask), jnp.asarray(labels)


def _train(model, loss_fn, data, steps=30, lr=3e-3):
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, mask, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, mask, y)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, *data)) for _ in range(steps)]
    return losses


def test_kws_head_learns():
    data = _separable(4)
    model = H.KWSHead(8, 4, hidden=8, rngs=nnx.Rngs(0))
    losses = _train(model, lambda m, x, mask, y: H.cross_entropy(m(x, mask), y), data, lr=3e-2)
    assert losses[-1] < 0.3 * losses[0], losses


def test_sv_head_with_aam_learns():
    data = _separable(4, seed=1)

    class SV(nnx.Module):
        def __init__(self):
            self.head = _tiny_xvector()
            self.loss = H.MarginSoftmax(8, 4, kind="aam", rngs=nnx.Rngs(1))

    model = SV()
    losses = _train(model, lambda m, x, mask, y: m.loss(m.head(x, mask), y)[0], data, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
