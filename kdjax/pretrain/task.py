"""HuBERT pre-training as a training-loop task: masked prediction of k-means ids of frame features.

Iteration 1 clusters MFCC frames; iteration 2 (`config.pretrain.target_encoder` = an HF folder) clusters the hidden
states of layer `target_layer` of an earlier model, as HuBERT does, and `init_encoder` may warm-start the encoder from
it (HuBERT trains each iteration from scratch; the warm start is kdjax's choice to save compute on small machines).
Used offline to make small teachers (the demo's teacher comes from kdjax/pretrain/tiny_hubert_config.py). The k-means
model is fitted on the first `kmeans_utterances` training clips when the task is built (deterministic, seconds), and
targets are computed inside the jitted step from the cropped batch itself, so they always align with the frames.
Config fields under `config.pretrain` and `config.model` (EncoderConfig fields): see the config file.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from kdjax.data import pipeline
from kdjax.data.audio import SAMPLE_RATE
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.hf import save_pretrained
from kdjax.pretrain.features import mfcc
from kdjax.pretrain.kmeans import KMeansModel, fit_kmeans
from kdjax.pretrain.objective import HubertPretrainer, masked_prediction_loss
from kdjax.train import optim
from kdjax.train.state import TrainState
from kdjax.train.task import Task


def encoder_config(model_fields: Any) -> EncoderConfig:
    """EncoderConfig from a config's `model` ConfigDict (HF field names), with a clear error for unknown fields."""
    fields = dict(model_fields)
    try:
        return EncoderConfig(**fields)
    except TypeError as e:
        known = sorted(EncoderConfig.__dataclass_fields__)
        raise ConfigError(f"config.model: {e}; known EncoderConfig fields: {known}") from None


