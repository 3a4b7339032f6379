"""HuBERT's masked prediction objective: predict cluster ids of masked frames from the unmasked context."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder, frame_mask_from_attention_mask, time_mask


class HubertPretrainer(nnx.Module):
    """Encoder + final projection + one embedding per cluster; logits are cosine similarities / temperature."""

    def __init__(self, config: EncoderConfig, num_clusters: int, *, proj_dim: int = 256, temperature: float = 0.1,
                 rngs: nnx.Rngs):
        self.encoder = Encoder(config, rngs=rngs)
        self.final_proj = nnx.Linear(config.hidden_size, proj_dim, rngs=rngs)
        self.label_embeddings = nnx.Param(jax.random.normal(rngs.params(), (num_clusters, proj_dim)))
        self.temperature = temperature

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, T, H] encoder output -> [B, T, num_clusters] cosine logits."""
        proj = self.final_proj(hidden.astype(jnp.float32))
        proj = proj / jnp.maximum(jnp.linalg.norm(proj, axis=-1, keepdims=True), 1e-8)
        emb = self.label_embeddings[...]
        emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-8)
        return proj @ emb.T / self.temperature


def masked_prediction_loss(model: HubertPretrainer, input_values: jax.Array, attention_mask: jax.Array,
                           targets: jax.Array, rng: jax.Array, *, deterministic: bool = False
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy on masked, valid frames (HuBERT's pred_masked_weight=1, pred_nomask_weight=0).

    `targets` are int cluster ids [B, T] on the encoder's frames. `deterministic` turns dropout off (evaluation);
    the masked frames are still drawn from `rng`.
    """
    mask_key, dropout_key = jax.random.split(rng)
    frames = targets.shape[1]
    valid = frame_mask_from_attention_mask(model.encoder.config, attention_mask, frames)
    masked = time_mask(model.encoder.config, mask_key, valid) & valid
    out = model.encoder(input_values, attention_mask, deterministic=deterministic, rng=dropout_key,
                        mask_time_indices=masked)
    if out.last_hidden_state.shape[1] != frames:
        raise ValueError(f"targets have {frames} frames but the encoder produced {out.last_hidden_state.shape[1]}: "
                         f"compute them on the encoder's frames (window = receptive field, hop = frame stride)")
    logits = model.logits(out.last_hidden_state)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weight = masked.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    loss = jnp.sum(nll * weight) / count
    accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weight) / count
    return loss, {"loss": loss, "masked_accuracy": accuracy, "masked_fraction": weight.sum() / jnp.maximum(
        valid.sum(), 1)}
