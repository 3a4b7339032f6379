"""Launchers: shell syntax and the exact commands their dry runs print."""
import os
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = ["run.sh", "multigpu.sh", "slurm.sbatch", "tpu_vm.sh"]


def _run(args, env=None):
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax_and_usage_header(script):
    path = LAUNCH / script
    assert _run(["bash", "-n", str(path)]).returncode == 0
    assert "# Usage:" in path.read_text()


def test_run_sh_local_processes_dry_run():
    out = _run([str(LAUNCH / "run.sh"), "--dry-run", "--local-processes", "2", "--devices-per-process", "4", "--",
                "--config=configs/distill_tiny.py", "--workdir=w"], env={"KDJAX_PORT": "23456"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert "XLA_FLAGS='--xla_force_host_platform_device_count=4'" in line
        assert f"KDJAX_COORDINATOR_ADDRESS=127.0.0.1:23456 KDJAX_NUM_PROCESSES=2 KDJAX_PROCESS_ID={i}" in line
        assert line.endswith("-m kdjax.main --config=configs/distill_tiny.py --workdir=w")


def test_run_sh_needs_arguments():
    out = _run([str(LAUNCH / "run.sh")])
    assert out.returncode == 2 and "missing kdjax arguments" in out.stderr


def test_multigpu_dry_run():
    out = _run([str(LAUNCH / "multigpu.sh"), "--gpus", "4", "--dry-run", "--", "--config=c.py", "--workdir=w"],
               env={"KDJAX_PYTHON": "python3"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("env KDJAX_DISTRIBUTED=0 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "
                                  "CUDA_VISIBLE_DEVICES=0,1,2,3 python3 -m kdjax.main --config=c.py --workdir=w")


def test_slurm_dry_run_uses_first_node_as_coordinator():
    out = _run(["bash", str(LAUNCH / "slurm.sbatch"), "--config=c.py", "--workdir=/shared/w"],
               env={"KDJAX_DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu[7-8]", "SLURM_NNODES": "2", "KDJAX_ROOT": "/repo"})
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c ")
    assert "KDJAX_COORDINATOR_ADDRESS=gpu7:12355" in line
    assert r"KDJAX_PROCESS_ID=\$SLURM_PROCID" in line and r"KDJAX_NUM_PROCESSES=\$SLURM_NTASKS" in line
    assert r"/repo/launch/run.sh\ --\ --config=c.py\ --workdir=/shared/w" in line


def test_slurm_outside_an_allocation_fails_clearly():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch")], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "SLURM_JOB_NODELIST" in out.stderr


@pytest.mark.parametrize("args,expected", [
    (["create", "kd", "--zone", "us-central2-b", "--type", "v4-16"],
     ["gcloud compute tpus tpu-vm create kd --zone=us-central2-b --accelerator-type=v4-16 "
      "--version=tpu-ubuntu2204-base"]),
    (["create", "kd", "--zone", "z", "--type", "v5litepod-16", "--queued"],
     ["gcloud compute tpus queued-resources create kd --zone=z --node-id=kd --accelerator-type=v5litepod-16 "
      "--runtime-version=tpu-ubuntu2204-base"]),
    (["install", "kd", "--zone", "z"], ["gcloud compute tpus tpu-vm ssh kd --zone=z --worker=all --command=",
                                        r".venv/bin/pip\ install\ -q\ -e\ \'.\[tpu\]\'"]),
    (["run", "kd", "--zone", "z", "--", "--config=configs/distill_hubert_base.py", "--workdir=gs://b/r"],
     ["--worker=all", r"launch/run.sh\ --\ --config=configs/distill_hubert_base.py\ --workdir=gs://b/r"]),
    (["logs", "kd", "--zone", "z"], ["--worker=0", "kdjax-run.log"]),
    (["delete", "kd", "--zone", "z"], ["gcloud compute tpus tpu-vm delete kd --zone=z --quiet"]),
])
def test_tpu_vm_dry_runs(args, expected):
    out = _run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", *args])
    assert out.returncode == 0, out.stderr
    for fragment in expected:
        assert fragment in out.stdout


def test_tpu_vm_copy_sends_the_committed_tree():
    out = _run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "copy", "kd", "--zone", "z"])
    lines = out.stdout.strip().splitlines()
    assert "archive --format=tar.gz" in lines[0]
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in lines[1]
    assert "tar\\ -xzf" in lines[2]


def test_tpu_vm_requires_zone():
    out = _run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "create", "kd", "--type", "v4-8"])
    assert out.returncode == 2 and "--zone is required" in out.stderr
