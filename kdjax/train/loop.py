"""The one training loop of kdjax (pretraining, distillation, fine-tuning): mesh, jit, checkpoints, logs, resumption.

    results = train_and_evaluate(config, workdir)     # dict, also written to <workdir>/results.json

The loop builds `task = registry.make_task(config)` (a kdjax.train.task.Task) and drives it: the task supplies pure
functions, the loop owns everything else (field checks, batch-size checks, jitting, the step skeleton of
kdjax.train.step, the frozen teacher's placement, evaluation reductions, checkpoints, logs, the gather before export).
Workdir: checkpoints/ (orbax), tb/ (event files), metrics.jsonl, results.json, teacher.json (the teacher's
fingerprint), .kdjax.lock (one live run per workdir) and whatever the task's export() writes (its returned dict is
results.json["export"]). Re-running on the same workdir resumes from the latest finished checkpoint (params,
optimizer state, step, rng, data iterator positions) and gives bit-identical results. SIGTERM (single process) or
JAX's preemption notice (multi-process) makes the loop save at the current step and return with
results["preempted"] = True (exit code 0 from kdjax.main).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from kdjax.errors import ConfigError
from kdjax.train import registry, sharding
from kdjax.train.checkpoint import Checkpointer
from kdjax.train.fields import check_fields
from kdjax.train.logs import RunLogger, flatten, write_json
from kdjax.train.state import TrainState, param_count
from kdjax.train.task import Task
from kdjax.train.workdir import WorkdirLock, check_teacher


def parse_args(arg: str | None) -> dict[str, str]:
    """A config file's variant args 'a=1,b,c=x' -> {'a': '1', 'b': '1', 'c': 'x'} (big_vision style)."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip() or "1"
    return out


def base_config() -> ml_collections.ConfigDict:
    """The loop's config fields with their defaults; a config file starts from this and adds task fields."""
    from kdjax.train import optim

    return ml_collections.ConfigDict(dict(
        task="", seed=0, total_steps=1000, batch_size=32, log_every=50, eval_every=0, progress=True,
        distributed=False,
        mesh=dict(fsdp=1, fsdp_min_size=2**14, devices=0),
        checkpoint=dict(save_every=1000, keep=3, async_save=True, best_metric="", best_mode=""),
        optim=optim.default_config(),
    ))


