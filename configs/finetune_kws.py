r"""Keyword spotting (12 classes, Speech-Commands-style) on a frozen or fine-tuned encoder: kdjax's recipe with the
SUPERB KWS downstream head (weighted layer sum -> Linear -> mean over frames -> Linear). For s3prl's exact recipe
(class-balanced sampling, 200k steps) see configs/superb_ks.py where present.

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/kws
  python -m kdjax.main --config=configs/finetune_kws.py --workdir=runs/kws_student \
      --config.finetune.encoder=runs/distill
  python -m kdjax.main --config=configs/finetune_kws.py:frozen=False --workdir=runs/kws_t_ft \
      --config.finetune.encoder=runs/teacher_hf

`finetune.encoder` is an HF folder or a finished kdjax run (its results.json names the exported encoder).
Variant args (kdjax.finetune.config.variants): `frozen=True|False`, `init=pretrained|random` (random: the
from-scratch baseline), `one_stage` (distillation + task losses in one run, kdjax/finetune/one_stage.py), `steps=N`,
`runlocal`. One-stage (a 2-layer student built from the teacher's first layers, targets 4, 8, 12):

  python -m kdjax.main --config=configs/finetune_kws.py:one_stage --workdir=runs/kws_one_stage \
      --config.finetune.one_stage.teacher=runs/teacher_hf
"""
from kdjax.finetune.config import finetune_config, variants


def get_config(arg=None):
    """The KWS fine-tuning config; `arg` holds variant args (see the module docstring)."""
    config = finetune_config("kws")
    config.seed = 0
    config.total_steps = 2000
    config.batch_size = 32
    config.log_every = 50
    config.eval_every = 250  # validation accuracy picks the exported checkpoint
    config.checkpoint.update(save_every=500, keep=1)
    config.optim.update(name="adam", lr=1e-4, schedule="constant", warmup_frac=0.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, clip_norm=1.0)
    ft = config.finetune
    ft.update(frozen=True, featurizer="weighted_sum", kws_seconds=1.0, kws_dataset="synthetic_speech/kws",
              eval_batch_size=32)
    ft.update(freeze_feature_encoder=True, encoder_lr=5e-5, mask_time_prob=0.05, mask_time_length=10,
              mask_time_min_masks=0)  # used when frozen=False
    ft.one_stage.update(weight=1.0)
    ft.one_stage.student.num_hidden_layers = 2
    ft.one_stage.loss.target_layers = (4, 8, 12)
    return variants(config, arg)
