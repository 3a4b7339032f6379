"""Shared helpers of the training-loop tests: the toy config and a hand-rolled loop on a given mesh."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from kdjax.train import config_file
from kdjax.train import registry, sharding

ROOT = Path(__file__).resolve().parents[2]
TOY = str(ROOT / "tests" / "train" / "toy_config.py")


def toy_config(*overrides: str, variant: str = "runlocal"):
    """The toy config (runlocal variant by default) with `--config.x=y` overrides."""
    config, _ = config_file.parse(["test", f"--config={TOY}:{variant}", "--workdir=unused", *overrides])
    return config


def run_steps(config, mesh, batches):
    """init + one jitted, donated train_step per batch on `mesh`, as the loop does; returns the final state."""
    task = registry.make_task(config)
    rng = jax.random.PRNGKey(config.seed)
    shardings = sharding.state_sharding(jax.eval_shape(task.init, rng), mesh, config.mesh.fsdp_min_size)
    state = jax.jit(task.init, out_shardings=shardings)(rng)
    step = jax.jit(task.train_step, out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=0)
    for b in batches:
        state, _ = step(state, sharding.to_global(b, mesh), None)
    return state


def host_params(state) -> list[np.ndarray]:
    """The params of a state as host numpy arrays (leaf order)."""
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]
