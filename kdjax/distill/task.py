"""The distillation task for the training loop (DistilHuBERT / FitHuBERT-style hints).

The teacher is loaded once with kdjax.from_pretrained and carried, frozen, in TrainState.extra["teacher"] (so every
device holds it and a resumed run needs nothing else); the optimizer sees only params = {"student", "heads"}. Inside
the one jitted step the teacher runs deterministically under stop_gradient and only up to the deepest target layer,
optionally in bfloat16. At the end the student (without heads) is written to WORKDIR/<export_dir> in HF format.

Config fields: see kdjax.distill.config.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from kdjax.distill import student as student_lib
from kdjax.distill.losses import LossConfig, distill_loss, layer_losses, make_heads, teacher_targets
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder
from kdjax.train import optim
from kdjax.train.state import TrainState, param_count

SAMPLE_RATE = 16000
FIELDS = ("teacher", "teacher_dtype", "student", "loss", "feature_grad_mult", "dataset", "train_split", "eval_split",
          "data_dir", "max_seconds", "eval_utterances", "export_dir")


def _is_feature_encoder(path: tuple) -> bool:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return len(names) > 1 and names[0] == "student" and names[1] == "feature_encoder"


def scale_feature_encoder_grads(grads: Any, mult: float) -> Any:
    """Multiply the gradient of params["student"]["feature_encoder"] by `mult`.

    Equals s3prl's GradMultiply on the conv features (the conv stack gets gradient only through them).
    """
    return jax.tree_util.tree_map_with_path(lambda p, g: g * mult if _is_feature_encoder(p) else g, grads)


def make_train_step(student_def: Any, heads_def: Any, teacher_def: Any, loss_cfg: LossConfig,
                    tx: optax.GradientTransformation, *, feature_grad_mult: float = 1.0,
                    lr_fn: Callable[[jax.Array], jax.Array] | None = None) -> Callable:
    """A pure `train_step(state, batch) -> (state, metrics)` over params {"student", "heads"}, teacher in extra."""

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        teacher = nnx.merge(teacher_def, state.extra["teacher"])
        targets = teacher_targets(teacher, batch["input_values"], batch.get("attention_mask"),
                                  loss_cfg.target_layers)

        def loss_fn(params):
            return distill_loss(nnx.merge(student_def, params["student"]), nnx.merge(heads_def, params["heads"]),
                                targets, batch, loss_cfg, rng=state.step_key(), deterministic=False,
                                freeze_feature_encoder=feature_grad_mult == 0)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if feature_grad_mult not in (0.0, 1.0):
            grads = scale_feature_encoder_grads(grads, feature_grad_mult)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


class Distillation:
    """The Task (see kdjax.train.loop.Task): student + heads trained to predict a frozen teacher's layers."""

    best_metric = "none"  # the exported student is the last one (as s3prl); eval metrics are logged only
    best_mode = "min"

    def __init__(self, config: Any):
        self.config = config
        self.cfg = cfg = config.distill
        unknown = sorted(set(cfg.keys()) - set(FIELDS))
        if unknown:
            raise ConfigError(f"config.distill has unknown field(s) {unknown}; known: {sorted(FIELDS)}")
        if cfg.teacher_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"config.distill.teacher_dtype={cfg.teacher_dtype!r}: expected 'float32' or 'bfloat16'")
        if config.batch_size % jax.process_count():
            raise ConfigError(f"config.batch_size={config.batch_size} must divide by the process count "
                              f"{jax.process_count()}")
        self.settings = student_lib.student_settings(dict(cfg.student))
        self.loss_cfg = LossConfig.from_fields(dict(cfg.loss))
        from kdjax.models.hf import from_pretrained

        teacher = from_pretrained(cfg.teacher, dtype=cfg.teacher_dtype)
        self.teacher_config: EncoderConfig = teacher.config
        self.student_config = student_lib.student_config(self.teacher_config, self.settings)
        self.loss_cfg.validate(self.student_config, self.teacher_config)
        self.teacher_def, teacher_params = nnx.split(teacher, nnx.Param)
        self.teacher_params = jax.tree.map(np.asarray, teacher_params)
        self.teacher_count = param_count(self.teacher_params)
        self.feature_grad_mult = float(cfg.feature_grad_mult)
        self.max_samples = int(float(cfg.max_seconds) * SAMPLE_RATE)
        self.opt = optim.make_optimizer(config.optim, config.total_steps)
        abstract = nnx.eval_shape(lambda: self._modules(nnx.Rngs(0), None))
        self.student_def, self.heads_def = nnx.graphdef(abstract[0]), nnx.graphdef(abstract[1])
        self.student_count = param_count(nnx.state(abstract[0], nnx.Param))
        self.train_step = make_train_step(self.student_def, self.heads_def, self.teacher_def, self.loss_cfg,
                                          self.opt.tx, feature_grad_mult=self.feature_grad_mult, lr_fn=self.opt.lr)
        self._eval_step = jax.jit(self._eval_sums)
        logging.info("distill: teacher %s (%d params) -> student %d layers x %d (%d params, %.1f%% fewer)",
                     cfg.teacher, self.teacher_count, self.student_config.num_hidden_layers,
                     self.student_config.hidden_size, self.student_count,
                     100.0 * (1 - self.student_count / self.teacher_count))

    def _modules(self, rngs: nnx.Rngs, teacher: Encoder | None) -> tuple[Encoder, nnx.Module]:
        init = self.settings["init"] if teacher is not None else "random"
        student = student_lib.build_student(self.student_config, teacher, init, rngs)
        heads = make_heads(self.loss_cfg, self.student_config, self.teacher_config, rngs=rngs)
        return student, heads

    # ---- the Task protocol --------------------------------------------------------------------------------------
    def init(self, config: Any, rng: jax.Array) -> TrainState:
        """Student (from the teacher or random) and heads; the frozen teacher in extra["teacher"]."""
        teacher_params = jax.tree.map(jnp.asarray, self.teacher_params)
        teacher = nnx.merge(self.teacher_def, teacher_params)
        student, heads = self._modules(nnx.Rngs(params=jax.random.fold_in(rng, 0)), teacher)
        params = {"student": nnx.state(student, nnx.Param), "heads": nnx.state(heads, nnx.Param)}
        return TrainState.create(params, self.opt.tx.init(params), rng, extra={"teacher": teacher_params})

    def _eval_sums(self, params: Any, teacher_params: Any, batch: dict) -> dict[str, jax.Array]:
        teacher = nnx.merge(self.teacher_def, teacher_params)
        targets = teacher_targets(teacher, batch["input_values"], batch["attention_mask"], self.loss_cfg.target_layers)
        student = nnx.merge(self.student_def, params["student"])
        out = student(batch["input_values"], batch["attention_mask"], output_hidden_states=self.loss_cfg.mode == "hint")
        mask = out.frame_mask & batch["valid"][:, None]
        l1, cos = layer_losses(nnx.merge(self.heads_def, params["heads"])(out), targets, mask)
        frames = jnp.sum(mask.astype(jnp.float32))
        return {"l1": l1 * frames, "cos": cos * frames, "frames": frames}

    def evaluate(self, state: TrainState, data: Iterable[dict]) -> dict[str, Any]:
        """Loss and per-layer L1 / cos on the validation clips (padded frames excluded, no dropout)."""
        sums: dict[str, np.ndarray] = {}
        for batch in data:
            for k, v in self._eval_step(state.params, state.extra["teacher"], batch).items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        if not sums:
            return {}
        frames = max(float(sums["frames"]), 1.0)
        l1, cos = sums["l1"] / frames, sums["cos"] / frames
        per_layer = l1 + self.loss_cfg.cos_weight * cos
        loss = per_layer.mean() if self.loss_cfg.layer_reduction == "mean" else per_layer.sum()
        out = {"loss": float(loss)}
        for k, j in enumerate(self.loss_cfg.target_layers):
            out[f"l1/l{j}"], out[f"cos/l{j}"] = float(l1[k]), float(cos[k])
        return {"validation": out}

    def train_data(self) -> Iterator[dict]:
        """Random crops of at most `max_seconds` from the training split."""
        from kdjax.data import pipeline

        source = pipeline.load_source(self.cfg.dataset, self.cfg.train_split, self.cfg.data_dir)
        return pipeline.train_iterator(source, batch_size=self.config.batch_size // jax.process_count(),
                                       max_samples=self.max_samples, seed=int(self.config.seed))

    def eval_data(self) -> Iterable[dict] | None:
        """This process's share of the first `eval_utterances` clips of the eval split (fixed-shape batches)."""
        if not self.cfg.eval_utterances or not self.cfg.eval_split:
            return None
        from kdjax.data import pipeline

        source = pipeline.load_source(self.cfg.dataset, self.cfg.eval_split, self.cfg.data_dir)
        return pipeline.process_eval_batches(source, global_batch_size=self.config.batch_size,
                                             max_samples=self.max_samples, limit=int(self.cfg.eval_utterances))

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of real (unpadded) audio in this process's batch."""
        return float(np.sum(host_batch["attention_mask"])) / SAMPLE_RATE

    def export(self, state: TrainState, workdir: str) -> dict[str, Any]:
        """The student without heads as an HF folder WORKDIR/<export_dir>; returns the parameter counts."""
        from jax.experimental import multihost_utils

        from kdjax.models.hf import save_pretrained

        params = multihost_utils.process_allgather(state.params["student"], tiled=True)
        out = os.path.join(workdir, self.cfg.export_dir)
        if jax.process_index() == 0:
            save_pretrained(nnx.merge(self.student_def, jax.tree.map(jnp.asarray, params)), out)
            logging.info("exported the student to %s", out)
        return {"distill": {"student_params": self.student_count, "teacher_params": self.teacher_count,
                            "reduction": 1.0 - self.student_count / self.teacher_count, "student_hf": out}}
