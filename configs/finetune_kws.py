r"""Keyword spotting (SUPERB protocol: 12 classes, Speech-Commands-style) on a frozen or fine-tuned encoder.

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/kws
  python -m kdjax.main --config=configs/finetune_kws.py:encoder=runs/distill --workdir=runs/kws_student
  python -m kdjax.main --config=configs/finetune_kws.py:encoder=runs/teacher_hf,frozen=False --workdir=runs/kws_t_ft

Variant args (comma separated after the colon): `encoder=PATH` (HF folder or a kdjax workdir with student_hf/ or
teacher_hf/), `frozen=True|False`, `init=pretrained|random` (random: the from-scratch baseline),
`one_stage=TEACHER` (distillation + task losses in one run, see kdjax/finetune/one_stage.py), `runlocal`, `steps=N`.
Defaults follow SUPERB's KWS downstream: Adam, lr 1e-4, batch 32.

One-stage (a 2-layer student built from the teacher's first layers, trained on L_kws + L_distill with targets at
teacher layers 4, 8, 12, DistilHuBERT's for a base teacher; the student is exported to WORKDIR/student_hf):

  python -m kdjax.main --config=configs/finetune_kws.py:one_stage=runs/teacher_hf --workdir=runs/kws_one_stage
"""
from kdjax.finetune.config import make_config


def get_config(arg=None):
    """The KWS fine-tuning config; `arg` holds variant args (see the module docstring)."""
    return make_config("kws", arg)
