"""The one training loop of kdjax (pretraining, distillation, fine-tuning): mesh, jit, checkpoints, logs, resumption.

    results = train_and_evaluate(config, workdir)     # dict, also written to <workdir>/results.json

The loop builds `task = registry.make_task(config)` (config.task names it) and drives it; the task owns the model,
loss, optimizer and data, the loop owns everything else. Workdir: checkpoints/ (orbax), tb/ (event files),
results.json, and whatever the task's export() writes. Re-running on the same workdir resumes from the latest
finished checkpoint (params, optimizer state, step, rng, data iterator positions) and gives bit-identical results.
SIGTERM (single process) or JAX's preemption notice (multi-process) makes the loop save at the current step and
return with results["preempted"] = True (exit code 0 from kdjax.main).
"""
from __future__ import annotations

import functools
import os
import signal
import time
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

import jax
import ml_collections
from absl import logging

from kdjax.errors import ConfigError
from kdjax.train import registry, sharding
from kdjax.train.checkpoint import Checkpointer
from kdjax.train.logs import RunLogger, flatten, write_json
from kdjax.train.state import TrainState, param_count

HostBatch = Any  # a dict of numpy arrays with a leading (process-local) batch axis, or a dict of such dicts


@runtime_checkable
class Task(Protocol):
    """What the loop needs from a task; built by `factory(config)` (see kdjax.train.registry).

    Required:
      init(config, rng) -> TrainState: fresh state; traced under jax.jit (pure, arrays only), with the
          state shardings as out_shardings.
      train_step(state, batch) -> (state, metrics): jitted by the loop with the state donated; batch is the
          structure train_data() yields, as global arrays split on axis 0; metrics: dict of scalar arrays.
          Must advance state.step by 1 and draw randomness from state.step_key().
      evaluate(state, data) -> metrics: called outside jit every config.eval_every steps and at the end;
          `data` is eval_data() with each batch made global (a dict of such iterables when eval_data returns
          a dict). Returns floats or nested dicts of floats (flattened to "a/b").
      train_data() -> Iterator[HostBatch] | dict[str, Iterator[HostBatch]]: infinite host-local iterators
          (each process yields batch_size // process_count rows); with a dict, each step's batch is
          {name: next(iterator)}. Every iterator needs get_state()/set_state() (grain iterators have them).
    Optional:
      eval_data() -> Iterable[HostBatch] | dict[str, Iterable[HostBatch]] | None: a fresh iterable per call;
          every process must yield the same number of equally sized batches.
      audio_seconds(host_batch) -> float: seconds of audio in this process's batch (for audio-s/s).
      export(state, workdir) -> dict | None: called once at the end (on the best checkpoint when best_metric is
          set); a returned dict (e.g. test metrics) is merged into results.json.
      state_sharding(abstract_state, mesh) -> pytree of NamedSharding (default: sharding.state_sharding).
      best_metric: str (an evaluate() key, flattened) and best_mode: "max" | "min"; config.checkpoint.best_metric
          overrides them ("" = the task's, "none" = no best tracking).
    """

    def init(self, config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState: ...

    def train_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]: ...

    def evaluate(self, state: TrainState, data: Any) -> dict[str, Any]: ...

    def train_data(self) -> Iterator[HostBatch] | dict[str, Iterator[HostBatch]]: ...


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
        if jax.process_count() == 1 and _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _best(config: Any, task: Any) -> tuple[str | None, str]:
    ck = config.checkpoint
    metric = ck.get("best_metric", "") or getattr(task, "best_metric", None)
    if metric in (None, "", "none"):
        return None, "max"
    return str(metric), (ck.get("best_mode", "") or getattr(task, "best_mode", "max"))


