"""`kdjax demo`: the paper end to end, offline, on the synthetic speech corpus, in minutes on a laptop CPU.

Stages (each cached in the workdir: a finished stage is reused when the demo runs again):
  1. prepare   synthetic_speech/{kws,sv,unlabeled} into WORKDIR/data
  2. teacher   the small HuBERT teacher shipped with kdjax (made by kdjax/pretrain/tiny_hubert_config.py), loaded with
               kdjax.from_pretrained like any Hugging Face checkpoint; `--pretrain` re-makes it in WORKDIR/pretrain
  3. distill   DistilHuBERT-style distillation into a 1-layer student (>= 75% fewer parameters)
  4. finetune  teacher and student with frozen encoders (SUPERB-style) on KWS, SV and both at once (multi-task, the
               paper's joint model): the heads train on cached features (WORKDIR/cache, kdjax.finetune.cached) until
               the validation metric stops improving, and the best validation checkpoint is tested (KWS: validation
               accuracy; SV: EER on the validation speakers' trials). Plus the baseline (the student's architecture
               trained from scratch on the task) and the MFCC references (kdjax.eval.mfcc). `--full` adds fine-tuned
               encoders and one-stage runs (the student distilled while it is fine-tuned)
  5. report    WORKDIR/report.md (+ report.json, PNG plots) with 95% bootstrap intervals, and a per-stage timing
               breakdown
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any

from kdjax.errors import ConfigError, KdjaxError

TEACHER_ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "teacher_tiny_hubert")
DATASETS = ("kws", "sv", "unlabeled")


@dataclasses.dataclass(frozen=True)
class Run:
    """One fine-tuning run of the grid."""

    name: str
    model: str  # "teacher" | "student" | "baseline" | "one_stage" (a student distilled while it is fine-tuned)
    mode: str  # "kws" | "sv" | "multitask"
    frozen: bool


DEFAULT_GRID = tuple(Run(f"{m}_{t}_frozen", m, t, True) for t in ("kws", "sv", "multitask")
                     for m in ("teacher", "student")) + (
    Run("baseline_kws", "baseline", "kws", False),
    Run("baseline_sv", "baseline", "sv", False),
)
REFERENCES = ("kws", "sv")  # MFCC reference rows (kdjax.eval.mfcc), one per task
FULL_GRID = tuple(Run(f"{m}_{t}_{'frozen' if f else 'finetuned'}", m, t, f)
                  for m in ("teacher", "student") for t in ("kws", "sv", "multitask") for f in (True, False)) + (
    Run("baseline_kws", "baseline", "kws", False), Run("baseline_sv", "baseline", "sv", False),
    Run("baseline_multitask", "baseline", "multitask", False)) + tuple(
    Run(f"one_stage_{t}", "one_stage", t, False) for t in ("kws", "sv", "multitask"))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one demo: `default` fits the time budget on 2 CPU cores; `tiny` is the CI smoke test."""

    dataset_suffix: str = ""
    distill_steps: int = 400  # 1.5 epochs of `unlabeled` (200 steps: the student's frozen KWS 0.8 points lower)
    distill_batch: int = 8
    distill_seconds: float = 2.0
    # frozen heads on cached features: steps to convergence (the best validation checkpoint is kept)
    kws_steps: int = 8000  # lr x steps as SUPERB's 200k steps at 1e-4; validation accuracy plateaus by then
    # also the multi-task runs' (their SV head costs most, ~60 ms a step): the best validation EER came at steps
    # 300-1050 of 1500 in the four SV and multi-task runs of the 18.8-min demo, so 1000 steps fit the 15 minutes
    sv_steps: int = 1000
    head_batch: int = 32
    # the multi-task runs' KWS batch: about the KWS epochs of kws_steps x head_batch in sv_steps (teacher, cached,
    # 1500 steps at lr 1e-3: batch 32 39.8% test accuracy, batch 160 52.0%; 8000 x 32 at 3e-3: 55.5%)
    multitask_kws_batch: int = 240
    kws_lr: float = 3e-3
    sv_lr: float = 1e-3
    # fine-tuned encoders (the baseline, --full): every step runs the encoder
    finetune_kws_steps: int = 300
    finetune_sv_steps: int = 150
    batch: int = 16
    sv_seconds: float = 2.0
    evaluations: int = 10  # validation evaluations per run (checkpoint selection)
    target_layers: tuple[int, ...] = (2, 4, 6, 8)
    devices: int = 0  # 0: every device; the tiny plan uses one (its steps compile faster unpartitioned on CPU)
    sv_width: int = 128  # x-vector width (SUPERB: 512) and its statistics layer (SUPERB: 1500): sized for 2 CPU cores
    sv_agg_dim: int = 512
    # feature-cache storage: hidden states here stay below 8 in magnitude, where float16 is within 4e-4 relative; half
    # the float32 bytes to write, hold and re-read (the teacher's SV training split: 1.2 GB instead of 2.3 GB)
    cache_dtype: str = "float16"


