"""Two processes (launch/run.sh, 127.0.0.1, CPU collectives, 4 devices each) against one process with 8 devices.

The data stream is one seeded global stream of which each process reads its block of every global batch
(kdjax.data.pipeline.train_iterator), so the global batches, and therefore the updates, are the same for any
process count; iterator states are positions in that stream, equal on every process, so a checkpoint restores on
another topology and training continues as if the topology had never changed.
"""
import json
import os
import shutil

import pytest

from kdjax.train.loop import train_and_evaluate
from tests.hf_utils import save_tiny

from . import helpers

TOL = 1e-5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("teacher"), "hubert_base_like", seed=3, conv_stride=(5, 4, 4))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def single(teacher, tiny_data_dir, tmp_path_factory):
    """One process, 8 devices, 6 steps, checkpoints at 3 and 6."""
    workdir = tmp_path_factory.mktemp("single")
    cfg = helpers.config(teacher, tiny_data_dir, 6, "--config.checkpoint.save_every=3")
    results = train_and_evaluate(cfg, str(workdir))
    assert (results["processes"], results["devices"], results["final_step"]) == (1, 8, 6)
    return workdir


@pytest.fixture(scope="module")
def multi(teacher, tiny_data_dir, tmp_path_factory, cache):
    """Two processes x 4 devices, 3 steps (checkpoint at 3); (workdir, console output)."""
    workdir = tmp_path_factory.mktemp("multi")
    out = helpers.run_two_processes(workdir, helpers.overrides(teacher, tiny_data_dir, 3), cache)
    return workdir, out


def test_two_processes_equal_one_process_and_only_process_0_logs(single, multi):
    workdir, out = multi
    diff = helpers.max_diff(helpers.checkpoint_params(workdir, 3), helpers.checkpoint_params(single, 3))
    assert diff < TOL, diff
    results = json.load(open(workdir / "results.json"))
    assert (results["processes"], results["devices"], results["final_step"]) == (2, 8, 3)
    # console, metrics.jsonl and event files come from process 0 alone (both processes share the workdir)
    header = [line for line in out.splitlines() if line.startswith("kdjax: task distill")]
    assert len(header) == 1 and "2 process(es)" in header[0], out[-3000:]
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [m["step"] for m in lines if any(k.startswith("train/") for k in m)]
    assert train == [2, 3], lines  # log_every=2 and the last step, each written once
    assert len(list((workdir / "tb").iterdir())) == 1
    # every process takes part in the checkpoint: one iterator-state file each, the same position on both
    data = workdir / "checkpoints" / "3" / "data"
    files = sorted(f for f in os.listdir(data) if f.endswith(".json"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]
    assert json.load(open(data / files[0])) == json.load(open(data / files[1]))
    # the exported student is the checkpointed one
    student = helpers.student(workdir)
    assert len(student) > 10


def test_resume_two_processes_to_one(single, multi, teacher, tiny_data_dir, tmp_path):
    """A 2-process checkpoint (step 3) continued by 1 process to step 6 == 6 steps in 1 process."""
    workdir = tmp_path / "run"
    shutil.copytree(multi[0], workdir)
    results = train_and_evaluate(helpers.config(teacher, tiny_data_dir, 6), str(workdir))
    assert (results["resumed_from"], results["final_step"], results["processes"]) == (3, 6, 1)
    diff = helpers.max_diff(helpers.checkpoint_params(workdir, 6), helpers.checkpoint_params(single, 6))
    assert diff < TOL, diff
    assert helpers.max_diff(helpers.student(workdir), helpers.student(single)) < TOL


def test_resume_one_process_to_two(single, multi, teacher, tiny_data_dir, tmp_path, cache):
    """A 1-process checkpoint (step 3) continued by 2 processes to step 6 == 6 steps in 1 process."""
    workdir = tmp_path / "run"
    shutil.copytree(single, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    for name in ("student_hf", "results.json"):
        path = workdir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    helpers.run_two_processes(workdir, helpers.overrides(teacher, tiny_data_dir, 6), cache)
    results = json.load(open(workdir / "results.json"))
    assert (results["resumed_from"], results["final_step"], results["processes"]) == (3, 6, 2)
    diff = helpers.max_diff(helpers.checkpoint_params(workdir, 6), helpers.checkpoint_params(single, 6))
    assert diff < TOL, diff