class _Preemption:
    """SIGTERM -> a flag checked between steps (single process; multi-process runs use JAX's preemption sync)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _best(config: Any, task: Task) -> tuple[str | None, str]:
    ck = config.checkpoint
    metric = ck.get("best_metric", "") or task.best_metric
    if metric in (None, "", "none"):
        return None, "max"
    return str(metric), (ck.get("best_mode", "") or task.best_mode)


def _make_task(config: ml_collections.ConfigDict) -> Task:
    task = registry.make_task(config)
    if not isinstance(task, Task):
        raise ConfigError(f"config.task={config.task!r} built a {type(task).__name__}, which is not a "
                          "kdjax.train.task.Task subclass")
    defaults = task.config_defaults()
    if defaults is not None:
        check_fields(config, defaults)
    n_proc = jax.process_count()
    if int(config.batch_size) % n_proc:
        raise ConfigError(f"config.batch_size={config.batch_size} must divide by the process count {n_proc}")
    return task


class _Evaluator:
    """Runs the task's jitted eval_step over every eval stream and reduces on host: values are summed over batches
    (in float64), except those under a "rows/" key, which are concatenated along axis 0 (per-example outputs such as
    embeddings for metrics that are not sums, like an EER)."""

    def __init__(self, task: Task, mesh: jax.sharding.Mesh):
        self.task, self.mesh = task, mesh
        self.step = jax.jit(task.eval_step, static_argnames="stream", out_shardings=sharding.replicated(mesh))

    def __call__(self, state: TrainState, teacher: Any) -> dict[str, float] | None:
        source = self.task.eval_data()
        if source is None:
            return None
        reduced: dict[str, dict[str, np.ndarray]] = {}
        for stream, batches in source.items():
            sums: dict[str, np.ndarray] = {}
            rows: dict[str, list[np.ndarray]] = {}
            for host in batches:
                out = self.step(state, sharding.to_global(host, self.mesh), teacher, stream=stream)
                for k, v in jax.device_get(out).items():
                    if k.startswith("rows/"):
                        rows.setdefault(k, []).append(np.asarray(v))
                    else:
                        sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
            reduced[stream] = {**sums, **{k: np.concatenate(v) for k, v in rows.items()}}
        return flatten(self.task.eval_metrics(reduced))


class _Meter:
    """Training throughput and time bookkeeping: the step metrics averaged over each log window, audio-seconds, and
    where the time went (setup, first step = compilation, training, evaluation, checkpoints)."""

    def __init__(self, setup_s: float):
        self.timings = {"setup_s": setup_s, "first_step_s": 0.0, "train_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
        self.pending: list[dict] = []
        self.train_metrics: dict[str, float] = {}
        self.audio_total = self.timed_audio = 0.0
        self._window()

    def _window(self) -> None:
        self.window = {"t": time.time(), "steps": 0, "audio": 0.0}

    def first_step(self, seconds: float) -> None:
        """The first step's time (compilation) is kept out of every rate."""
        self.timings["first_step_s"] = seconds
        self._window()

    def add(self, metrics: dict, audio_seconds: float, first: bool) -> None:
        """A step's (device) metrics and audio; nothing is fetched from the devices here."""
        if not first:
            self.window["steps"] += 1
            self.window["audio"] += audio_seconds
        self.audio_total += audio_seconds
        self.pending.append(metrics)

    def flush(self) -> tuple[dict[str, float], float, float]:
        """(mean metrics, steps/s, audio-s/s) of the window since the last flush."""
        host = jax.device_get(self.pending)
        self.train_metrics = {k: float(sum(m[k] for m in host) / len(host)) for k in host[0]}
        self.pending = []
        dt = max(time.time() - self.window["t"], 1e-9)
        self.timings["train_s"] += dt
        self.timed_audio += self.window["audio"]
        rates = (self.window["steps"] / dt, self.window["audio"] / dt)
        self._window()
        return (self.train_metrics, *rates)

    @contextlib.contextmanager
    def timed(self, key: str, pause: bool = False):
        """Add the block's time to timings[key]; pause=True also keeps it out of the training window."""
        t = time.time()
        yield
        self.timings[key] += time.time() - t
        if pause:
            self.window["t"] += time.time() - t

    def summary(self, total_s: float) -> dict[str, float]:
        """The timings of results.json."""
        return {**self.timings, "total_s": total_s, "audio_seconds": self.audio_total,
                "audio_seconds_per_s": self.timed_audio / max(self.timings["train_s"], 1e-9)}


def _abstract_state(task: Task, config: Any, mesh: jax.sharding.Mesh, rng: jax.Array) -> tuple[Any, Any]:
    """(abstract state with shardings, shardings) of the task's init."""
    abstract = jax.eval_shape(task.init, rng)
    shardings = task.state_sharding(abstract, mesh)
    if shardings is None:
        shardings = sharding.state_sharding(abstract, mesh, int(config.mesh.get("fsdp_min_size", 2**14)))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def _train_iterators(task: Task, config: Any) -> tuple[dict[str, Any], bool]:
    """({name: iterator}, whether the task has a single stream), each iterator checked to be resumable."""
    source = task.train_data()
    single = not isinstance(source, Mapping)
    iterators: dict[str, Any] = {"train": source} if single else dict(source)
    for name, it in iterators.items():
        if not (hasattr(it, "get_state") and hasattr(it, "set_state")):
            raise ConfigError(f"task {config.task!r}: train iterator {name!r} ({type(it).__name__}) has no "
                              "get_state()/set_state(), so a run could not resume exactly; use a grain iterator")
    return iterators, single


def _restore(ckpt: Checkpointer, abstract: Any, iterators: dict[str, Any], workdir: str) -> TrainState | None:
    """The latest checkpoint's state with the iterators moved to their saved positions, or None."""
    restored = ckpt.restore(abstract)
    if restored is None:
        return None
    state, it_states = restored
    missing = set(iterators) - set(it_states)
    if missing:
        raise ConfigError(f"checkpoint {ckpt.latest_step()} in {workdir} has no state for iterators "
                          f"{sorted(missing)} (it holds {sorted(it_states)})")
    for name, it in iterators.items():
        it.set_state(it_states[name])
    logging.info("resumed from step %d of %s", int(state.step), workdir)
    return state


