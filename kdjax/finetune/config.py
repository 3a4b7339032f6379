"""Default fine-tuning configs; configs/finetune_{kws,sv,multitask}.py select one (big_vision-style variant args)."""
import ml_collections

from kdjax.distill.config import loss_fields, student_fields
from kdjax.train.loop import base_config, parse_args


def _bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def make_config(mode: str, arg=None) -> ml_collections.ConfigDict:
    """A fine-tuning config for `mode` ("kws", "sv" or "multitask") with variant args applied."""
    args = parse_args(arg)
    config = base_config()
    config.task = "finetune"
    config.seed = 0
    config.total_steps = int(args.get("steps", 2000))
    config.batch_size = 32
    config.log_every = 50
    config.eval_every = 250
    config.checkpoint.save_every = 500
    config.checkpoint.keep = 1
    config.optim.update(name="adam" if mode == "kws" else "adamw", lr=1e-4, schedule="constant", warmup_frac=0.0,
                        b2=0.999, eps=1e-8, weight_decay=1e-4 if mode != "kws" else 0.0, clip_norm=1.0)
    config.finetune = ml_collections.ConfigDict(dict(
        mode=mode, encoder=args.get("encoder", ""), init=args.get("init", "pretrained"),
        frozen=_bool(args.get("frozen", "false" if args.get("one_stage") else "true")),  # one-stage trains the encoder
        freeze_feature_encoder=True, encoder_lr=5e-5,
        # Time masking of fine-tuned encoders: HF's 0.05 / 10, but at least 0 spans, not HF's 2, which mask ~40% of a
        # 1 s clip (2 x 10 of 49 frames); with 0 the masked fraction is mask_time_prob on average at any length.
        mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=0,
        encoder_overrides=ml_collections.ConfigDict(), featurizer="weighted_sum",
        model_name=args.get("name", ""), role=args.get("role", ""), teacher_name=args.get("teacher", ""),
        kws_dataset="synthetic_speech/kws", sv_dataset="synthetic_speech/sv", data_dir=None,
        kws_seconds=1.0, sv_seconds=3.0, sv_eval_max_seconds=8.0, sv_head="xvector", sv_loss="aam",
        sv_width=512, sv_embed_dim=0,
        kws_weight=1.0, sv_weight=1.0, eval_batch_size=32,
        labels=None,  # optional: the KWS label list the run expects (checked against the dataset's)
        # kdjax.finetune.one_stage: distillation + task losses in one run; teacher "" = off (two-stage)
        one_stage=ml_collections.ConfigDict(dict(teacher=args.get("one_stage", ""), weight=1.0,
                                                 student=student_fields(exclude=("init",)), loss=loss_fields()))))
    if config.finetune.init == "random":
        config.finetune.frozen = False
    if "runlocal" in args:
        config.total_steps = int(args.get("steps", 6))
        config.batch_size = 8
        config.log_every = 2
        config.eval_every = 3
        config.checkpoint.save_every = 3
        config.progress = False
        config.finetune.update(kws_dataset="synthetic_speech/kws_tiny", sv_dataset="synthetic_speech/sv_tiny",
                               sv_seconds=1.0, eval_batch_size=8, sv_width=64, sv_embed_dim=64)
    return config