class HubertPretraining(Task):
    """The Task (see kdjax.train.task.Task): encoder + projection + cluster embeddings, trained from scratch."""

    config_key = "pretrain"
    best_metric = "validation/loss"
    best_mode = "min"

    def __init__(self, config: Any):
        super().__init__(config)
        self.cfg = cfg = config.pretrain
        self.encoder_config = encoder_config(config.model)
        if self.encoder_config.model_type != "hubert":
            raise ConfigError(f"config.model.model_type={self.encoder_config.model_type!r}: pretraining makes HuBERT")
        if self.encoder_config.mask_time_prob <= 0:
            raise ConfigError("config.model.mask_time_prob must be > 0: masked prediction needs masked frames")
        self.max_samples = int(cfg.max_seconds * SAMPLE_RATE)
        self.optimizer = optim.make_optimizer(config.optim, config.total_steps)
        self.target = self._target_encoder()
        self.warm_start = self._warm_start_params()
        self.kmeans = self._fit_kmeans()
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: self._model(nnx.Rngs(0))))

    def config_defaults(self):
        import ml_collections

        from kdjax.pretrain.tiny_hubert_config import get_config

        defaults = get_config()
        defaults.model = ml_collections.ConfigDict()  # EncoderConfig fields, checked by encoder_config()
        return defaults

    # ---- targets ------------------------------------------------------------------------------------------------
    def _target_encoder(self):
        """The frozen earlier model whose layer is clustered (iteration 2), or None (MFCC targets)."""
        if not self.cfg.get("target_encoder"):
            return None
        from kdjax.distill.teacher import Teacher

        target = Teacher.load(self.cfg.target_encoder)
        ec, tc = self.encoder_config, target.config
        if (tc.conv_kernel, tc.conv_stride) != (ec.conv_kernel, ec.conv_stride):
            raise ConfigError(f"config.pretrain.target_encoder={self.cfg.target_encoder!r}: its frames (conv kernel "
                              f"{tc.conv_kernel}, stride {tc.conv_stride}) differ from config.model's "
                              f"({ec.conv_kernel}, {ec.conv_stride}); targets need one label per encoder frame")
        if not 0 <= int(self.cfg.target_layer) <= tc.num_hidden_layers:
            raise ConfigError(f"config.pretrain.target_layer={self.cfg.target_layer}: expected 0..{tc.num_hidden_layers}"
                              f" (hidden states of {self.cfg.target_encoder})")
        return target

    def teacher(self):
        """The target encoder of iteration 2 (placed on the devices once by the loop), else None."""
        return self.target

    def _features(self, audio: jax.Array, attention_mask: jax.Array | None = None,
                  target_params: Any = None) -> jax.Array:
        if self.target is not None:
            params = self.target.params if target_params is None else target_params
            return self.target.targets(params, audio, attention_mask, (int(self.cfg.target_layer),))[0]
        ec = self.encoder_config
        window = ec.receptive_field
        feats = mfcc(audio, window=window, hop=ec.frame_stride, n_fft=max(512, 1 << (window - 1).bit_length()))
        if self.cfg.get("mfcc_cmn", False):  # per-clip cepstral mean normalisation: channel and voice offsets out
            from kdjax.models.encoder import frame_mask_from_attention_mask

            mask = (jnp.ones(feats.shape[:2], bool) if attention_mask is None else
                    frame_mask_from_attention_mask(ec, attention_mask, feats.shape[1]))
            w = mask[..., None].astype(feats.dtype)
            feats = feats - jnp.sum(feats * w, 1, keepdims=True) / jnp.maximum(jnp.sum(w, 1, keepdims=True), 1.0)
        return feats

    def _fit_kmeans(self) -> KMeansModel:
        source = pipeline.load_source(self.cfg.dataset, "train", self.cfg.data_dir)
        count = min(int(self.cfg.kmeans_utterances), len(source))
        frames = []
        features = jax.jit(self._features)
        for batch in pipeline.eval_batches([source[i] for i in range(count)], batch_size=16,
                                           max_samples=self.max_samples):
            feats = np.asarray(features(jnp.asarray(batch["input_values"]), jnp.asarray(batch["attention_mask"])))
            valid = _valid_frames(self.encoder_config, batch["attention_mask"], feats.shape[1])
            frames.append(feats[valid & batch["valid"][:, None]])
        frames = np.concatenate(frames)
        what = (f"layer {self.cfg.target_layer} frames of {self.cfg.target_encoder}" if self.target is not None
                else "MFCC frames")
        logging.info("k-means: %d clusters on %d %s of %d utterances", self.cfg.num_clusters, len(frames), what,
                     count)
        return fit_kmeans(frames, int(self.cfg.num_clusters), iterations=int(self.cfg.kmeans_iterations),
                          seed=int(self.config.seed))

    def _targets(self, audio: jax.Array, attention_mask: jax.Array, target_params: Any) -> jax.Array:
        return self.kmeans.assign(self._features(audio, attention_mask, target_params))

    # ---- the Task protocol --------------------------------------------------------------------------------------
    def _model(self, rngs: nnx.Rngs) -> HubertPretrainer:
        return HubertPretrainer(self.encoder_config, int(self.cfg.num_clusters), proj_dim=int(self.cfg.proj_dim),
                                temperature=float(self.cfg.temperature), rngs=rngs)

    def init(self, rng: jax.Array) -> TrainState:
        """Random encoder, projection and cluster embeddings; optimizer state."""
        params = nnx.state(self._model(nnx.Rngs(params=jax.random.fold_in(rng, 0))), nnx.Param)
        if self.warm_start is not None:
            params["encoder"] = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), self.warm_start,
                                             params["encoder"])
        return TrainState.create(params, self.optimizer.tx.init(params), rng)

    def _warm_start_params(self) -> Any:
        """Host params of `init_encoder` (an HF folder of config.model's architecture), or None."""
        if not self.cfg.get("init_encoder"):
            return None
        from kdjax.models.hf import load_state

        config, _, loaded = load_state(self.cfg.init_encoder)
        if config.to_hf() != self.encoder_config.to_hf():
            differ = sorted(k for k, v in self.encoder_config.to_hf().items() if config.to_hf().get(k) != v)
            raise ConfigError(f"config.pretrain.init_encoder={self.cfg.init_encoder!r}: its architecture differs "
                              f"from config.model in {differ}")
        return loaded

    def loss(self, params: Any, state: TrainState, batch: dict, teacher: Any) -> tuple[jax.Array, tuple]:
        """Masked prediction of the batch's k-means ids."""
        targets = self._targets(batch["input_values"], batch["attention_mask"], teacher)
        model = nnx.merge(self.graphdef, params)
        loss, metrics = masked_prediction_loss(model, batch["input_values"], batch["attention_mask"], targets,
                                               state.step_key())
        return loss, (metrics, state.extra)

    def eval_step(self, state: TrainState, batch: dict, teacher: Any, stream: str) -> dict[str, jax.Array]:
        """Sums of the masked-prediction loss and accuracy over the batch's valid clips (fixed masks)."""
        model = nnx.merge(self.graphdef, state.params)
        # A fixed key: the same frames are masked at every evaluation, so the numbers are comparable over time.
        _, metrics = masked_prediction_loss(model, batch["input_values"], batch["attention_mask"],
                                            self._targets(batch["input_values"], batch["attention_mask"], teacher),
                                            jax.random.key(0),
                                            deterministic=True)
        weight = jnp.sum(batch["valid"].astype(jnp.float32))
        return {"loss": metrics["loss"] * weight, "masked_accuracy": metrics["masked_accuracy"] * weight,
                "weight": weight}

    def eval_metrics(self, sums: dict) -> dict[str, Any]:
        """Masked-prediction loss and accuracy on the validation clips."""
        s = dict(sums["validation"])
        weight = max(float(s.pop("weight", 0.0)), 1.0)
        return {"validation": {k: float(v) / weight for k, v in s.items()}}

    def train_data(self) -> Iterator[dict]:
        """Random crops of `max_seconds` from the unlabeled training clips."""
        source = pipeline.load_source(self.cfg.dataset, "train", self.cfg.data_dir)
        return pipeline.train_iterator(source, batch_size=self.config.batch_size // jax.process_count(),
                                       max_samples=self.max_samples, seed=int(self.config.seed))

    def eval_data(self) -> dict[str, Iterable[dict]] | None:
        """This process's share of the first `eval_utterances` validation clips, in fixed-shape batches."""
        if not self.cfg.eval_utterances:
            return None
        source = pipeline.load_source(self.cfg.dataset, "validation", self.cfg.data_dir)
        return {"validation": pipeline.process_eval_batches(source, global_batch_size=self.config.batch_size,
                                             max_samples=self.max_samples, limit=int(self.cfg.eval_utterances))}

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of real (unpadded) audio in this process's batch."""
        return float(np.sum(host_batch["attention_mask"])) / SAMPLE_RATE

    def export(self, state: TrainState, workdir: str) -> dict[str, str]:
        """The encoder (without the projection and cluster embeddings) as an HF folder: WORKDIR/<export_dir>."""
        out = os.path.join(workdir, self.cfg.export_dir)
        kmeans = os.path.join(workdir, "kmeans.npz")
        if jax.process_index() == 0:
            save_pretrained(nnx.merge(self.graphdef, jax.tree.map(jnp.asarray, state.params)).encoder, out)
            self.kmeans.save(kmeans)
            logging.info("exported the pretrained encoder to %s", out)
        return {"encoder_hf": out, "kmeans": kmeans}


def _valid_frames(config: EncoderConfig, attention_mask: np.ndarray, frames: int) -> np.ndarray:
    from kdjax.models.encoder import frame_mask_from_attention_mask

    return np.asarray(frame_mask_from_attention_mask(config, jnp.asarray(attention_mask), frames))
