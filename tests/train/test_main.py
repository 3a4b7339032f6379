"""Entry points: config parsing and overrides, errors that name the field or task, the outputs of a run."""
import json
import os
import subprocess
import sys

import pytest

from kdjax import cli
from kdjax import main as kdjax_main
from kdjax.train import config_file
from kdjax.errors import ConfigError

from .helpers import ROOT, TOY, toy_config


def test_overrides_and_variant_args_are_applied():
    config, workdir = config_file.parse(["x", f"--config={TOY}:runlocal,streams=2", "--workdir=w",
                                        "--config.optim.lr=1e-4", "--config.checkpoint.keep=5"])
    assert (config.optim.lr, config.checkpoint.keep, config.toy.streams, config.total_steps, workdir) == (
        1e-4, 5, 2, 40, "w")


def test_unknown_override_field_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'optim.lrr'.*config.optim has no field 'lrr'"):
        kdjax_main.run_from_cli(f"{TOY}:runlocal", str(tmp_path), ["--config.optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match=r"'toy.nope.x'"):  # through the `kdjax train` console script
        cli.main(["train", "--config", f"{TOY}:runlocal", "--workdir", str(tmp_path), "--config.toy.nope.x=1"])
    assert not os.listdir(tmp_path)  # nothing ran


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config.task='no_such_task'.*distill"):
        kdjax_main.run_from_cli(f"{TOY}:runlocal", str(tmp_path), ["--config.task=no_such_task"])
    with pytest.raises(ConfigError, match=r"kdjax.nowhere:make"):
        kdjax_main.run_from_cli(f"{TOY}:runlocal", str(tmp_path), ["--config.task=kdjax.nowhere:make"])


def test_module_entry_point_reports_bad_field_and_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kdjax.main", f"--config={TOY}:runlocal", f"--workdir={tmp_path}",
                          "--config.checkpoint.save_evry=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown config field 'checkpoint.save_evry'" in out.stderr and "save_every" in out.stderr


def test_run_writes_results_events_checkpoints(tmp_path):
    workdir = str(tmp_path)
    assert kdjax_main.run_from_cli(f"{TOY}:runlocal", workdir, ["--config.total_steps=20"]) == 0
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["final_step"] == 20 and results["preempted"] is False and results["resumed_from"] is None
    assert set(results["train"]) >= {"loss", "lr", "grad_norm"} and "mse" in results["eval"]
    assert results["param_count"] == 8 * 16 + 16 + 16 + 1
    assert results["best"]["metric"] == "mse" and results["best"]["step"] == 20  # the toy's best metric
    assert results["timings"]["audio_seconds"] == 20 * 16.0 and results["config"]["task"] == "tests.train.toy:ToyRegression"
    assert results["devices"] == 8 and results["mesh"] == {"data": 8, "fsdp": 1}
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))
    assert "20" in os.listdir(os.path.join(workdir, "checkpoints"))
    assert os.path.exists(os.path.join(workdir, "export", "params.npz"))
    assert results["export"] == {"params": os.path.join(workdir, "export", "params.npz")}
    # a finished workdir resumes to the same end without training
    assert kdjax_main.run_from_cli(f"{TOY}:runlocal", workdir, ["--config.total_steps=20"]) == 0
    assert json.load(open(os.path.join(workdir, "results.json")))["resumed_from"] == 20


def test_toy_config_docstring_holds_the_launch_command():
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_cfg", TOY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "python -m kdjax.main --config=tests/train/toy_config.py" in module.__doc__
    assert toy_config(variant="").total_steps > toy_config().total_steps  # runlocal shrinks the run


def test_kdjax_errors_are_one_line_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kdjax.main", "--config=configs/finetune_kws.py:runlocal",
                          f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("kdjax:")]
    assert len(lines) == 1 and "ConfigError: config.finetune.encoder=''" in lines[0], out.stderr


def test_progress_eta_leaves_the_first_step_out(tmp_path):
    import time

    from kdjax.train.logs import RunLogger

    logger = RunLogger(str(tmp_path), total_steps=100, initial_step=0, enabled=True, progress=True)
    logger.advance()
    time.sleep(1.0)  # the first step: compilation
    logger.restart_clock()
    for _ in range(9):
        logger.advance()
    stats = logger.bar.format_dict
    assert stats["elapsed"] < 0.5 and stats["n"] - stats["initial"] == 9, stats
    logger.close()
