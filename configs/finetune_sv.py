r"""Speaker verification (SUPERB protocol: x-vector head, AAM-softmax, cosine scoring, EER and minDCF).

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/sv
  python -m kdjax.main --config=configs/finetune_sv.py:encoder=runs/distill --workdir=runs/sv_student
  python -m kdjax.main --config=configs/finetune_sv.py:encoder=runs/distill --workdir=runs/sv_ecapa \
      --config.finetune.sv_head=ecapa --config.finetune.sv_loss=am

Variant args (comma separated after the colon): `encoder=PATH`, `frozen=True|False`, `init=pretrained|random`,
`one_stage=TEACHER` (distillation + task losses in one run, see kdjax/finetune/one_stage.py), `runlocal`, `steps=N`.
Defaults follow SUPERB's SV downstream: AdamW, lr 1e-4, training crops of up to 3 s here (SUPERB: 2-8 s; the
synthetic utterances are 1-4 s).
"""
from kdjax.finetune.config import make_config


def get_config(arg=None):
    """The SV fine-tuning config; `arg` holds variant args (see the module docstring)."""
    return make_config("sv", arg)
