"""The fine-tuning config's structure (every field at kdjax's default) and the variant args the config files share.

configs/finetune_{kws,sv,multitask}.py (and the SUPERB configs) start from `finetune_config(mode)`, set their recipe
in the file, and apply `variants(config, arg)`. Paths are overrides, not variant args:
`--config.finetune.encoder=DIR`, `--config.finetune.one_stage.teacher=DIR`.
"""
import ml_collections

from kdjax.errors import ConfigError

from kdjax.distill.config import loss_fields, student_fields
from kdjax.train.loop import base_config, parse_args


def finetune_config(mode: str) -> ml_collections.ConfigDict:
    """The loop's base config plus every config.finetune field (kdjax.finetune.task documents them)."""
    config = base_config()
    config.task = "finetune"
    config.finetune = ml_collections.ConfigDict(dict(
        mode=mode, encoder="", init="pretrained", frozen=True, freeze_feature_encoder=True, encoder_lr=5e-5,
        # Time masking of fine-tuned encoders: HF's 0.05 / 10, but at least 0 spans, not HF's 2, which mask ~40% of a
        # 1 s clip (2 x 10 of 49 frames); with 0 the masked fraction is mask_time_prob on average at any length.
        mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=0,
        encoder_overrides=ml_collections.ConfigDict(), featurizer="weighted_sum",
        model_name="", role="", teacher_name="",
        kws_dataset="synthetic_speech/kws", sv_dataset="synthetic_speech/sv",
        data_dir=ml_collections.FieldReference(None, field_type=str),
        kws_seconds=1.0, sv_seconds=3.0, sv_eval_max_seconds=8.0, sv_head="xvector", sv_loss="aam",
        sv_width=512, sv_embed_dim=0, kws_weight=1.0, sv_weight=1.0, eval_batch_size=32,
        normalize=True, gain_db=0.0,  # waveform: zero mean / unit variance per clip; gain in dB (SUPERB: -3, raw)
        kws_hidden=256, kws_sampling="uniform", kws_dev="plain", kws_dev_seed=0,  # "balanced" / "balanced_resample"
        kws_batch_size=0,  # the KWS stream's batch (0: config.batch_size)
        sv_min_seconds=0.0, sv_agg_dim=1500, sv_margin_scale=30.0,
        sv_margin=ml_collections.FieldReference(None, field_type=float),  # None: the loss's default (AM 0.4, AAM 0.2)
        sv_eval="padded", sv_eval_batch_size=1, sv_eval_round_to=1,  # "equal_length": no padded row (SUPERB)
        sv_trials="", sv_dev_trials="",  # trial lists by name ("" = the dataset's first)
        sv_select="final",  # "final" | "validation" (best dev-trial EER) | "best_test" (SUPERB: best test EER)
        # a multi-task run's checkpoint: "kws" (best KWS validation accuracy) | "mean_error" (best mean of the KWS
        # validation error and the validation trials' EER; needs sv_select="validation")
        multitask_select="kws",
        cache="", cache_dtype="float32", cache_layers="all",  # frozen runs from cached features (finetune/cached.py)
        sv_train_max_seconds=0.0,  # cache: keep only the centre this long of SV training utterances (0: whole)
        labels=ml_collections.FieldReference(None, field_type=list),  # the KWS labels the run expects (checked)
        # kdjax.finetune.one_stage: distillation + task losses in one run; teacher "" = off (two-stage)
        one_stage=ml_collections.ConfigDict(dict(teacher="", weight=1.0, student=student_fields(exclude=("init",)),
                                                 loss=loss_fields()))))
    return config


def _bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def variants(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply the variant args every fine-tuning config accepts (comma separated after the colon):

    frozen=True|False, init=pretrained|random (random: the from-scratch baseline, never frozen), one_stage (a
    one-stage run: the encoder trains, give the teacher with --config.finetune.one_stage.teacher=DIR), steps=N,
    runlocal (a few steps on the tiny corpora, for tests).
    """
    args = parse_args(arg)
    unknown = sorted(set(args) - {"frozen", "init", "one_stage", "steps", "runlocal"})
    if unknown:
        raise ConfigError(f"unknown variant arg(s) {unknown}; expected frozen, init, one_stage, steps, runlocal "
                         "(paths are overrides: --config.finetune.encoder=DIR)")
    ft = config.finetune
    ft.init = args.get("init", ft.init)
    ft.frozen = _bool(args.get("frozen", "false" if "one_stage" in args or ft.init == "random" else str(ft.frozen)))
    if "steps" in args:
        config.total_steps = int(args["steps"])
    if "runlocal" in args:
        config.total_steps = int(args.get("steps", 6))
        config.batch_size = 8
        config.log_every = 2
        config.eval_every = 3
        config.checkpoint.save_every = 3
        config.progress = False
        ft.update(kws_dataset="synthetic_speech/kws_tiny", sv_dataset="synthetic_speech/sv_tiny", sv_seconds=1.0,
                  eval_batch_size=8, sv_width=64, sv_embed_dim=64)
    return config
