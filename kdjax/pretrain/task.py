"""HuBERT pre-training (iteration 1) as a training-loop task: masked prediction of k-means ids of MFCC frames.

Used offline to make small teachers (the demo's teacher comes from configs/pretrain_tiny_hubert.py). The k-means
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
import optax
from absl import logging
from flax import nnx

from kdjax.data import pipeline
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.hf import save_pretrained
from kdjax.pretrain.features import mfcc
from kdjax.pretrain.kmeans import KMeansModel, fit_kmeans
from kdjax.pretrain.objective import HubertPretrainer, masked_prediction_loss
from kdjax.train import optim
from kdjax.train.state import TrainState

SAMPLE_RATE = 16000


def encoder_config(model_fields: Any) -> EncoderConfig:
    """EncoderConfig from a config's `model` ConfigDict (HF field names), with a clear error for unknown fields."""
    fields = dict(model_fields)
    try:
        return EncoderConfig(**fields)
    except TypeError as e:
        known = sorted(EncoderConfig.__dataclass_fields__)
        raise ConfigError(f"config.model: {e}; known EncoderConfig fields: {known}") from None


class HubertPretraining:
    """The Task (see kdjax.train.loop.Task): encoder + projection + cluster embeddings, trained from scratch."""

    best_metric = "validation/loss"
    best_mode = "min"

    def __init__(self, config: Any):
        self.config = config
        self.cfg = cfg = config.pretrain
        self.encoder_config = encoder_config(config.model)
        if self.encoder_config.model_type != "hubert":
            raise ConfigError(f"config.model.model_type={self.encoder_config.model_type!r}: pretraining makes HuBERT")
        if self.encoder_config.mask_time_prob <= 0:
            raise ConfigError("config.model.mask_time_prob must be > 0: masked prediction needs masked frames")
        if config.batch_size % jax.process_count():
            raise ConfigError(f"config.batch_size={config.batch_size} must divide by the process count "
                              f"{jax.process_count()}")
        self.max_samples = int(cfg.max_seconds * SAMPLE_RATE)
        self.opt = optim.make_optimizer(config.optim, config.total_steps)
        self.kmeans = self._fit_kmeans()
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: self._model(nnx.Rngs(0))))
        self._eval_step = jax.jit(self._eval_sums)

    # ---- targets ------------------------------------------------------------------------------------------------
    def _features(self, audio: jax.Array) -> jax.Array:
        ec = self.encoder_config
        window = ec.receptive_field
        return mfcc(audio, window=window, hop=ec.frame_stride, n_fft=max(512, 1 << (window - 1).bit_length()))

    def _fit_kmeans(self) -> KMeansModel:
        source = pipeline.load_source(self.cfg.dataset, "train", self.cfg.data_dir)
        count = min(int(self.cfg.kmeans_utterances), len(source))
        frames = []
        for batch in pipeline.eval_batches([source[i] for i in range(count)], batch_size=16,
                                           max_samples=self.max_samples):
            feats = np.asarray(self._features(jnp.asarray(batch["input_values"])))
            valid = _valid_frames(self.encoder_config, batch["attention_mask"], feats.shape[1])
            frames.append(feats[valid & batch["valid"][:, None]])
        frames = np.concatenate(frames)
        logging.info("k-means: %d clusters on %d MFCC frames of %d utterances", self.cfg.num_clusters, len(frames),
                     count)
        return fit_kmeans(frames, int(self.cfg.num_clusters), iterations=int(self.cfg.kmeans_iterations),
                          seed=int(self.config.seed))

    def _targets(self, audio: jax.Array) -> jax.Array:
        return self.kmeans.assign(self._features(audio))

    # ---- the Task protocol --------------------------------------------------------------------------------------
    def _model(self, rngs: nnx.Rngs) -> HubertPretrainer:
        return HubertPretrainer(self.encoder_config, int(self.cfg.num_clusters), proj_dim=int(self.cfg.proj_dim),
                                temperature=float(self.cfg.temperature), rngs=rngs)

    def init(self, config: Any, rng: jax.Array) -> TrainState:
        """Random encoder, projection and cluster embeddings; optimizer state."""
        params = nnx.state(self._model(nnx.Rngs(params=jax.random.fold_in(rng, 0))), nnx.Param)
        return TrainState.create(params, self.opt.tx.init(params), rng)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        """One step of masked prediction."""
        targets = self._targets(batch["input_values"])

        def loss_fn(params):
            model = nnx.merge(self.graphdef, params)
            return masked_prediction_loss(model, batch["input_values"], batch["attention_mask"], targets,
                                          state.step_key())

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.opt.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "lr": self.opt.lr(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval_sums(self, params: Any, batch: dict) -> dict[str, jax.Array]:
        model = nnx.merge(self.graphdef, params)
        # A fixed key: the same frames are masked at every evaluation, so the numbers are comparable over time.
        _, metrics = masked_prediction_loss(model, batch["input_values"], batch["attention_mask"],
                                            self._targets(batch["input_values"]), jax.random.key(0),
                                            deterministic=True)
        weight = jnp.sum(batch["valid"].astype(jnp.float32))
        return {"loss": metrics["loss"] * weight, "masked_accuracy": metrics["masked_accuracy"] * weight,
                "weight": weight}

    def evaluate(self, state: TrainState, data: Iterable[dict]) -> dict[str, Any]:
        """Masked-prediction loss and accuracy on the validation clips (fixed masks)."""
        sums: dict[str, float] = {}
        for batch in data:
            for k, v in self._eval_step(state.params, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        weight = max(sums.pop("weight", 0.0), 1.0)
        return {"validation": {k: v / weight for k, v in sums.items()}}

    def train_data(self) -> Iterator[dict]:
        """Random crops of `max_seconds` from the unlabeled training clips."""
        source = pipeline.load_source(self.cfg.dataset, "train", self.cfg.data_dir)
        return pipeline.train_iterator(source, batch_size=self.config.batch_size // jax.process_count(),
                                       max_samples=self.max_samples, seed=int(self.config.seed))

    def eval_data(self) -> Iterable[dict] | None:
        """This process's share of the first `eval_utterances` validation clips, in fixed-shape batches."""
        if not self.cfg.eval_utterances:
            return None
        source = pipeline.load_source(self.cfg.dataset, "validation", self.cfg.data_dir)
        return pipeline.process_eval_batches(source, global_batch_size=self.config.batch_size,
                                             max_samples=self.max_samples, limit=int(self.cfg.eval_utterances))

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of real (unpadded) audio in this process's batch."""
        return float(np.sum(host_batch["attention_mask"])) / SAMPLE_RATE

    def export(self, state: TrainState, workdir: str) -> None:
        """The encoder (without the projection and cluster embeddings) as an HF folder: WORKDIR/teacher_hf."""
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(state.params, tiled=True)
        if jax.process_index() != 0:
            return
        model = nnx.merge(self.graphdef, params)
        out = os.path.join(workdir, self.cfg.export_dir)
        save_pretrained(model.encoder, out)
        self.kmeans.save(os.path.join(workdir, "kmeans.npz"))
        logging.info("exported the pretrained encoder to %s", out)


def _valid_frames(config: EncoderConfig, attention_mask: np.ndarray, frames: int) -> np.ndarray:
    from kdjax.models.encoder import frame_mask_from_attention_mask

    return np.asarray(frame_mask_from_attention_mask(config, jnp.asarray(attention_mask), frames))
