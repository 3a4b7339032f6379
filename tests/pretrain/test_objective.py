"""HuBERT masked prediction: the loss against a NumPy computation, and that a few steps learn."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import frame_mask_from_attention_mask, time_mask
from kdjax.pretrain.objective import HubertPretrainer, masked_prediction_loss
from tests import hf_utils

jax.config.update("jax_default_matmul_precision", "highest")
CONFIG = EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "hubert", "mask_time_prob": 0.5,
                                "mask_time_length": 3, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                                "activation_dropout": 0.0, "feat_proj_dropout": 0.0, "layerdrop": 0.0})


def test_loss_equals_numpy_cross_entropy_on_masked_frames():
    model = HubertPretrainer(CONFIG, 7, proj_dim=8, rngs=nnx.Rngs(0))
    x, mask = hf_utils.batch()
    frames = int(frame_mask_from_attention_mask(CONFIG, mask, 10_000).sum(-1).max())
    targets = jnp.asarray(np.random.default_rng(0).integers(0, 7, (2, frames)))
    rng = jax.random.key(3)
    loss, metrics = masked_prediction_loss(model, x, mask, targets, rng)

    mask_key, dropout_key = jax.random.split(rng)
    valid = np.asarray(frame_mask_from_attention_mask(CONFIG, mask, frames))
    masked = np.asarray(time_mask(CONFIG, mask_key, jnp.asarray(valid))) & valid
    hidden = model.encoder(x, mask, deterministic=False, rng=dropout_key,
                           mask_time_indices=jnp.asarray(masked)).last_hidden_state
    proj = np.asarray(model.final_proj(hidden))
    emb = np.asarray(model.label_embeddings[...])
    cos = (proj / np.linalg.norm(proj, axis=-1, keepdims=True)) @ (emb / np.linalg.norm(emb, axis=-1,
                                                                                      keepdims=True)).T
    logits = cos / 0.1
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    expected = nll[masked].mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert 0.2 < float(metrics["masked_fraction"]) < 0.9


def test_a_few_steps_reduce_the_loss():
    model = HubertPretrainer(CONFIG, 5, proj_dim=8, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    x, mask = hf_utils.batch(lengths=(4000, 4000))
    frames = int(frame_mask_from_attention_mask(CONFIG, mask, 10_000).sum(-1).max())
    targets = jnp.asarray((np.arange(frames)[None, :] // 5 % 5).repeat(2, 0))

    @nnx.jit
    def step(model, optimizer, key):
        loss_fn = lambda m: masked_prediction_loss(m, x, mask, targets, key)  # noqa: E731
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, jax.random.key(i))) for i in range(40)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
