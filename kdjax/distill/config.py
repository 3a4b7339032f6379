"""The config fields of the distillation task (config.distill), shared by configs/distill_*.py.

    config.task                      "distill" (kdjax.distill.task:Distillation)
    config.distill.teacher           HF checkpoint folder, or a repo id found in the local HF cache (never downloaded)
    config.distill.teacher_dtype     "float32" | "bfloat16": the teacher's compute dtype (its params stay float32)
    config.distill.student.*         kdjax.distill.student.STUDENT_DEFAULTS (None = the teacher's value), incl. init
    config.distill.loss.*            kdjax.distill.losses.LossConfig: mode, target_layers, student_layers, cos_weight,
                                     include_padding, layer_reduction, head_inter_dim
    config.distill.feature_grad_mult gradient scale into the student's conv stack (s3prl: 0.1; 0 freezes it)
    config.distill.dataset / train_split / eval_split / data_dir / max_seconds / eval_utterances
    config.distill.batching / pad_to "crop" (kdjax) or "sorted_buckets" (s3prl's length-sorted batches)
    config.distill.export_dir        the student (without heads) is written to WORKDIR/<export_dir> in HF format
"""
from __future__ import annotations

import ml_collections

from kdjax.errors import ConfigError

from kdjax.distill.losses import LossConfig
from kdjax.distill.student import STUDENT_DEFAULTS
from kdjax.train.loop import base_config, parse_args

TASK = "distill"


def student_layers_arg(value: str) -> int:
    """'2L' or '2' -> 2 (the `student=` variant arg)."""
    return int(value.rstrip("Ll"))


def _field(name: str, value):
    """None defaults become typed references, so `--config.distill.student.hidden_size=384` parses."""
    if value is not None:
        return value
    return ml_collections.FieldReference(None, field_type=tuple if name.startswith("conv_") else int)


def student_fields(exclude: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """The student settings (kdjax.distill.student.STUDENT_DEFAULTS) as a ConfigDict."""
    return ml_collections.ConfigDict({k: _field(k, v) for k, v in STUDENT_DEFAULTS.items() if k not in exclude})


def loss_fields() -> ml_collections.ConfigDict:
    """The distillation loss settings (kdjax.distill.losses.LossConfig) as a ConfigDict.

    Layer lists stay tuples: config flags override tuples (`--config.distill.loss.target_layers='(4, 8, 12)'`), not
    lists; a list assigned in a config file is converted.
    """
    return ml_collections.ConfigDict(dict(LossConfig().__dict__))


def distill_config() -> ml_collections.ConfigDict:
    """The loop's base config plus every config.distill field at its DistilHuBERT default."""
    config = base_config()
    config.task = TASK
    config.distill = ml_collections.ConfigDict(dict(
        teacher="facebook/hubert-base-ls960", teacher_dtype="float32",
        student=student_fields(),
        loss=loss_fields(),
        feature_grad_mult=0.1,
        dataset="librispeech", train_split="train_clean_100+train_clean_360+train_other_500",
        eval_split="dev_clean", data_dir=ml_collections.FieldReference(None, field_type=str),
        max_seconds=15.6, eval_utterances=256, export_dir="student_hf",
        # "crop": every clip cropped (or padded) to max_seconds; "sorted_buckets": s3prl's length-sorted batches,
        # each padded to its longest clip (rounded up to pad_to samples, which bounds the shapes jit compiles)
        batching="crop", pad_to=0,
    ))
    return config


def variants(config: ml_collections.ConfigDict, arg: str | None, teacher_layers: int) -> ml_collections.ConfigDict:
    """Apply the distillation configs' variant args: student=<N>L, steps=N, bf16 (bfloat16 teacher), hint
    (FitHuBERT-style layer-to-layer hints, student layer i -> teacher layer teacher_layers * i / N), random (random
    student init), runlocal (a few steps on the synthetic tiny corpus; still needs a teacher)."""
    args = parse_args(arg)
    unknown = sorted(set(args) - {"student", "steps", "bf16", "hint", "random", "runlocal"})
    if unknown:
        raise ConfigError(f"unknown variant arg(s) {unknown}; expected student, steps, bf16, hint, random, runlocal "
                          "(paths are overrides: --config.distill.teacher=DIR)")
    d = config.distill
    if "steps" in args:
        config.total_steps = int(args["steps"])
    if "student" in args:
        d.student.num_hidden_layers = student_layers_arg(args["student"])
    if "bf16" in args:
        d.teacher_dtype = "bfloat16"
    if "random" in args:
        d.student.init = "random"
    if "runlocal" in args:
        config.total_steps = int(args.get("steps", 4))
        config.batch_size = 8
        config.log_every = 2
        config.eval_every = 0
        config.checkpoint.save_every = 1000
        config.progress = False
        d.update(dataset="synthetic_speech/unlabeled_tiny", train_split="train", eval_split="validation",
                 max_seconds=1.0, eval_utterances=8, batching="crop")
    if "hint" in args:
        n = d.student.num_hidden_layers
        d.loss.mode = "hint"
        d.loss.student_layers = tuple(range(1, n + 1))
        d.loss.target_layers = tuple(teacher_layers * i // n for i in range(1, n + 1))
    return config