PLANS = {
    "default": Plan(),
    "tiny": Plan(dataset_suffix="_tiny", distill_steps=4, distill_batch=8, distill_seconds=1.0, kws_steps=4,
                 sv_steps=4, head_batch=8, finetune_kws_steps=4, finetune_sv_steps=4, batch=8, sv_seconds=1.0,
                 evaluations=2, devices=1, sv_width=64, sv_agg_dim=64, multitask_kws_batch=8),
}


class _Stages:
    """Times each stage and prints a header line for it."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n=== {name} ===", flush=True)
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.time() - start


def _done(workdir: str) -> bool:
    """Finished: results.json written by a run that SIGTERM did not stop (a stopped run resumes instead)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return not json.load(f).get("preempted", False)


def _train(config, run_dir: str, header: str = "") -> None:
    """Train (or resume) a stage's run unless it finished, printing `header` first; stop the demo if SIGTERM stopped
    the run (the loop saved a checkpoint, and the next `kdjax demo` resumes from it) rather than start the next stage
    without its output."""
    from kdjax.train.loop import train_and_evaluate

    if not _done(run_dir):
        if header:
            print(header, flush=True)
        train_and_evaluate(config, run_dir)
        if not _done(run_dir):
            raise KdjaxError(f"{run_dir}: stopped before it finished (run `kdjax demo` again to resume it)")


def _prepare(data_dir: str, plan: Plan) -> None:
    from kdjax.data import pipeline, prepare

    for name in DATASETS:
        full = f"synthetic_speech/{name}{plan.dataset_suffix}"
        try:
            pipeline.load_source(full, "train", data_dir)
            print(f"{full}: prepared already")
        except Exception:  # noqa: BLE001 -- not prepared (or incomplete): prepare it
            if prepare.run(full, data_dir=data_dir, manual_dir=None, skip_bad_examples=False, num_workers=None):
                raise ConfigError(f"kdjax demo: preparing {full} failed (see the messages above)")


def _teacher(workdir: str, data_dir: str, plan: Plan, pretrain: bool) -> str:
    if not pretrain:
        if not os.path.exists(os.path.join(TEACHER_ASSET, "model.safetensors")):
            raise ConfigError(f"the shipped teacher is missing ({TEACHER_ASSET}); run `kdjax demo --pretrain`")
        print(f"teacher: {TEACHER_ASSET} (shipped; made by kdjax/pretrain/tiny_hubert_config.py)")
        return TEACHER_ASSET
    from kdjax.pretrain.tiny_hubert_config import get_config

    config = get_config("runlocal" if plan.dataset_suffix else None)
    run_dir = os.path.join(workdir, "pretrain")
    config.pretrain.data_dir = data_dir
    config.mesh.devices = plan.devices
    _train(config, run_dir)
    return os.path.join(run_dir, "teacher_hf")


