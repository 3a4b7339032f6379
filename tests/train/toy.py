"""A toy task (a small NNX MLP regressing synthetic data) that tests the training loop and shows the Task interface.

Test code (registered by the config as config.task = "tests.train.toy:ToyRegression"). Copy its shape for a real
task: build the model's graphdef and the optimizer in the constructor, keep every array in the TrainState that
`init` returns, draw randomness from `state.step_key()`, give the loop seeded grain iterators of host-local numpy
batches (batch_size is global: each process yields batch_size // process_count rows).
Config fields under `config.toy`: in_dim, hidden, dropout, num_train, num_eval, noise, streams (1, or 2 to
exercise the loop's multi-stream batches {"a": ..., "b": ...}), seconds_per_example, slowdown_s (a sleep per
batch, only for the tests that kill a run mid-way).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.train import optim
from kdjax.train.state import TrainState
from kdjax.train.task import Task


class MLP(nnx.Module):
    """x [b, in_dim] -> y [b]: Linear, GELU, dropout, Linear."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(in_dim, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 1, rngs=rngs)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        h = nnx.gelu(self.l1(x))
        if dropout_key is not None and self.drop.rate > 0:
            h = self.drop(h, deterministic=False, rngs=dropout_key)
        return self.l2(h)[..., 0]


def make_data(cfg: Any, n: int, seed: int) -> dict[str, np.ndarray]:
    """n examples x ~ N(0, 1), y = sin(x . w) + noise, with w fixed by the config's seed."""
    w = np.random.default_rng(1234).standard_normal(cfg.in_dim).astype(np.float32) / np.sqrt(cfg.in_dim)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cfg.in_dim)).astype(np.float32)
    y = (np.sin(x @ w) + cfg.noise * rng.standard_normal(n)).astype(np.float32)
    return {"x": x, "y": y}


def train_iterator(data: dict[str, np.ndarray], batch_size: int, seed: int, slowdown_s: float = 0.0,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """Infinite, shuffled (reshuffled each epoch), checkpointable grain iterator of this process's batches."""
    n = len(data["y"])
    ds = grain.MapDataset.range(n)[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat(None).map(lambda i: {k: v[i] for k, v in data.items()})
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=min(2, os.cpu_count() or 1), prefetch_buffer_size=64))
    it = it.batch(batch_size, drop_remainder=True)
    if slowdown_s > 0:
        it = it.map(lambda b: (time.sleep(slowdown_s), b)[1])
    return iter(it)


class ToyRegression(Task):
    """The toy Task: see kdjax.train.task.Task for what each member must do."""

    config_key = "toy"
    best_metric = "mse"
    best_mode = "min"

    def __init__(self, config: Any):
        super().__init__(config)
        self.cfg = cfg = config.toy
        if cfg.streams not in (1, 2):
            raise ConfigError(f"config.toy.streams={cfg.streams}; expected 1 or 2")
        self.optimizer = optim.make_optimizer(config.optim, config.total_steps)
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: self._model(nnx.Rngs(0))))

    def config_defaults(self):
        from tests.train.toy_config import get_config

        return get_config()

    def _model(self, rngs: nnx.Rngs) -> MLP:
        return MLP(self.cfg.in_dim, self.cfg.hidden, self.cfg.dropout, rngs=rngs)

    def init(self, rng: jax.Array) -> TrainState:
        """Fresh params and optimizer state (traced under jit by the loop: pure, arrays only)."""
        params = nnx.state(self._model(nnx.Rngs(params=jax.random.fold_in(rng, 0))), nnx.Param)
        return TrainState.create(params, self.optimizer.tx.init(params), rng)

    def _streams(self, batch: dict) -> list[dict]:
        return [batch] if self.cfg.streams == 1 else [batch["a"], batch["b"]]

    def loss(self, params: Any, state: TrainState, batch: dict, teacher: Any) -> tuple[jax.Array, tuple]:
        """Mean squared error (averaged over the streams)."""
        model = nnx.merge(self.graphdef, params)
        losses = [jnp.mean((model(b["x"], state.step_key(i)) - b["y"]) ** 2)
                  for i, b in enumerate(self._streams(batch))]
        return sum(losses) / len(losses), ({}, state.extra)

    def eval_step(self, state: TrainState, batch: dict, teacher: Any, stream: str) -> dict[str, jax.Array]:
        """Sum of squared errors and count over the valid rows."""
        pred = nnx.merge(self.graphdef, state.params)(batch["x"])
        valid = batch["valid"].astype(jnp.float32)
        return {"sse": jnp.sum(valid * (pred - batch["y"]) ** 2), "count": jnp.sum(valid)}

    def eval_metrics(self, sums: dict) -> dict[str, float]:
        """Mean squared error over the eval set."""
        s = sums["eval"]
        return {"mse": float(s["sse"] / max(float(s["count"]), 1.0))}

    def train_data(self) -> Iterator[dict] | dict[str, Iterator[dict]]:
        """One grain iterator (streams=1) or {"a": ..., "b": ...} (streams=2); seeded from config.seed."""
        per_process = self.config.batch_size // jax.process_count()
        its = {}
        for i, name in enumerate(["a", "b"][: self.cfg.streams]):
            data = make_data(self.cfg, self.cfg.num_train, seed=self.config.seed * 1000 + i)
            its[name] = train_iterator(data, per_process, seed=self.config.seed + i, slowdown_s=self.cfg.slowdown_s,
                                       process_index=jax.process_index(), process_count=jax.process_count())
        return its["a"] if self.cfg.streams == 1 else its

    def eval_data(self) -> dict[str, Iterable[dict]]:
        """This process's share of the eval set in fixed-size batches, padded, with a "valid" mask."""
        return {"eval": self._eval_batches()}

    def _eval_batches(self) -> Iterator[dict]:
        data = make_data(self.cfg, self.cfg.num_eval, seed=10**6 + self.config.seed)
        per_process = self.config.batch_size // jax.process_count()
        idx = np.arange(self.cfg.num_eval)[jax.process_index()::jax.process_count()]
        steps = -(-self.cfg.num_eval // self.config.batch_size)  # the same on every process
        for s in range(steps):
            rows = idx[s * per_process:(s + 1) * per_process]
            pad = per_process - len(rows)
            take = np.concatenate([rows, np.zeros(pad, np.int64)])
            yield {"x": data["x"][take], "y": data["y"][take], "valid": np.arange(per_process) < len(rows)}

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of (pretend) audio in this process's batch."""
        rows = sum(len(b["y"]) for b in self._streams(host_batch))
        return rows * float(self.cfg.seconds_per_example)

    def export(self, state: TrainState, workdir: str) -> dict[str, str]:
        """Write the (gathered) params as export/params.npz (process 0)."""
        flat = {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
        out = os.path.join(workdir, "export", "params.npz")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            np.savez(out, **flat)
        return {"params": out}
