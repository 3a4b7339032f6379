"""Build a student EncoderConfig from a teacher's, and initialise the student from the teacher.

The default student is DistilHuBERT's (Chang et al., 2022; s3prl `pretrain/distiller/config_model.yaml`): the
teacher's conv feature encoder and width, 2 transformer layers, a feature projection WITHOUT the LayerNorm the HuBERT
teacher has (as `ntu-spml/distilhubert`), dropout 0.1 in the transformer, no projection dropout, no LayerDrop and no
time masking. It is an HF `HubertModel` whatever the teacher (a wav2vec2 feature projection always has a LayerNorm).

Initialisation from the teacher copies what s3prl copies (`init_teacher_conv_layers` + `init_teacher_encoder_layers`):
the conv feature encoder, the projection's Linear (and its LayerNorm only when both have one), the positional conv and
the first N transformer layers. The LayerNorm after the positional conv is NOT copied (s3prl does not copy it either).

A WavLM teacher initialises a WavLM student the same way, its relative position embedding and each copied layer's
gate included; that student needs model_type="wavlm" and feat_proj_layer_norm=True (WavLM's projection always has
a LayerNorm; configs/distill_wavlm_base_plus.py sets both).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flax import nnx

from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder

# Student settings (config.distill.student.<field>); None = the teacher's value.
STUDENT_DEFAULTS: dict[str, Any] = dict(
    model_type="hubert",
    num_hidden_layers=2,
    hidden_size=None,
    num_attention_heads=None,
    intermediate_size=None,
    conv_dim=None,
    conv_kernel=None,
    conv_stride=None,
    num_conv_pos_embeddings=None,
    num_conv_pos_embedding_groups=None,
    feat_proj_layer_norm=False,
    hidden_dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.1,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
    init="teacher",  # "teacher" | "random"
    dtype="float32",
    remat=False,
)
INITS = ("teacher", "random")

# Fields that must equal the teacher's for init="teacher" (the copied tensors' shapes or meaning depend on them).
_COPY_FIELDS = ("conv_dim", "conv_kernel", "conv_bias", "feat_extract_norm", "hidden_size", "num_attention_heads",
                "intermediate_size", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
                "do_stable_layer_norm", "hidden_act", "feat_extract_activation", "num_buckets",
                "max_bucket_distance")


def student_settings(settings: Mapping[str, Any] | None, where: str = "config.distill.student") -> dict[str, Any]:
    """The student settings with defaults filled in; unknown fields raise ConfigError naming them."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(STUDENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {unknown}; known: {sorted(STUDENT_DEFAULTS)}")
    out = {**STUDENT_DEFAULTS, **{k: v for k, v in settings.items()}}
    if out["init"] not in INITS:
        raise ConfigError(f"{where}.init={out['init']!r}: expected one of {INITS}")
    return out


def student_config(teacher: EncoderConfig, settings: Mapping[str, Any] | None = None,
                   where: str = "config.distill.student") -> EncoderConfig:
    """The student's EncoderConfig: the teacher's with the student settings applied (see STUDENT_DEFAULTS)."""
    s = student_settings(settings, where)
    changes = {k: v for k, v in s.items() if k != "init" and v is not None}
    for name in ("conv_dim", "conv_kernel", "conv_stride"):
        if name in changes:
            changes[name] = tuple(int(v) for v in changes[name])
    changes.update(mask_time_prob=0.0, mask_feature_prob=0.0)
    if changes.get("hidden_size") and s["num_attention_heads"] is None \
            and changes["hidden_size"] % teacher.num_attention_heads:
        raise ConfigError(f"{where}.hidden_size={changes['hidden_size']} is not divisible by the teacher's "
                          f"num_attention_heads={teacher.num_attention_heads}: set {where}.num_attention_heads")
    try:
        config = dataclasses.replace(teacher, **changes)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}".replace("EncoderConfig.", f"{where}.")) from None
    if config.conv_kernel != teacher.conv_kernel or config.conv_stride != teacher.conv_stride:
        raise ConfigError(f"{where}.conv_kernel/conv_stride = {config.conv_kernel}/{config.conv_stride} differ from "
                          f"the teacher's {teacher.conv_kernel}/{teacher.conv_stride}: student and teacher frames "
                          "must align one to one")
    if s["init"] == "teacher":
        check_teacher_init(config, teacher, where)
    return config


def check_teacher_init(student: EncoderConfig, teacher: EncoderConfig, where: str = "config.distill.student") -> None:
    """Raise ConfigError naming the first field that makes init='teacher' impossible."""
    if student.num_hidden_layers > teacher.num_hidden_layers:
        raise ConfigError(f"{where}.num_hidden_layers={student.num_hidden_layers} exceeds the teacher's "
                          f"{teacher.num_hidden_layers}: init='teacher' copies the first layers; use init='random'")
    if student.relative_position_bias != teacher.relative_position_bias:
        raise ConfigError(f"{where}.model_type={student.model_type!r} with a {teacher.model_type!r} teacher: "
                          "init='teacher' copies whole layers, and only WavLM layers have the gated relative "
                          f"position bias; set {where}.model_type={teacher.model_type!r} (WavLM: also "
                          f"feat_proj_layer_norm=True) or {where}.init='random'")
    for name in _COPY_FIELDS:
        if name in ("num_buckets", "max_bucket_distance") and not teacher.relative_position_bias:
            continue
        mine, theirs = getattr(student, name), getattr(teacher, name)
        if mine != theirs:
            raise ConfigError(f"{where}.{name}={mine!r} differs from the teacher's {theirs!r}: init='teacher' copies "
                              f"teacher tensors of equal shape; set {where}.init='random' or {name}={theirs!r}")


def copy_from_teacher(student: Encoder, teacher: Encoder) -> list[str]:
    """Copy the teacher's conv encoder, projection, positional conv and first layers into `student` (in place).

    Returns the copied module paths. Works on concrete and traced (jit) arrays alike.
    """
    check_teacher_init(student.config, teacher.config, where="student")
    copied = []

    def copy(path: str, dst: nnx.Module, src: nnx.Module) -> None:
        nnx.update(dst, nnx.state(src, nnx.Param))
        copied.append(path)

    copy("feature_encoder", student.feature_encoder, teacher.feature_encoder)
    copy("feature_projection.dense", student.feature_projection.dense, teacher.feature_projection.dense)
    if student.feature_projection.norm is not None and teacher.feature_projection.norm is not None:
        copy("feature_projection.norm", student.feature_projection.norm, teacher.feature_projection.norm)
    copy("pos_conv", student.pos_conv, teacher.pos_conv)
    if student.rel_pos_bias is not None and teacher.rel_pos_bias is not None:
        copy("rel_pos_bias", student.rel_pos_bias, teacher.rel_pos_bias)
    for i in range(student.config.num_hidden_layers):
        copy(f"layers.{i}", student.layers[i], teacher.layers[i])
    return copied


def build_student(config: EncoderConfig, teacher: Encoder | None, init: str, rngs: nnx.Rngs) -> Encoder:
    """A student Encoder, random or initialised from `teacher` (see copy_from_teacher)."""
    if init not in INITS:
        raise ConfigError(f"student init={init!r}: expected one of {INITS}")
    student = Encoder(config, rngs=rngs)
    if init == "teacher":
        if teacher is None:
            raise ConfigError("student init='teacher' needs the teacher")
        copy_from_teacher(student, teacher)
    return student