def _distill(workdir: str, data_dir: str, teacher: str, plan: Plan) -> str:
    from kdjax.distill.config import distill_config
    from kdjax.models.hf import read_config

    config = distill_config()
    config.seed = 0
    config.total_steps = plan.distill_steps
    config.batch_size = plan.distill_batch
    config.log_every = max(1, min(50, plan.distill_steps // 10))
    config.eval_every = 0
    config.checkpoint.save_every = max(plan.distill_steps // 2, 1)
    config.checkpoint.keep = 1
    config.optim.lr = 5e-4
    config.mesh.devices = plan.devices
    d = config.distill
    d.teacher = teacher
    d.student.num_hidden_layers = 1
    d.loss.target_layers = _target_layers(plan, read_config(teacher).num_hidden_layers)
    d.update(dataset=f"synthetic_speech/unlabeled{plan.dataset_suffix}", train_split="train",
             eval_split="validation", max_seconds=plan.distill_seconds, eval_utterances=0)
    d.data_dir = data_dir
    run_dir = os.path.join(workdir, "distill")
    _train(config, run_dir)
    return os.path.join(run_dir, "student_hf")


def _target_layers(plan: Plan, teacher_layers: int) -> list[int]:
    return [t for t in plan.target_layers if t <= teacher_layers] or [teacher_layers]


def finetune_config(workdir: str, data_dir: str, run: Run, encoders: dict[str, str], plan: Plan):
    """The loop config of one grid run (what `_finetune` trains; benchmarks time its pieces)."""
    from kdjax.finetune.config import finetune_config as base, variants
    from kdjax.models.hf import read_config

    config = base(run.mode)
    ft = config.finetune
    ft.teacher_name = "teacher"
    if run.mode == "kws":  # kdjax's KWS recipe (configs/finetune_kws.py): Adam, no weight decay
        config.optim.update(name="adam", weight_decay=0.0)
    else:
        config.optim.update(name="adamw", weight_decay=1e-4)
    config.optim.update(schedule="constant", warmup_frac=0.0, b2=0.999, eps=1e-8, clip_norm=1.0)
    if run.model == "one_stage":  # the demo's student architecture, built from the teacher and distilled as it trains
        variants(config, "one_stage")
        ft.update(role="student", model_name="student_one_stage")
        ft.one_stage.teacher = encoders["teacher"]
        ft.one_stage.student.num_hidden_layers = 1
        ft.one_stage.loss.target_layers = _target_layers(plan, read_config(encoders["teacher"]).num_hidden_layers)
    else:
        init = "random" if run.model == "baseline" else "pretrained"
        variants(config, f"frozen={run.frozen},init={init}")
        ft.update(encoder=encoders["student" if run.model == "baseline" else run.model], role=run.model,
                  model_name=run.model)
    if run.frozen:  # heads only, on cached features: cheap steps, so train them to convergence
        config.total_steps = plan.kws_steps if run.mode == "kws" else plan.sv_steps
        config.batch_size = plan.head_batch
        config.optim.lr = plan.kws_lr if run.mode == "kws" else plan.sv_lr
        ft.update(cache=os.path.join(workdir, "cache"), cache_dtype=plan.cache_dtype)
        if run.mode == "multitask":  # each head at its single-task run's learning rate
            ft.kws_batch_size = plan.multitask_kws_batch
            config.optim.groups = {"kws_head": {"lr": plan.kws_lr}}
    else:
        config.total_steps = plan.finetune_kws_steps if run.mode == "kws" else plan.finetune_sv_steps
        config.batch_size = plan.batch
        config.optim.lr = 1e-3 if run.model in ("baseline", "one_stage") else 2e-4
    if run.mode != "kws":  # SV keeps the checkpoint with the best EER on the held-out validation speakers, multi-task
        ft.update(sv_select="validation", sv_dev_trials="validation")  # the best mean of that EER and KWS error
        if run.mode == "multitask":
            ft.multitask_select = "mean_error"
    config.mesh.devices = plan.devices
    config.log_every = max(1, min(100, config.total_steps // 10))
    # uncached runs pay an encoder pass over the validation split per evaluation: fewer of them; the baseline's short
    # run from scratch (150-300 steps) is scored once, at its end, and tested in that final state
    evaluations = plan.evaluations if run.frozen else 1 if run.model == "baseline" else min(plan.evaluations, 3)
    config.eval_every = max(1, config.total_steps // evaluations)
    config.checkpoint.update(save_every=config.total_steps, keep=1)
    encoder_lr = {"baseline": 1e-3, "one_stage": 5e-4}.get(run.model, 1e-4)  # one-stage: the distillation's lr
    config.finetune.update(data_dir=data_dir, kws_dataset=f"synthetic_speech/kws{plan.dataset_suffix}",
                           sv_dataset=f"synthetic_speech/sv{plan.dataset_suffix}", sv_seconds=plan.sv_seconds,
                           encoder_lr=encoder_lr, sv_width=plan.sv_width, sv_agg_dim=plan.sv_agg_dim,
                           sv_embed_dim=min(plan.sv_width, 512))
    if plan.dataset_suffix:
        config.finetune.update(eval_batch_size=8)
    return config


def _finetune(workdir: str, data_dir: str, run: Run, encoders: dict[str, str], plan: Plan) -> str:
    config = finetune_config(workdir, data_dir, run, encoders, plan)
    run_dir = os.path.join(workdir, run.name)
    _train(config, run_dir, f"--- {run.name}: {run.model} encoder, {run.mode}, "
                            f"{'frozen' if run.frozen else 'fine-tuned'}")
    return run_dir


def _reference(workdir: str, data_dir: str, mode: str, plan: Plan) -> str:
    """The MFCC reference row of `mode` (kdjax.eval.mfcc), reused when its results.json exists."""
    from kdjax.eval.mfcc import write_reference

    run_dir = os.path.join(workdir, f"mfcc_{mode}")
    if not _done(run_dir):
        print(f"--- mfcc_{mode}: MFCC reference, {mode}", flush=True)
        dataset = f"synthetic_speech/{mode}{plan.dataset_suffix}"
        write_reference(run_dir, mode, dataset, data_dir)
    return run_dir


def inference_ms_per_second(encoder_dir: str, *, batch: int = 4, seconds: float = 2.0, repeats: int = 5) -> float:
    """Median milliseconds of encoder forward per second of audio (jitted, float32, this machine)."""
    import jax
    import numpy as np
    from flax import nnx

    from kdjax.models.hf import from_pretrained

    graphdef, state = nnx.split(from_pretrained(encoder_dir))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).last_hidden_state)
    from kdjax.data.audio import SAMPLE_RATE

    x = np.random.default_rng(0).standard_normal((batch, int(SAMPLE_RATE * seconds))).astype(np.float32)
    forward(state, x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(state, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / (batch * seconds)


def run_demo(workdir: str, *, full: bool = False, size: str = "default", pretrain: bool = False) -> dict[str, Any]:
    """Run every stage (reusing finished ones) and write the report; returns the report's table rows."""
    if size not in PLANS:
        raise ConfigError(f"demo size {size!r}: expected one of {sorted(PLANS)}")
    plan = PLANS[size]
    workdir = os.path.abspath(workdir)
    data_dir = os.path.join(workdir, "data")
    os.makedirs(workdir, exist_ok=True)
    stages = _Stages()
    start = time.time()
    stages.run("1/5 prepare the synthetic corpus", _prepare, data_dir, plan)
    teacher = stages.run("2/5 teacher", _teacher, workdir, data_dir, plan, pretrain)
    student = stages.run("3/5 distil a 1-layer student", _distill, workdir, data_dir, teacher, plan)
    encoders = {"teacher": teacher, "student": student}
    run_dirs = [stages.run("4/5 fine-tune", _finetune, workdir, data_dir, run, encoders, plan)
                for run in (FULL_GRID if full else DEFAULT_GRID)]
    run_dirs += [stages.run("4/5 fine-tune", _reference, workdir, data_dir, mode, plan) for mode in REFERENCES]
    return stages.run("5/5 report", _report, workdir, run_dirs, encoders, stages, start)


def _edge(student_dir: str, jax_ms_per_s: float) -> dict[str, Any] | None:
    """The student's int8 ONNX size and latency (kdjax.export.measure), when the export extra is installed."""
    import importlib.util

    if importlib.util.find_spec("jax2onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        print("edge export: skipped (pip install 'kdjax[export]' for the int8 size and latency)")
        return None
    from kdjax.export import measure

    return {**measure(student_dir), "jax_ms_per_s": jax_ms_per_s}


def _report(workdir: str, run_dirs: list[str], encoders: dict[str, str], stages: _Stages,
            start: float) -> dict[str, Any]:
    from kdjax.eval.report import build_report

    speed = {name: inference_ms_per_second(path) for name, path in encoders.items()}
    for run_dir in run_dirs:  # inference speed of each run's encoder, for the table
        path = os.path.join(run_dir, "results.json")
        with open(path) as f:
            results = json.load(f)
        role = results["export"]["model"].get("role", "")
        if role == "reference":
            continue
        results["export"]["model"]["inference_ms_per_s"] = speed["student" if role == "baseline" else role]
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(path + ".tmp", path)
    table = build_report(run_dirs, workdir)
    edge = _edge(encoders["student"], speed["student"])
    if edge is not None:
        table["edge"] = edge
        with open(os.path.join(workdir, "report.md"), "a") as f:
            f.write(f"\nOn device: the student's encoder as dynamic-int8 ONNX is {edge['int8_mb']:.2f} MB (float32 "
                    f"{edge['float_mb']:.2f} MB) and takes {edge['ms_per_s']:.1f} ms per second of audio at batch 1 "
                    f"with onnxruntime on {edge['threads']} thread(s); jax.jit float32 at batch 4 takes "
                    f"{edge['jax_ms_per_s']:.1f} ms (this machine; `kdjax export`, docs/export.md).\n")
        with open(os.path.join(workdir, "edge.json"), "w") as f:
            json.dump(edge, f, indent=2)
    print((open(os.path.join(workdir, "report.md")).read()))
    timings = {**stages.timings, "total": time.time() - start}
    lines = ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    print("\n".join(["Time per stage (this run; reused stages take ~0 s):"] + lines))
    with open(os.path.join(workdir, "timings.json"), "w") as f:
        json.dump(timings, f, indent=2)
    return table
