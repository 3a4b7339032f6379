r"""Distil the demo's tiny HuBERT teacher (configs/pretrain_tiny_hubert.py: 8 x 256-d) into a 2-layer student on the
synthetic `unlabeled` corpus; the tests and the demo use it.

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/unlabeled
  python -m kdjax.main --config=configs/pretrain_tiny_hubert.py --workdir=runs/pretrain_tiny_hubert
  python -m kdjax.main --config=configs/distill_tiny.py --workdir=runs/distill_tiny \
      --config.distill.teacher=runs/pretrain_tiny_hubert/teacher_hf

The student goes to runs/distill_tiny/student_hf (loads with transformers.HubertModel.from_pretrained).
Variant args (comma separated after the colon): `student=1L` (depth), `steps=N`, `hint` (layer-to-layer hints
instead of prediction heads), `random` (random student init), `runlocal` (a few steps on `unlabeled_tiny` with 1 s
crops, for tests).
"""
from kdjax.distill.config import distill_config, variants
from kdjax.train.loop import parse_args


def get_config(arg=None):
    """The tiny distillation config; `arg` holds variant args (see the module docstring)."""
    config = distill_config()
    config.seed = 0
    config.total_steps = 1000
    config.batch_size = 8
    config.log_every = 50
    config.eval_every = 250
    config.checkpoint.update(save_every=250, keep=2)
    config.optim.update(name="adamw", lr=5e-4, schedule="linear", warmup_frac=0.07, weight_decay=1e-6, clip_norm=5.0)
    d = config.distill
    d.teacher = "runs/pretrain_tiny_hubert/teacher_hf"
    d.student.update(num_hidden_layers=2, init="teacher")
    d.loss.update(mode="prediction", target_layers=(2, 4, 8), cos_weight=1.0)
    d.feature_grad_mult = 0.1
    d.update(dataset="synthetic_speech/unlabeled", train_split="train", eval_split="validation", max_seconds=3.0,
             eval_utterances=64, batching="crop")
    teacher_layers = 8
    if "runlocal" in parse_args(arg):
        teacher_layers = 3  # the tests' tiny teacher (tests/hf_utils.py)
        d.loss.target_layers = (1, 2, 3)
    return variants(config, arg, teacher_layers)
