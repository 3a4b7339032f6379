"""KWS from pooled features: the SUPERB KWS downstream is linear up to its last Linear, so it needs only the masked
mean of each layer over valid frames.

    logits = classifier(mean_t(projector(sum_l w_l h_lt)))           (frames: KWSDownstream.__call__)
           = classifier(projector(sum_l w_l mean_t(h_lt)))           (pooled: kws_pooled_logits)

since the softmax-weighted layer sum and the masked mean are linear and the projector is affine (its bias survives a
mean over a non-empty frame set). A Featurizer with layer_norm=True normalises each frame and breaks the identity.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.errors import ConfigError
from kdjax.models import heads


def kws_pooled_logits(kws, pooled: jax.Array) -> jax.Array:
    """Logits [B, C] of a KWSDownstream from pooled features [B, L, H] (equal to its frame path's logits)."""
    if kws.featurizer.layer_norm:
        raise ConfigError("the pooled KWS cache needs Featurizer(layer_norm=False): per-frame normalisation does not "
                          "commute with the mean over frames")
    x = kws.featurizer(jnp.moveaxis(pooled, 1, 0)[:, :, None, :])[:, 0]  # [L, B, 1, H] -> [B, H]
    return kws.head.classifier(kws.head.projector(x))


def kws_pooled_loss(kws, pooled: jax.Array, labels: jax.Array,
                    weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean cross-entropy, {"loss", "accuracy"}) as KWSDownstream.loss, from pooled features."""
    logits = kws_pooled_logits(kws, pooled)
    loss = heads.cross_entropy(logits, labels, weights)
    return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