def _eval(task: Any, state: TrainState, mesh: jax.sharding.Mesh) -> dict[str, float] | None:
    make = getattr(task, "eval_data", None)
    source = make() if make is not None else None
    if source is None:
        return None

    def glob(it: Iterable) -> Iterator:
        return (sharding.to_global(b, mesh) for b in it)

    data = {k: glob(v) for k, v in source.items()} if isinstance(source, Mapping) else glob(source)
    return flatten(task.evaluate(state, data))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train config.task for config.total_steps steps in `workdir` (resuming if it holds a checkpoint)."""
    t0 = time.time()
    sharding.maybe_initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    task = registry.make_task(config)
    mesh = sharding.make_mesh(config.get("mesh"))
    main_process = jax.process_index() == 0
    total = int(config.total_steps)
    log_every, eval_every = int(config.log_every), int(config.get("eval_every", 0) or 0)
    n_proc = jax.process_count()

    init_fn = functools.partial(task.init, config)
    rng = jax.random.PRNGKey(int(config.seed))
    abstract = jax.eval_shape(init_fn, rng)
    if hasattr(task, "state_sharding"):
        shardings = task.state_sharding(abstract, mesh)
    else:
        shardings = sharding.state_sharding(abstract, mesh, int(config.mesh.get("fsdp_min_size", 2**14)))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

    best_metric, best_mode = _best(config, task)
    ck = config.checkpoint
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=int(ck.save_every), keep=int(ck.keep),
                        async_save=bool(ck.get("async_save", True)), best_metric=best_metric, best_mode=best_mode)
    source = task.train_data()
    single = not isinstance(source, Mapping)
    iterators: dict[str, Any] = {"train": source} if single else dict(source)
    for name, it in iterators.items():
        if not (hasattr(it, "get_state") and hasattr(it, "set_state")):
            raise ConfigError(f"task {config.task!r}: train iterator {name!r} ({type(it).__name__}) has no "
                              "get_state()/set_state(), so a run could not resume exactly; use a grain iterator")

    restored = ckpt.restore(abstract)
    if restored is not None:
        state, it_states = restored
        missing = set(iterators) - set(it_states)
        if missing:
            raise ConfigError(f"checkpoint {ckpt.latest_step()} in {workdir} has no state for iterators "
                              f"{sorted(missing)} (it holds {sorted(it_states)})")
        for name, it in iterators.items():
            it.set_state(it_states[name])
        start = int(state.step)
        logging.info("resumed from step %d of %s", start, workdir)
    else:
        state = jax.jit(init_fn, out_shardings=shardings)(rng)
        start = 0
    params = param_count(state.params)
    step_fn = jax.jit(task.train_step, out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)

    logger = RunLogger(workdir, total_steps=total, initial_step=start, enabled=main_process,
                       progress=bool(config.get("progress", True)))
    logger.line(f"kdjax: task {config.task} on {len(mesh.devices.flat)} devices (mesh {dict(mesh.shape)}), "
                f"{n_proc} process(es), {params:,} params, steps {start}->{total}")
    audio_fn = getattr(task, "audio_seconds", None)
    timings = {"setup_s": time.time() - t0, "first_step_s": 0.0, "train_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
    pending: list[dict] = []
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] | None = None
    window = {"t": time.time(), "steps": 0, "audio": 0.0}
    audio_total, timed_audio, preempted, step = 0.0, 0.0, False, start

    def iterator_states() -> dict[str, Any]:
        return {name: it.get_state() for name, it in iterators.items()}

    def save(step: int, metrics: dict | None = None) -> None:
        t = time.time()
        ckpt.save(step, state, iterator_states(), metrics=metrics)
        timings["checkpoint_s"] += time.time() - t

    with _Preemption() as preemption:
        while step < total:
            if preemption.requested or ckpt.reached_preemption(step):
                save(step)
                preempted = True
                logger.line(f"preempted: saved step {step}, stopping")
                break
            t = time.time()
            host = next(iterators["train"]) if single else {name: next(it) for name, it in iterators.items()}
            seconds = float(audio_fn(host)) * n_proc if audio_fn is not None else 0.0
            state, metrics = step_fn(state, sharding.to_global(host, mesh))
            step += 1
            if step == start + 1:
                jax.block_until_ready(metrics)
                timings["first_step_s"] = time.time() - t
                window = {"t": time.time(), "steps": 0, "audio": 0.0}
            else:
                window["steps"] += 1
                window["audio"] += seconds
            audio_total += seconds
            pending.append(metrics)
            logger.advance()
            if step % log_every == 0 or step == total:
                host_metrics = jax.device_get(pending)
                train_metrics = {k: float(sum(m[k] for m in host_metrics) / len(host_metrics))
                                 for k in host_metrics[0]}
                pending = []
                dt = max(time.time() - window["t"], 1e-9)
                timings["train_s"] += dt
                timed_audio += window["audio"]
                logger.train(step, total, train_metrics, window["steps"] / dt, window["audio"] / dt)
                window = {"t": time.time(), "steps": 0, "audio": 0.0}
            step_eval = None
            if (eval_every and step % eval_every == 0) or step == total:
                t = time.time()
                step_eval = _eval(task, state, mesh)
                timings["eval_s"] += time.time() - t
                if step_eval is not None:
                    eval_metrics = step_eval
                    logger.eval(step, eval_metrics)
                window["t"] += time.time() - t
            if ckpt.should_save(step) or step == total or (step_eval is not None and best_metric):
                save(step, step_eval if best_metric else None)
    t = time.time()
    ckpt.wait()
    timings["checkpoint_s"] += time.time() - t

    best, exported = None, None
    if not preempted:
        export_state, export_step = state, step
        if best_metric and ckpt.best_step() not in (None, step):
            export_step = ckpt.best_step()
            export_state, _ = ckpt.restore(abstract, export_step)
        best = {"metric": best_metric, "mode": best_mode, "step": export_step} if best_metric else None
        if hasattr(task, "export"):
            exported = task.export(export_state, workdir)
    ckpt.close()
    logger.close()
    timings["total_s"] = time.time() - t0
    results = {
        "task": config.task, "final_step": step, "resumed_from": start or None, "preempted": preempted,
        "train": train_metrics, "eval": eval_metrics, "best": best, "param_count": params,
        "processes": n_proc, "devices": len(mesh.devices.flat), "mesh": dict(mesh.shape),
        "timings": {**timings, "audio_seconds": audio_total,
                    "audio_seconds_per_s": timed_audio / max(timings["train_s"], 1e-9)},
        "config": config.to_dict(),
    }
    if isinstance(exported, Mapping):  # e.g. test-set metrics evaluated on the exported (best) state
        results.update(exported)
    if main_process:
        write_json(os.path.join(workdir, "results.json"), results)
    return results
