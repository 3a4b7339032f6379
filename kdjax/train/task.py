"""The interface between a task (pre-training, distillation, fine-tuning, ...) and the one training loop.

A task subclasses `Task`, is built by `factory(config)` (kdjax.train.registry) and supplies pure functions; the loop
owns jitting, sharding, batch-size checks, evaluation reductions, checkpoints, logging, resumption and the gather of
the state before export. Every optional hook below has a documented no-op default, so the loop never probes.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import jax

from kdjax.train.optim import Optimizer
from kdjax.train.state import TrainState
from kdjax.train.step import make_train_step

HostBatch = Any  # a dict of numpy arrays with a leading (process-local) batch axis


class Task:
    """Base class of kdjax tasks; see the module docstring.

    Required:
      optimizer: Optimizer (kdjax.train.optim.make_optimizer), set in __init__.
      init(rng) -> TrainState: fresh state; traced under jax.jit (pure, arrays only) with the state shardings.
      loss(params, state, batch, teacher) -> (loss, (metrics, extra)): pure; differentiated w.r.t. params by
          kdjax.train.step; `extra` is the new state.extra (return state.extra when unchanged); randomness from
          state.step_key(); batch is what train_data() yields, as global arrays split on axis 0.
      train_data() -> Iterator[HostBatch] | dict[str, Iterator[HostBatch]]: infinite host-local iterators with
          get_state()/set_state() (grain); each yields batch_size // process_count rows; with a dict, each step's
          batch is {name: next(iterator)}.
    Optional (defaults do nothing):
      config_key / config_defaults(): the task's config section and its fields, checked by the loop (unknown
          fields are rejected there, for every task).
      teacher() -> kdjax.distill.teacher.Teacher | None: a frozen model passed to loss/eval_step as `teacher`
          (its params: replicated, neither donated nor checkpointed; its fingerprint is recorded in the workdir).
      eval_data() -> {stream: Iterable[HostBatch]} | None: a fresh iterable per call; every process yields the same
          number of equally sized batches.
      eval_step(state, batch, teacher, stream) -> {name: array}: sums over the batch (jitted by the loop, stream
          static), added up over batches by the loop in float64 and handed to eval_metrics; values under a
          "rows/..." key are per-example outputs, concatenated over batches instead (e.g. embeddings for an EER).
      eval_metrics({stream: {name: summed array}}) -> nested dict of floats (flattened to "a/b" by the loop).
      audio_seconds(host_batch) -> float: seconds of audio in this process's batch (for audio-s/s).
      export(state, workdir) -> dict | None: once at the end, on the best (or last) state gathered to every host as
          numpy; the returned dict is stored under results.json["export"].
      state_sharding(abstract_state, mesh) -> pytree of NamedSharding | None (None: kdjax.train.sharding's rule).
      best_metric / best_mode: an eval key (flattened) and "max" | "min"; None = keep the last state.
    """

    config_key: str | None = None
    best_metric: str | None = None
    best_mode: str = "max"
    optimizer: Optimizer

    def __init__(self, config: Any):
        self.config = config

    def init(self, rng: jax.Array) -> TrainState:
        raise NotImplementedError(f"{type(self).__name__}.init")

    def loss(self, params: Any, state: TrainState, batch: Any, teacher: Any) -> tuple[jax.Array, tuple[dict, Any]]:
        raise NotImplementedError(f"{type(self).__name__}.loss")

    def train_data(self) -> Iterator[HostBatch] | Mapping[str, Iterator[HostBatch]]:
        raise NotImplementedError(f"{type(self).__name__}.train_data")

    def train_step(self, state: TrainState, batch: Any, teacher: Any = None) -> tuple[TrainState, dict[str, Any]]:
        """The pure training step the loop jits: kdjax.train.step's skeleton around `loss` (not overridden)."""
        return make_train_step(self.loss, self.optimizer)(state, batch, teacher)

    def config_defaults(self) -> Any:
        return None

    def teacher(self) -> Any:
        return None

    def eval_data(self) -> Mapping[str, Iterable[HostBatch]] | None:
        return None

    def eval_step(self, state: TrainState, batch: Any, teacher: Any, stream: str) -> dict[str, jax.Array]:
        return {}

    def eval_metrics(self, sums: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {}

    def audio_seconds(self, host_batch: Any) -> float:
        return 0.0

    def export(self, state: TrainState, workdir: str) -> dict[str, Any] | None:
        return None

    def state_sharding(self, abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
        return None
