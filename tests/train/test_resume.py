"""Exact resumption of `python -m kdjax.main` runs: SIGKILL mid-run, SIGTERM, multi-stream in-process resume."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kdjax.errors import ConfigError
from kdjax.train import loop

from .helpers import ROOT, TOY, toy_config

STEPS = 60
# best_metric=none: export/params.npz then holds the final params
COMMON = [f"--config.total_steps={STEPS}", "--config.checkpoint.save_every=10", "--config.checkpoint.best_metric=none"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in-process, same 8 devices as the subprocesses): its exported params."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    results = loop.train_and_evaluate(toy_config(*COMMON), workdir)
    assert results["final_step"] == STEPS and not results["preempted"]
    return dict(np.load(os.path.join(workdir, "export", "params.npz")))


@pytest.fixture
def launch(tmp_path):
    """Start `python -m kdjax.main` on the toy config; every process started is killed at teardown."""
    procs = []

    def start(workdir, *overrides):
        log = open(tmp_path / f"log{len(procs)}.txt", "w")
        cmd = [sys.executable, "-m", "kdjax.main", f"--config={TOY}:runlocal", f"--workdir={workdir}", *COMMON,
               *overrides]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        proc.log_path = log.name
        procs.append((proc, log))
        return proc

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()


def _wait_for_checkpoint(proc, workdir, step, timeout=120.0):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        if proc.poll() is not None:
            raise AssertionError(f"run exited with {proc.returncode} before step {step}:\n{open(proc.log_path).read()}")
        if time.time() > deadline:
            raise AssertionError(f"no checkpoint {step} after {timeout}s:\n{open(proc.log_path).read()}")
        time.sleep(0.02)


def _finish(proc, timeout=120):
    rc = proc.wait(timeout=timeout)
    assert rc == 0, open(proc.log_path).read()


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _assert_bitwise_equal(workdir, reference):
    got = dict(np.load(os.path.join(workdir, "export", "params.npz")))
    assert sorted(got) == sorted(reference)
    for k in reference:
        assert got[k].tobytes() == reference[k].tobytes(), k


def test_sigkill_then_restart_is_bit_identical(tmp_path, launch, reference):
    workdir = str(tmp_path / "run")
    proc = launch(workdir, "--config.toy.slowdown_s=0.05")
    _wait_for_checkpoint(proc, workdir, 20)
    # one live run per workdir: a second one is refused, naming the owner
    with pytest.raises(ConfigError, match=rf"in use by another live run \(host {socket.gethostname()}, pid {proc.pid},"):
        loop.train_and_evaluate(toy_config(*COMMON), workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not os.path.exists(os.path.join(workdir, "results.json"))  # it really died mid-run
    # a checkpoint half-written at a kill (orbax's tmp dir) must be ignored, even one newer than the rest
    tmp = os.path.join(workdir, "checkpoints", "50.orbax-checkpoint-tmp", "state")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "manifest.ocdbt"), "wb") as f:
        f.write(b"\0half written")
    assert os.path.exists(os.path.join(workdir, ".kdjax.lock"))  # the killed run's lock is left behind ...
    _finish(launch(workdir))  # ... and taken over
    results = _results(workdir)
    assert 20 <= results["resumed_from"] < 50 and results["final_step"] == STEPS
    _assert_bitwise_equal(workdir, reference)


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, launch, reference):
    workdir = str(tmp_path / "run")
    proc = launch(workdir, "--config.toy.slowdown_s=0.05")
    _wait_for_checkpoint(proc, workdir, 10)
    proc.send_signal(signal.SIGTERM)
    _finish(proc)
    results = _results(workdir)
    stopped = results["final_step"]
    assert results["preempted"] and 10 <= stopped < STEPS
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps[-1] == stopped  # saved at the step it stopped on
    _finish(launch(workdir))
    assert _results(workdir)["resumed_from"] == stopped
    _assert_bitwise_equal(workdir, reference)


def test_two_stream_resume_in_process(tmp_path):
    """Two iterators checkpointed by name; stop at 10 and resume to 20 == 20 straight (constant lr)."""
    common = ["--config.optim.schedule=constant", "--config.optim.warmup_steps=0",
              "--config.checkpoint.save_every=5", "--config.checkpoint.best_metric=none"]
    cfg = lambda steps: toy_config(*common, f"--config.total_steps={steps}", variant="runlocal,streams=2")  # noqa
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    loop.train_and_evaluate(cfg(20), straight)
    assert loop.train_and_evaluate(cfg(10), resumed)["final_step"] == 10
    results = loop.train_and_evaluate(cfg(20), resumed)
    assert results["resumed_from"] == 10
    assert sorted(json.load(open(os.path.join(resumed, "checkpoints", "20", "data", "process_0-of-1.json")))) == [
        "a", "b"]
    _assert_bitwise_equal(resumed, dict(np.load(os.path.join(straight, "export", "params.npz"))))


def test_two_processes_checkpoint_per_process_and_resume(tmp_path):
    """launch/run.sh --local-processes 2: global batches across processes, one iterator file per process."""
    workdir = str(tmp_path / "mp")

    def run(steps):
        cmd = [str(ROOT / "launch" / "run.sh"), "--local-processes", "2", "--devices-per-process", "2", "--",
               f"--config={TOY}:runlocal", f"--workdir={workdir}", f"--config.total_steps={steps}",
               "--config.optim.schedule=constant", "--config.optim.warmup_steps=0"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=150)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # run.sh and the two workers it started
                proc.wait()
        assert proc.returncode == 0, out[-4000:]
        return _results(workdir)

    first = run(10)
    assert (first["processes"], first["devices"], first["final_step"]) == (2, 4, 10)
    files = sorted(os.listdir(os.path.join(workdir, "checkpoints", "10", "data")))
    assert [f for f in files if f.endswith(".json")] == ["process_0-of-2.json", "process_1-of-2.json"]
    second = run(20)
    assert (second["resumed_from"], second["final_step"]) == (10, 20)
