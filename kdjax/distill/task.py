"""The distillation task for the training loop (DistilHuBERT / FitHuBERT-style hints).

The teacher (kdjax.distill.teacher.Teacher) is loaded once and handed to the loop, which passes its params to every
step as an argument: it is neither in the TrainState nor in any checkpoint. The optimizer sees only params =
{"student", "heads"}; s3prl's gradient multiplier on the conv features (feature_grad_mult) is the optimizer group
"feature_encoder"'s grad_scale (kdjax.train.optim). Inside the one jitted step the teacher runs deterministically
under stop_gradient and only up to the deepest target layer, optionally in bfloat16. At the end the student (without
heads) is written to WORKDIR/<export_dir> in HF format.

Config fields: see kdjax.distill.config.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from kdjax.data.audio import SAMPLE_RATE
from kdjax.distill import student as student_lib
from kdjax.distill.losses import LossConfig, distill_loss, layer_losses, make_heads
from kdjax.distill.teacher import Teacher
from kdjax.errors import ConfigError
from kdjax.models.encoder import Encoder
from kdjax.train import optim
from kdjax.train.state import TrainState, param_count
from kdjax.train.task import Task


def conv_groups(feature_grad_mult: float) -> dict[str, dict[str, Any]]:
    """The optimizer groups that give the conv stack s3prl's gradient multiplier (0 freezes it)."""
    if feature_grad_mult < 0:
        raise ConfigError(f"config.distill.feature_grad_mult={feature_grad_mult} must be >= 0")
    return {"feature_encoder": {"grad_scale": float(feature_grad_mult)}}


