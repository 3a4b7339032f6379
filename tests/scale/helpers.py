"""Shared by the scale-out tests: the tiny distillation config, subprocess runs through launch/run.sh, parameters."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "distill_tiny.py"
# constant lr: a run of N steps and a run stopped at k and resumed to N follow the same schedule
# no evaluation: it would only add a compilation to every run
COMMON = ["--config.optim.schedule=constant", "--config.optim.warmup_steps=0", "--config.checkpoint.keep=5",
          "--config.eval_every=0", "--config.distill.eval_utterances=0"]


def overrides(teacher, data_dir, steps: int, *extra: str) -> list[str]:
    """Command-line overrides of configs/distill_tiny.py:runlocal for the scale tests."""
    return [f"--config.total_steps={steps}", f"--config.distill.teacher={teacher}",
            f"--config.distill.data_dir={data_dir}", *COMMON, *extra]


def config(teacher, data_dir, steps: int, *extra: str):
    """The same config, built in-process (ml_collections overrides applied by hand)."""
    spec = importlib.util.spec_from_file_location("distill_tiny_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("runlocal")
    for arg in overrides(teacher, data_dir, steps, *extra):
        key, value = arg[len("--config."):].split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        old = node[leaf]
        node[leaf] = value if isinstance(old, str) or old is None else type(old)(value)
    return cfg


def run_two_processes(workdir, args: list[str], cache_dir=None, timeout: float = 100.0) -> str:
    """launch/run.sh --local-processes 2 --devices-per-process 4; returns the merged console output.

    The launcher and both workers are in a new session and are killed (killpg) whatever happens. `cache_dir`: a
    persistent compilation cache shared by the runs of a test module (the second run skips the compilation).
    """
    cmd = [str(ROOT / "launch" / "run.sh"), "--local-processes", "2", "--devices-per-process", "4", "--",
           f"--config={CONFIG}:runlocal", f"--workdir={workdir}", *args]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # run.sh sets the device count
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, out[-6000:]
    return out


def student(workdir) -> dict[str, np.ndarray]:
    """The exported student (HF safetensors) of a run."""
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "student_hf", "model.safetensors"))


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over all tensors (same keys required)."""
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


def checkpoint_params(workdir, step: int) -> dict[str, np.ndarray]:
    """The params (student and heads) of an orbax checkpoint, read on one device whatever topology wrote it."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    state = ckptr.restore(path, target)
    flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
