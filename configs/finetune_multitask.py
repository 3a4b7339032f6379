r"""Multi-task fine-tuning: one shared encoder, a KWS head and an SV head; each step takes a KWS batch and an SV batch
and minimises w_kws * L_kws + w_sv * L_sv (weights: config.finetune.kws_weight / sv_weight).

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/kws && kdjax prepare synthetic_speech/sv
  python -m kdjax.main --config=configs/finetune_multitask.py:encoder=runs/distill,frozen=False --workdir=runs/mt

Variant args (comma separated after the colon): `encoder=PATH`, `frozen=True|False`, `init=pretrained|random`,
`one_stage=TEACHER` (distillation + task losses in one run, see kdjax/finetune/one_stage.py), `runlocal`, `steps=N`.
"""
from kdjax.finetune.config import make_config


def get_config(arg=None):
    """The multi-task fine-tuning config; `arg` holds variant args (see the module docstring)."""
    return make_config("multitask", arg)
