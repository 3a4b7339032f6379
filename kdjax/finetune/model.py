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
    """Featurizer + x-vector (SUPERB) or ECAPA-TDNN head + AM/AAM-softmax speaker classifier."""

    target = "speaker"  # the batch key loss() reads

    def __init__(self, num_hidden_states: int, dim: int, num_speakers: int, *, featurizer: str = "weighted_sum",
                 head: str = "xvector", loss: str = "aam", embed_dim: int | None = None, width: int = 512,
                 rngs: nnx.Rngs):
        self.featurizer = heads.Featurizer(num_hidden_states, mode=featurizer)
        if head == "xvector":  # SUPERB: width 512, last TDNN layer 1500 (about 3 * width)
            embed_dim = embed_dim or 512
            self.head = heads.XVectorHead(dim, hidden=width, widths=(width,) * 4 + (int(width * 1500 / 512),),
                                          embed_dim=embed_dim, rngs=rngs)
        elif head == "ecapa":
            embed_dim = embed_dim or 192
            self.head = heads.ECAPAHead(dim, channels=width, embed_dim=embed_dim, rngs=rngs)
        else:
            raise ConfigError(f"config.finetune.sv_head={head!r}: expected 'xvector' or 'ecapa'")
        self.classifier = heads.MarginSoftmax(embed_dim, num_speakers, kind=loss, rngs=rngs)

    def embed(self, hidden_states: Sequence[jax.Array], frame_mask: jax.Array) -> jax.Array:
        """Speaker embeddings [B, embed_dim] (not normalised; scoring normalises)."""
        return self.head(self.featurizer(hidden_states), frame_mask)

    def loss(self, hidden_states, frame_mask, speakers) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(margin-softmax loss, {"loss", "accuracy"}) of speaker classification (batch["speaker"])."""
        loss, logits = self.classifier(self.embed(hidden_states, frame_mask), speakers)
        return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == speakers)}


class FineTuneModel(nnx.Module):
    """An encoder with a KWS head, an SV head, or both (multi-task shares the encoder)."""

    def __init__(self, encoder_config: EncoderConfig, *, num_classes: int | None, num_speakers: int | None,
                 cfg: Any, rngs: nnx.Rngs):
        self.encoder = Encoder(encoder_config, rngs=rngs)
        layers = encoder_config.num_hidden_layers + 1
        dim = encoder_config.hidden_size
        self.kws = (KWSDownstream(layers, dim, num_classes, featurizer=cfg.featurizer, rngs=rngs)
                    if num_classes else None)
        self.sv = (SVDownstream(layers, dim, num_speakers, featurizer=cfg.featurizer, head=cfg.sv_head,
                                loss=cfg.sv_loss, embed_dim=cfg.sv_embed_dim or None, width=cfg.sv_width, rngs=rngs)
                   if num_speakers else None)
        # One-stage runs set DistilHuBERT's prediction heads here (kdjax.finetune.one_stage).
        self.distill_heads = nnx.data(None)

    def downstream(self, stream: str) -> KWSDownstream | SVDownstream:
        """The downstream model of a stream ("kws" or "sv")."""
        return getattr(self, stream)
