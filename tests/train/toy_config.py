r"""Toy regression: a small MLP on synthetic data. It exercises the training loop and is the example config.

Launch (the exact command; add `--config.field=value` overrides at the end):

  python -m kdjax.main --config=tests/train/toy_config.py --workdir=runs/toy
  python -m kdjax.main --config=tests/train/toy_config.py:runlocal --workdir=runs/toy_local --config.optim.lr=1e-3

(from the repository root: the task is test code, config.task = "tests.train.toy:ToyRegression").

Variant args (comma separated after the colon): `runlocal` (a few steps, tiny model, for tests and laptops),
`streams=2` (two input streams a step, like multi-task fine-tuning).
"""
import ml_collections

from kdjax.train.loop import base_config, parse_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The toy regression config; `arg` holds variant args (see the module docstring)."""
    args = parse_args(arg)
    config = base_config()
    config.task = "tests.train.toy:ToyRegression"
    config.seed = 0
    config.total_steps = 2000
    config.batch_size = 64
    config.log_every = 100
    config.eval_every = 500
    config.checkpoint.save_every = 500
    config.checkpoint.keep = 2
    config.optim.lr = 3e-3
    config.toy = ml_collections.ConfigDict(dict(
        in_dim=8, hidden=64, dropout=0.1, num_train=4096, num_eval=512, noise=0.05, streams=int(args.get("streams", 1)),
        seconds_per_example=1.0, slowdown_s=0.0))
    if "runlocal" in args:
        config.total_steps = 40
        config.batch_size = 16
        config.log_every = 10
        config.eval_every = 20
        config.checkpoint.save_every = 10
        config.toy.hidden = 16
        config.toy.num_train = 256
        config.toy.num_eval = 40
        config.progress = False
    return config