class Distillation(Task):
    """The Task (see kdjax.train.task.Task): student + heads trained to predict a frozen teacher's layers."""

    config_key = "distill"
    best_metric = "none"  # the exported student is the last one (as s3prl); eval metrics are logged only
    best_mode = "min"

    def __init__(self, config: Any):
        super().__init__(config)
        self.cfg = cfg = config.distill
        if cfg.batching not in ("crop", "sorted_buckets"):
            raise ConfigError(f"config.distill.batching={cfg.batching!r}: expected 'crop' or 'sorted_buckets'")
        if cfg.teacher_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"config.distill.teacher_dtype={cfg.teacher_dtype!r}: expected 'float32' or 'bfloat16'")
        self.settings = student_lib.student_settings(dict(cfg.student))
        self.loss_cfg = LossConfig.from_fields(dict(cfg.loss))
        self._teacher = Teacher.load(cfg.teacher, dtype=cfg.teacher_dtype)
        self.teacher_config = self._teacher.config
        self.student_config = student_lib.student_config(self.teacher_config, self.settings)
        self.loss_cfg.validate(self.student_config, self.teacher_config)
        self.max_samples = int(float(cfg.max_seconds) * SAMPLE_RATE)
        optim_cfg = config.optim.copy_and_resolve_references()
        optim_cfg.groups = {**conv_groups(float(cfg.feature_grad_mult)), **dict(optim_cfg.get("groups", {}) or {})}
        self.optimizer = optim.make_optimizer(optim_cfg, config.total_steps, param_labels=optim.encoder_labels,
                                              labels=optim.ENCODER_GROUPS)
        abstract = nnx.eval_shape(lambda: self._modules(nnx.Rngs(0), None))
        self.student_def, self.heads_def = nnx.graphdef(abstract[0]), nnx.graphdef(abstract[1])
        self.student_count = param_count(nnx.state(abstract[0], nnx.Param))
        self.teacher_count = self._teacher.num_params
        logging.info("distill: teacher %s (%d params) -> student %d layers x %d (%d params, %.1f%% fewer)",
                     cfg.teacher, self.teacher_count, self.student_config.num_hidden_layers,
                     self.student_config.hidden_size, self.student_count,
                     100.0 * (1 - self.student_count / self.teacher_count))

    def config_defaults(self):
        from kdjax.distill.config import distill_config

        return distill_config()

    def _modules(self, rngs: nnx.Rngs, teacher: Encoder | None) -> tuple[Encoder, nnx.Module]:
        init = self.settings["init"] if teacher is not None else "random"
        student = student_lib.build_student(self.student_config, teacher, init, rngs)
        heads = make_heads(self.loss_cfg, self.student_config, self.teacher_config, rngs=rngs)
        return student, heads

    # ---- the Task interface -------------------------------------------------------------------------------------
    def teacher(self) -> Teacher:
        """The frozen teacher (loaded once in the constructor)."""
        return self._teacher

    def init(self, rng: jax.Array) -> TrainState:
        """Student (its first layers copied from the teacher, or random) and heads; no teacher in the state."""
        teacher = self._teacher.module(jax.tree.map(jnp.asarray, self._teacher.params))
        student, heads = self._modules(nnx.Rngs(params=jax.random.fold_in(rng, 0)), teacher)
        params = {"student": nnx.state(student, nnx.Param), "heads": nnx.state(heads, nnx.Param)}
        return TrainState.create(params, self.optimizer.tx.init(params), rng)

    def loss(self, params: Any, state: TrainState, batch: dict, teacher: Any) -> tuple[jax.Array, tuple]:
        """DistilHuBERT's loss of the student's heads against the teacher's target layers."""
        targets = self._teacher.targets(teacher, batch["input_values"], batch.get("attention_mask"),
                                        self.loss_cfg.target_layers)
        loss, metrics = distill_loss(nnx.merge(self.student_def, params["student"]),
                                     nnx.merge(self.heads_def, params["heads"]), targets, batch, self.loss_cfg,
                                     rng=state.step_key(), deterministic=False)
        return loss, (metrics, state.extra)

    def eval_step(self, state: TrainState, batch: dict, teacher: Any, stream: str) -> dict[str, jax.Array]:
        """Frame-weighted sums of per-layer L1 and cos losses (padded frames and rows excluded, no dropout)."""
        targets = self._teacher.targets(teacher, batch["input_values"], batch["attention_mask"],
                                        self.loss_cfg.target_layers)
        student = nnx.merge(self.student_def, state.params["student"])
        out = student(batch["input_values"], batch["attention_mask"], output_hidden_states=self.loss_cfg.mode == "hint")
        mask = out.frame_mask & batch["valid"][:, None]
        l1, cos = layer_losses(nnx.merge(self.heads_def, state.params["heads"])(out), targets, mask)
        frames = jnp.sum(mask.astype(jnp.float32))
        return {"l1": l1 * frames, "cos": cos * frames, "frames": frames}

    def eval_metrics(self, sums: dict) -> dict[str, Any]:
        """Loss and per-layer L1 / cos on the validation clips."""
        s = sums["validation"]
        if not s:
            return {}
        frames = max(float(s["frames"]), 1.0)
        l1, cos = s["l1"] / frames, s["cos"] / frames
        per_layer = l1 + self.loss_cfg.cos_weight * cos
        loss = per_layer.mean() if self.loss_cfg.layer_reduction == "mean" else per_layer.sum()
        out = {"loss": float(loss)}
        for k, j in enumerate(self.loss_cfg.target_layers):
            out[f"l1/l{j}"], out[f"cos/l{j}"] = float(l1[k]), float(cos[k])
        return {"validation": out}

    def train_data(self) -> Iterator[dict]:
        """Random crops of at most `max_seconds` from the training split: every clip cropped or padded to it
        (batching "crop"), or s3prl's length-sorted batches padded to their longest clip ("sorted_buckets")."""
        from kdjax.data import pipeline, sampling

        cfg, per_process = self.cfg, self.config.batch_size // jax.process_count()
        source = pipeline.load_source(cfg.dataset, cfg.train_split, cfg.data_dir)
        if cfg.batching == "sorted_buckets":
            lengths = sampling.example_lengths(source, cache=pipeline.lengths_cache(cfg.dataset, cfg.train_split,
                                                                                   cfg.data_dir))
            return sampling.sorted_bucket_iterator(source, batch_size=per_process, max_samples=self.max_samples,
                                                   seed=int(self.config.seed), lengths=lengths,
                                                   pad_to=int(cfg.pad_to) or None)
        return pipeline.train_iterator(source, batch_size=per_process, max_samples=self.max_samples,
                                       seed=int(self.config.seed))

    def eval_data(self) -> dict[str, Iterable[dict]] | None:
        """This process's share of the first `eval_utterances` clips of the eval split (fixed-shape batches)."""
        if not self.cfg.eval_utterances or not self.cfg.eval_split:
            return None
        from kdjax.data import pipeline

        source = pipeline.load_source(self.cfg.dataset, self.cfg.eval_split, self.cfg.data_dir)
        return {"validation": pipeline.process_eval_batches(source, global_batch_size=self.config.batch_size,
                                                            max_samples=self.max_samples,
                                                            limit=int(self.cfg.eval_utterances))}

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of real (unpadded) audio in this process's batch."""
        return float(np.sum(host_batch["attention_mask"])) / SAMPLE_RATE

    def export(self, state: TrainState, workdir: str) -> dict[str, Any]:
        """The student without heads as an HF folder WORKDIR/<export_dir>; returns its path and parameter counts."""
        from kdjax.models.hf import save_pretrained

        out = os.path.join(workdir, self.cfg.export_dir)
        if jax.process_index() == 0:
            save_pretrained(nnx.merge(self.student_def, jax.tree.map(jnp.asarray, state.params["student"])), out)
            logging.info("exported the student to %s", out)
        return {"distill": {"student_params": self.student_count, "teacher_params": self.teacher_count,
                            "reduction": 1.0 - self.student_count / self.teacher_count},
                "encoder_hf": out}