def _gather(state: TrainState) -> TrainState:
    """The state without its optimizer, gathered to every host as numpy (what export needs)."""
    from jax.experimental import multihost_utils

    state = state.replace(opt_state=None)
    if jax.process_count() == 1:
        return jax.device_get(state)
    return multihost_utils.process_allgather(state, tiled=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train config.task for config.total_steps steps in `workdir` (resuming if it holds a checkpoint)."""
    t0 = time.time()
    sharding.maybe_initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        return _run(config, workdir, t0)


def _run(config: ml_collections.ConfigDict, workdir: str, t0: float) -> dict[str, Any]:
    task = _make_task(config)
    mesh = sharding.make_mesh(config.get("mesh"))
    main_process = jax.process_index() == 0
    total = int(config.total_steps)
    log_every, eval_every = int(config.log_every), int(config.get("eval_every", 0) or 0)
    n_proc = jax.process_count()

    rng = jax.random.PRNGKey(int(config.seed))
    abstract, shardings = _abstract_state(task, config, mesh, rng)
    best_metric, best_mode = _best(config, task)
    ck = config.checkpoint
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=int(ck.save_every), keep=int(ck.keep),
                        async_save=bool(ck.get("async_save", True)), best_metric=best_metric, best_mode=best_mode)
    iterators, single = _train_iterators(task, config)
    teacher = task.teacher()
    check_teacher(workdir, teacher.record() if teacher is not None else None,
                  resuming=ckpt.latest_step() is not None, write=main_process)
    teacher_params = (jax.device_put(teacher.params, sharding.replicated(mesh)) if teacher is not None else None)
    state = _restore(ckpt, abstract, iterators, workdir)
    if state is None:
        state = jax.jit(task.init, out_shardings=shardings)(rng)
    start = int(state.step)
    params = param_count(state.params)
    step_fn = jax.jit(task.train_step, out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    evaluate = _Evaluator(task, mesh)

    logger = RunLogger(workdir, total_steps=total, initial_step=start, enabled=main_process,
                       progress=bool(config.get("progress", True)))
    logger.line(f"kdjax: task {config.task} on {len(mesh.devices.flat)} devices (mesh {dict(mesh.shape)}), "
                f"{n_proc} process(es), {params:,} params, steps {start}->{total}")
    meter = _Meter(time.time() - t0)
    eval_metrics: dict[str, float] | None = None
    preempted, step = False, start

    def save(step: int, metrics: dict | None = None) -> None:
        with meter.timed("checkpoint_s"):
            ckpt.save(step, state, {name: it.get_state() for name, it in iterators.items()}, metrics=metrics)

    with _Preemption() as preemption:
        while step < total:
            if preemption.requested or ckpt.reached_preemption(step):
                save(step)
                preempted = True
                logger.line(f"preempted: saved step {step}, stopping")
                break
            t = time.time()
            host = next(iterators["train"]) if single else {name: next(it) for name, it in iterators.items()}
            seconds = float(task.audio_seconds(host)) * n_proc
            state, metrics = step_fn(state, sharding.to_global(host, mesh), teacher_params)
            step += 1
            if step == start + 1:  # compilation: kept out of the throughput and the progress bar's ETA
                jax.block_until_ready(metrics)
                meter.first_step(time.time() - t)
                logger.restart_clock()
            meter.add(metrics, seconds, first=step == start + 1)
            logger.advance()
            if step % log_every == 0 or step == total:
                logger.train(step, total, *meter.flush())
            step_eval = None
            if (eval_every and step % eval_every == 0) or step == total:
                with meter.timed("eval_s", pause=True):
                    step_eval = evaluate(state, teacher_params)
                if step_eval is not None:
                    eval_metrics = step_eval
                    logger.eval(step, eval_metrics)
            if ckpt.should_save(step) or step == total or (step_eval is not None and best_metric):
                save(step, step_eval if best_metric else None)
    with meter.timed("checkpoint_s"):
        ckpt.wait()

    best, exported = None, None
    if not preempted:
        export_state, export_step = state, step
        if best_metric and ckpt.best_step() not in (None, step):
            export_step = ckpt.best_step()
            export_state, _ = ckpt.restore(abstract, export_step)
        best = {"metric": best_metric, "mode": best_mode, "step": export_step} if best_metric else None
        exported = task.export(_gather(export_state), workdir)
    ckpt.close()
    logger.close()
    results = {
        "task": config.task, "final_step": step, "resumed_from": start or None, "preempted": preempted,
        "train": meter.train_metrics, "eval": eval_metrics, "best": best, "param_count": params,
        "processes": n_proc, "devices": len(mesh.devices.flat), "mesh": dict(mesh.shape),
        "timings": meter.summary(time.time() - t0),
        "teacher": teacher.record() if teacher is not None else None,
        "export": exported,  # the task's own results (test metrics, exported folders), never the loop's keys
        "config": config.to_dict(),
    }
    if main_process:
        write_json(os.path.join(workdir, "results.json"), results)
    return results
