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
from kdjax.distill.config import distill_config, parse_args, student_layers_arg


def get_config(arg=None):
    """The tiny distillation config; `arg` holds variant args (see the module docstring)."""
    args = parse_args(arg)
    config = distill_config()
    config.seed = 0
    config.total_steps = int(args.get("steps", 1000))
    config.batch_size = 8
    config.log_every = 50
    config.eval_every = 250
    config.checkpoint.save_every = 250
    config.checkpoint.keep = 2
    config.optim.lr = 5e-4
    d = config.distill
    d.teacher = "runs/pretrain_tiny_hubert/teacher_hf"
    teacher_layers = 8
    d.loss.target_layers = [2, 4, 8]
    d.update(dataset="synthetic_speech/unlabeled", train_split="train", eval_split="validation", max_seconds=3.0,
             eval_utterances=64)
    if "student" in args:
        d.student.num_hidden_layers = student_layers_arg(args["student"])
    if "random" in args:
        d.student.init = "random"
    if "runlocal" in args:
        config.total_steps = int(args.get("steps", 6))
        config.log_every = 2
        config.eval_every = 0
        config.checkpoint.save_every = 1000
        config.progress = False
        teacher_layers = 3  # the tests' tiny teacher (tests/hf_utils.py)
        d.loss.target_layers = [1, 2, 3]
        d.update(dataset="synthetic_speech/unlabeled_tiny", max_seconds=1.0, eval_utterances=8)
    if "hint" in args:
        n = d.student.num_hidden_layers
        d.loss.mode = "hint"
        d.loss.student_layers = list(range(1, n + 1))
        d.loss.target_layers = [teacher_layers * i // n for i in range(1, n + 1)]
    return config
