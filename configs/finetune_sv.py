r"""Speaker verification (x-vector head, AAM-softmax, cosine scoring, EER and minDCF) on a frozen or fine-tuned
encoder: kdjax's recipe. SUPERB's ASV recipe differs (AM-softmax, no BatchNorm, 8 s crops, batch 50, 200k steps):
see configs/superb_asv.py where present.

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/sv
  python -m kdjax.main --config=configs/finetune_sv.py --workdir=runs/sv_student --config.finetune.encoder=runs/distill
  python -m kdjax.main --config=configs/finetune_sv.py --workdir=runs/sv_ecapa --config.finetune.encoder=runs/distill \
      --config.finetune.sv_head=ecapa --config.finetune.sv_loss=am

Variant args (kdjax.finetune.config.variants): `frozen=True|False`, `init=pretrained|random`, `one_stage` (give
--config.finetune.one_stage.teacher=DIR), `steps=N`, `runlocal`. Training crops are up to 3 s here (the synthetic
utterances are 1-4 s).
"""
from kdjax.finetune.config import finetune_config, variants


def get_config(arg=None):
    """The SV fine-tuning config; `arg` holds variant args (see the module docstring)."""
    config = finetune_config("sv")
    config.seed = 0
    config.total_steps = 2000
    config.batch_size = 32
    config.log_every = 50
    config.eval_every = 250
    config.checkpoint.update(save_every=500, keep=1)
    config.optim.update(name="adamw", lr=1e-4, schedule="constant", warmup_frac=0.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=1e-4, clip_norm=1.0)
    ft = config.finetune
    ft.update(frozen=True, featurizer="weighted_sum", sv_dataset="synthetic_speech/sv", sv_seconds=3.0,
              sv_eval_max_seconds=8.0, sv_head="xvector", sv_loss="aam", sv_width=512, sv_embed_dim=0,
              eval_batch_size=32)
    ft.update(freeze_feature_encoder=True, encoder_lr=5e-5, mask_time_prob=0.05, mask_time_length=10,
              mask_time_min_masks=0)  # used when frozen=False
    ft.one_stage.update(weight=1.0)
    ft.one_stage.student.num_hidden_layers = 2
    ft.one_stage.loss.target_layers = (4, 8, 12)
    return variants(config, arg)
