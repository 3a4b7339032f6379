"""Downstream tasks on encoder hidden states: keyword spotting and speaker verification (SUPERB heads), and the
model that holds an encoder with one or both of them (multi-task).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.models import heads
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder


class KWSDownstream(nnx.Module):
    """Featurizer (weighted sum of hidden states, or the last) + SUPERB KWS head; cross-entropy loss."""

    target = "label"  # the batch key loss() reads

    def __init__(self, num_hidden_states: int, dim: int, num_classes: int, *, featurizer: str = "weighted_sum",
                 hidden: int = 256, rngs: nnx.Rngs):
        self.featurizer = heads.Featurizer(num_hidden_states, mode=featurizer)
        self.head = heads.KWSHead(dim, num_classes, hidden=hidden, rngs=rngs)

    def __call__(self, hidden_states: Sequence[jax.Array], frame_mask: jax.Array) -> jax.Array:
        """Logits [B, num_classes]."""
        return self.head(self.featurizer(hidden_states), frame_mask)

    def loss(self, hidden_states, frame_mask, labels, weights=None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(mean cross-entropy, {"loss", "accuracy"}) against labels [B] (batch["label"])."""
        logits = self(hidden_states, frame_mask)
        loss = heads.cross_entropy(logits, labels, weights)
        return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


class SVDownstream(nnx.Module):
    """Featurizer + an SV head (kdjax's x-vector, SUPERB's x-vector or ECAPA-TDNN) + AM/AAM-softmax classifier."""

    target = "speaker"  # the batch key loss() reads

    def __init__(self, num_hidden_states: int, dim: int, num_speakers: int, *, featurizer: str = "weighted_sum",
                 head: str = "xvector", loss: str = "aam", embed_dim: int | None = None, width: int = 512,
                 agg_dim: int = 1500, scale: float = 30.0, margin: float | None = None, rngs: nnx.Rngs):
        self.featurizer = heads.Featurizer(num_hidden_states, mode=featurizer)
        self.head, width_out = _sv_head(head, dim, embed_dim, width, agg_dim, rngs)
        self.classifier = heads.MarginSoftmax(width_out, num_speakers, kind=loss, scale=scale, margin=margin,
                                              rngs=rngs)

    def embed(self, hidden_states: Sequence[jax.Array], frame_mask: jax.Array) -> jax.Array:
        """Test embeddings [B, embed_dim] (not normalised; scoring normalises)."""
        return self.head(self.featurizer(hidden_states), frame_mask)

    def loss(self, hidden_states, frame_mask, speakers) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(margin-softmax loss, {"loss", "accuracy"}) of speaker classification (batch["speaker"])."""
        emb = self.head.training_embedding(self.featurizer(hidden_states), frame_mask)
        loss, logits = self.classifier(emb, speakers)
        return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == speakers)}


def _sv_head(head: str, dim: int, embed_dim: int | None, width: int, agg_dim: int,
             rngs: nnx.Rngs) -> tuple[nnx.Module, int]:
    """(SV head, width of the embedding the classifier sees)."""
    if head == "xvector":  # kdjax's: BatchNorm after each TDNN layer, last TDNN layer about 3 * width (1500)
        embed_dim = embed_dim or 512
        return heads.XVectorHead(dim, hidden=width, widths=(width,) * 4 + (int(width * 1500 / 512),),
                                 embed_dim=embed_dim, rngs=rngs), embed_dim
    if head == "xvector_superb":  # s3prl's SUPERB ASV model: no BatchNorm, ReLU(Linear1) test embedding
        return heads.SUPERBXVectorHead(dim, hidden=width, agg_dim=agg_dim, rngs=rngs), width
    if head == "ecapa":
        embed_dim = embed_dim or 192
        return heads.ECAPAHead(dim, channels=width, embed_dim=embed_dim, rngs=rngs), embed_dim
    raise ConfigError(f"config.finetune.sv_head={head!r}: expected 'xvector', 'xvector_superb' or 'ecapa'")


class FineTuneModel(nnx.Module):
    """An encoder with a KWS head, an SV head, or both (multi-task shares the encoder); runs on cached features set
    `encoder` to None (kdjax.finetune.task)."""

    def __init__(self, encoder_config: EncoderConfig, *, num_classes: int | None, num_speakers: int | None,
                 cfg: Any, rngs: nnx.Rngs, num_hidden_states: int | None = None):
        self.encoder = Encoder(encoder_config, rngs=rngs)
        # what the featurizers weigh: every hidden state, or the cached layers (kdjax.finetune.cached)
        layers = num_hidden_states or encoder_config.num_hidden_layers + 1
        dim = encoder_config.hidden_size
        self.kws = (KWSDownstream(layers, dim, num_classes, featurizer=cfg.featurizer, hidden=int(cfg.kws_hidden),
                                  rngs=rngs) if num_classes else None)
        self.sv = (SVDownstream(layers, dim, num_speakers, featurizer=cfg.featurizer, head=cfg.sv_head,
                                loss=cfg.sv_loss, embed_dim=cfg.sv_embed_dim or None, width=cfg.sv_width,
                                agg_dim=int(cfg.sv_agg_dim), scale=float(cfg.sv_margin_scale), margin=cfg.sv_margin,
                                rngs=rngs) if num_speakers else None)
        # One-stage runs set DistilHuBERT's prediction heads here (kdjax.finetune.one_stage).
        self.distill_heads = nnx.data(None)

    def downstream(self, stream: str) -> KWSDownstream | SVDownstream:
        """The downstream model of a stream ("kws" or "sv")."""
        return getattr(self, stream)
