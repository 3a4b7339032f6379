"""kdjax checkpoints: an orbax CheckpointManager holding the train state and the data iterators' states.

    ckpt = Checkpointer(workdir / "checkpoints", save_every=1000, keep=3, best_metric="eval/accuracy")
    restored = ckpt.restore(abstract_state)                 # None when the directory holds no finished checkpoint
    state, iterator_states = restored                       # iterator_states: {"train": it.get_state(), ...}
    ckpt.save(step, state, {"train": it.get_state()}, metrics={"eval/accuracy": 0.9})
    ckpt.wait(); ckpt.close()

Layout: <directory>/<step>/{state/ (orbax PyTree of the TrainState), data/process_<i>-of-<n>.json, ...}.
Each process writes the states of its own iterators (grain `get_state()` dicts) as JSON. A restore with another
process count is possible when every process of the saved run holds the same states (kdjax.data.pipeline's train
iterators do: their state is a position in the global stream); arrays are resharded by orbax onto the new mesh. Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once every
item is complete, so a checkpoint cut short by a kill is never listed, never restored, and is deleted when the
next manager opens the directory (cleanup_tmp_directories). Saves are asynchronous: arrays are copied to host
before `save` returns (the next step may donate them) and written in the background; `wait()` blocks until done.

Retention: the latest `keep` checkpoints, plus with `best_metric` the one whose metric is best (saved with
`metrics=`); `best_step()` names it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from kdjax.errors import CheckpointError

STATE, DATA = "state", "data"


class IteratorStatesHandler(ocp.CheckpointHandler):
    """Saves {name: iterator state} (JSON-serialisable) per process: data/process_<i>-of-<n>.json."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "IteratorStatesSave") -> None:
        """Write this process's iterator states."""
        self._file(directory).write_text(json.dumps(args.states, sort_keys=True))

    def restore(self, directory: epath.Path, args: "IteratorStatesRestore | None" = None) -> dict[str, Any]:
        """Read this process's iterator states (or, from another process count, the states all its processes share)."""
        path = self._file(directory)
        if path.exists():
            return json.loads(path.read_text())
        files = sorted(epath.Path(directory).glob("process_*-of-*.json"))
        states = [json.loads(f.read_text()) for f in files]
        if states and all(s == states[0] for s in states):  # topology-free positions (kdjax.data.pipeline)
            return states[0]
        raise CheckpointError(f"{path} does not exist: the checkpoint was written by a different number of "
                              f"processes than {jax.process_count()} and its per-process iterator states "
                              f"({[f.name for f in files]}) differ, so they cannot be mapped onto this topology")

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(IteratorStatesHandler, for_save=True)
@dataclasses.dataclass
class IteratorStatesSave(ocp.args.CheckpointArgs):
    """Save args of IteratorStatesHandler."""

    states: dict[str, Any]


@ocp.args.register_with_handler(IteratorStatesHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStatesRestore(ocp.args.CheckpointArgs):
    """Restore args of IteratorStatesHandler."""


class Checkpointer:
    """Async keep-N (+ best-by-metric) checkpoints of (train state, iterator states); see the module docstring."""

    def __init__(self, directory: str | epath.Path, *, save_every: int, keep: int = 3, async_save: bool = True,
                 best_metric: str | None = None, best_mode: str = "max"):
        if best_mode not in ("max", "min"):
            raise CheckpointError(f"best_mode={best_mode!r}; expected 'max' or 'min'")
        self.save_every = int(save_every)
        self.best_metric = best_metric or None
        keep_policies: list[Any] = [policies.LatestN(n=max(int(keep), 1))]
        best_fn = None
        if self.best_metric:
            metric = self.best_metric
            best_fn = lambda m: float(m[metric])  # noqa: E731
            keep_policies.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn, best_mode=best_mode,  # for best_step(); retention is the preservation policy's
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self.directory = epath.Path(directory)
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def should_save(self, step: int) -> bool:
        """True on multiples of save_every."""
        return self.save_every > 0 and step % self.save_every == 0

    def reached_preemption(self, step: int) -> bool:
        """True on every process once JAX's preemption service saw a SIGTERM (multi-process runs)."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best checkpoint by best_metric (the latest without one)."""
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        """Steps of all finished checkpoints."""
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator_states: dict[str, Any], metrics: dict | None = None) -> bool:
        """Start saving `state` and the iterator states at `step` (returns once arrays are on host)."""
        if step in self.manager.all_steps():
            return False
        if self.best_metric and metrics is not None and self.best_metric not in metrics:
            raise CheckpointError(f"best metric {self.best_metric!r} is not among the eval metrics {sorted(metrics)}")
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), DATA: IteratorStatesSave(iterator_states)})
        return self.manager.save(step, args=args, metrics=metrics if self.best_metric else None, force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """(state, iterator states) of `step` (default: latest) with the shardings of `abstract_state`, or None."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state), DATA: IteratorStatesRestore()})
        try:
            out = self.manager.restore(step, args=args)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"cannot restore step {step} from {self.directory}: {e}") from e
        return out[STATE], out[DATA]

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.close()
