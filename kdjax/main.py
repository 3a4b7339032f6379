"""absl entry point: python -m kdjax.main --config=configs/x.py[:args] --workdir=DIR [--config.field=value ...]

Dispatches on config.task through kdjax.train.loop.train_and_evaluate; re-running on a workdir resumes it. A kdjax
error is printed as one line and exits 2 (KDJAX_VERBOSE=1 shows the traceback).
"""
import sys

from absl import app, logging

from kdjax.errors import reported
from kdjax.train import config_file


def train(config, workdir: str, argv: list[str]) -> None:
    """Train `config` in `workdir` (absl has parsed its own flags, e.g. --verbosity, from argv)."""
    from kdjax.train import loop

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not any(a.lstrip("-").startswith(("v=", "verbosity")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows it
    with reported():
        loop.train_and_evaluate(config, workdir)


def run_from_cli(config_path: str, workdir: str, overrides: list[str]) -> int:
    """Train `config_path` in `workdir` with `--config.field=value` overrides (used by `kdjax train`); 0 on success."""
    from kdjax.train import loop

    config, workdir = config_file.parse(["kdjax", f"--config={config_path}", f"--workdir={workdir}", *overrides])
    loop.train_and_evaluate(config, workdir)
    return 0


if __name__ == "__main__":
    ours = [a for a in sys.argv[1:] if a.lstrip("-").startswith(("config", "workdir"))]
    with reported():
        config, workdir = config_file.parse([sys.argv[0], *ours])
    app.run(lambda argv: train(config, workdir, argv), argv=[sys.argv[0], *(a for a in sys.argv[1:] if a not in ours)])
