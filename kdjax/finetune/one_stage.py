"""The one-stage option (beyond the paper): distillation and task losses in one run, as OS-KDFT does for SV.

Two-stage (the paper): distil a student on unlabeled speech, then fine-tune it. One-stage: train the student on
    loss = sum_task w_task * L_task + w * L_distill
where L_distill is DistilHuBERT's layer prediction loss (kdjax.distill.losses) on the same task batches, averaged over
the task streams, against a frozen kdjax.distill.teacher.Teacher that the loop passes to every step (never part of the
state or a checkpoint; no dropout, no time masking).

    config.finetune.one_stage.teacher    "" = off (two-stage); else the teacher: an HF folder or a kdjax workdir
    config.finetune.one_stage.weight     w above
    config.finetune.one_stage.student.*  the student built from the teacher when config.finetune.encoder is "":
                                         kdjax.distill.student.STUDENT_DEFAULTS without `init`, which follows
                                         config.finetune.init ("pretrained": the teacher's first layers are copied,
                                         as DistilHuBERT and OS-KDFT do; "random": nothing is copied)
    config.finetune.one_stage.loss.*     kdjax.distill.losses.LossConfig (target layers, cos weight, ...)

With config.finetune.encoder set, that checkpoint is the student (e.g. a distilled student, kept close to its teacher
while it is fine-tuned). The prediction heads are trained with the task heads and are not exported.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from kdjax.distill import student as student_lib
from kdjax.distill.losses import LossConfig, make_heads, score_student
from kdjax.distill.teacher import Teacher
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import EncoderOutput

WHERE = "config.finetune.one_stage"


def enabled(cfg: Any) -> bool:
    """Whether config.finetune asks for a one-stage run."""
    one_stage = cfg.get("one_stage", None)
    return bool(one_stage and one_stage.get("teacher", ""))


class OneStage:
    """The frozen teacher, the student it builds and the distillation loss of a one-stage run."""

    def __init__(self, cfg: Any, teacher_dir: str, init: str):
        self.weight = float(cfg.weight)
        if self.weight < 0:
            raise ConfigError(f"{WHERE}.weight={self.weight} must be >= 0")
        self.teacher = Teacher.load(teacher_dir)
        self.teacher_dir = teacher_dir
        self.teacher_config: EncoderConfig = self.teacher.config
        self.loss_cfg = LossConfig.from_fields(dict(cfg.loss), where=f"{WHERE}.loss")
        settings = dict(cfg.get("student", {}) or {})
        if "init" in settings:
            raise ConfigError(f"{WHERE}.student.init: set config.finetune.init instead ('pretrained' copies the "
                              "teacher's first layers, 'random' does not)")
        self.student_settings = {**settings, "init": "teacher" if init == "pretrained" else "random"}

    def student_config(self) -> EncoderConfig:
        """The student's EncoderConfig, built from the teacher's (config.finetune.encoder is empty)."""
        return student_lib.student_config(self.teacher_config, self.student_settings, where=f"{WHERE}.student")

    def student_params(self, student_config: EncoderConfig) -> nnx.State | None:
        """Student params with the teacher's first layers copied in (None for init='random')."""
        if self.student_settings["init"] != "teacher":
            return None
        student = student_lib.build_student(student_config, self.teacher.module(), "teacher", nnx.Rngs(0))
        return jax.tree.map(np.asarray, nnx.state(student, nnx.Param))

    def check(self, student_config: EncoderConfig) -> None:
        """Validate the loss settings against the student and the teacher (once, when the run is built)."""
        self.loss_cfg.validate(student_config, self.teacher_config, where=f"{WHERE}.loss")

    def heads(self, student_config: EncoderConfig, rngs: nnx.Rngs) -> nnx.Module:
        """The prediction heads (or hint projections) from the student's width to the teacher's."""
        return make_heads(self.loss_cfg, student_config, self.teacher_config, rngs=rngs, where=f"{WHERE}.loss")

    def targets(self, teacher_params: Any, batch: dict) -> jax.Array:
        """The teacher's target layers [N, B, T, D] for a batch (no gradient)."""
        return self.teacher.targets(teacher_params, batch["input_values"], batch["attention_mask"],
                                    self.loss_cfg.target_layers)

    def loss(self, heads: nnx.Module, out: EncoderOutput, targets: jax.Array) -> tuple[jax.Array, dict]:
        """(L_distill, metrics) of the student's output against the teacher's targets, padded frames excluded."""
        return score_student(heads, out, targets, self.loss_cfg, out.frame_mask)
