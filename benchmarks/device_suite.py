"""One-call accelerator suite: kdjax vs PyTorch (transformers) on whatever device JAX finds, one table at the end.

Run (repository root, no install needed):   benchmarks/device_suite.sh            # or python benchmarks/device_suite.py
                                            python benchmarks/device_suite.py --tiny   # CPU dry run, tiny sizes
Rows: HuBERT-base encoder forward, the DistilHuBERT distillation step (HuBERT-base teacher to layer 12, 2-layer
student, prediction heads, L1 + cosine, AdamW) and the SV fine-tuning step (x-vector + AAM head on a frozen base
encoder), each in float32 and bfloat16 compute (float32 params, float32 loss math), at the batch sizes of --batches
x --seconds of audio, for kdjax, PyTorch eager and torch.compile. Random weights and random audio: no data, no download.

Columns: step time (mean over --steps timed steps, one device sync at the end, after a warm-up that compiles),
audio-seconds/s, model FLOPs utilisation = (XLA's FLOP count of the kdjax program, the same math for both
frameworks) / (step time x the bf16 matmul peak measured at the start of this run), peak device memory (kdjax:
XLA's memory analysis of the compiled program, arguments + outputs + temporaries - donated; PyTorch:
torch.cuda.max_memory_allocated), compile/warm-up seconds, and the kdjax / PyTorch-eager step-time ratio.

kdjax and PyTorch run one after the other in two child processes (so neither holds the other's device memory);
rows run in priority order (bfloat16 before float32, distillation first, large batches first) and each child stops
starting rows at its share of --budget seconds, so the whole run ends in time with the rows it could do.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKS = ("distill", "encoder", "sv")
SAMPLE_RATE = 16000
NUM_SPEAKERS = 1251  # VoxCeleb1's training speakers (SUPERB SV)
GRACE_S = 30  # a child still running this long after its deadline is stopped


# ---------------------------------------------------------------------------------------------------- the plan
def configs(tiny: bool):
    """(teacher/encoder EncoderConfig, distillation target layers, SV head settings): HuBERT-base, or tiny."""
    from kdjax.models.config import preset

    base = preset("facebook/hubert-base-ls960", mask_time_prob=0.0)
    if tiny:
        # Small enough that compiling every row stays cheap on a CPU: 3 conv layers (frames of 20 samples).
        base = base.replace(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(32,) * 3, conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
        return base, (1, 2), dict(num_speakers=8, width=32, embed_dim=32)
    return base, (4, 8, 12), dict(num_speakers=NUM_SPEAKERS, width=512, embed_dim=512)


def plan(args) -> list[dict]:
    """Every row in priority order; `impl` is kdjax, torch or torch.compile."""
    rows = []
    for dtype in args.dtypes:
        for work in args.works:
            for batch in sorted(args.batches, reverse=True):
                for impl in ("kdjax", "torch", "torch.compile"):
                    if impl != "kdjax" and args.skip_torch or impl == "torch.compile" and args.skip_compile:
                        continue
                    rows.append(dict(work=work, dtype=dtype, batch=batch, impl=impl))
    # Every work and dtype at the largest batch first, then the smaller batches; PyTorch eager rows (the goal's
    # reference) before the slow-to-compile torch.compile rows.
    top = max(args.batches)
    return sorted(rows, key=lambda r: (r["impl"] == "torch.compile", r["batch"] != top, -r["batch"],
                                       args.dtypes.index(r["dtype"]), args.works.index(r["work"])))


def random_batch(batch: int, seconds: float, num_speakers: int, seed: int = 0):
    """Random audio [B, S] float32, an all-ones attention mask and random speaker labels (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    samples = int(seconds * SAMPLE_RATE)
    return (rng.standard_normal((batch, samples)).astype(np.float32), np.ones((batch, samples), np.int32),
            rng.integers(0, num_speakers, batch).astype(np.int32))


# ---------------------------------------------------------------------------------------------------- kdjax child
def _memory(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


def matmul_peak(n: int, steps: int) -> float:
    """Measured bfloat16 matmul FLOP/s: a chain of `steps` [n, n] @ [n, n] products in one jitted call."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = (jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32) / n ** 0.5).astype(jnp.bfloat16)

    @jax.jit
    def chain(a):
        return jax.lax.fori_loop(0, steps, lambda _, x: (x @ b).astype(jnp.bfloat16), a)

    jax.block_until_ready(chain(a))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(chain(a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 * steps / best


def kdjax_row(row: dict, args) -> dict:
    """Compile and time one kdjax row; the timed loop makes no host sync until its last step."""
    import jax
    from flax import nnx

    from common import distill_setup, sv_setup
    from kdjax.distill.losses import LossConfig
    from kdjax.distill.student import student_config
    from kdjax.models.encoder import Encoder

    base, targets, sv = configs(args.tiny)
    cfg = base.replace(dtype=row["dtype"])
    x, mask, speakers = random_batch(row["batch"], args.seconds, num_speakers=sv["num_speakers"])
    batch = jax.device_put({"input_values": x, "attention_mask": mask, "speaker": speakers})
    extra = ()  # the distillation step's frozen teacher: an argument, never donated (as in kdjax's loop)
    if row["work"] == "encoder":
        graphdef, params = nnx.split(Encoder(cfg, rngs=nnx.Rngs(0)))
        fn = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b["input_values"]).last_hidden_state)
        state, donate = params, False
    elif row["work"] == "distill":
        s_cfg = student_config(cfg, {"init": "random", "dtype": row["dtype"], "remat": args.remat})
        state, teacher, step = distill_setup(cfg, s_cfg, LossConfig(target_layers=targets))
        fn, donate, extra = jax.jit(step, donate_argnums=0), True, (jax.device_put(teacher),)
    else:
        state, step = sv_setup(cfg, **sv)
        fn, donate = jax.jit(step, donate_argnums=0), True
    start = time.perf_counter()
    compiled = fn.lower(state, batch, *extra).compile()
    flops, memory = _flops(compiled), _memory(compiled)

    def call(state):
        out = compiled(state, batch, *extra)
        return out[0] if donate else state, out

    state, out = call(state)  # warm-up
    jax.block_until_ready(out)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        state, out = call(state)
    jax.block_until_ready(out)
    return dict(step_s=(time.perf_counter() - start) / args.steps, flops=flops, memory=memory, compile_s=warm)


# ---------------------------------------------------------------------------------------------------- torch child
def torch_row(row: dict, args, device: str) -> dict:
    """Build and time one PyTorch row (eager, or torch.compile with --compile_backend)."""
    import torch

    import common
    from kdjax.distill.student import student_config

    base, targets, sv = configs(args.tiny)
    x, mask, speakers = random_batch(row["batch"], args.seconds, num_speakers=sv["num_speakers"])
    backend = args.compile_backend if row["impl"] == "torch.compile" else None
    if row["work"] == "encoder":
        run = common.torch_encoder_forward(base, x, device, row["dtype"], backend)
    elif row["work"] == "distill":
        s_cfg = student_config(base, {"init": "random"})
        run = common.torch_distill_step(base, s_cfg, x, mask, targets, device, row["dtype"], backend)
    else:
        run = common.torch_sv_step(base, x, speakers, sv["num_speakers"], device, row["dtype"], backend,
                                   sv["width"], sv["embed_dim"])
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    run()  # a second warm-up: torch.compile may recompile once when the autograd/optimizer state first exists
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        run()
    sync()
    step = (time.perf_counter() - start) / args.steps
    memory = float(torch.cuda.max_memory_allocated()) if cuda else None
    return dict(step_s=step, memory=memory, compile_s=warm)


def child(args) -> None:
    """Run this child's rows (kdjax or torch) until its deadline, one JSON line per row into --out."""
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    rows = json.loads(args.rows)

    def emit(record):
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")

    if args.child == "kdjax":
        import jax

        dev = jax.devices()[0]
        n, steps = (256, 4) if args.tiny else (8192, 20)
        emit(dict(info="jax", device=f"{dev.platform}: {dev.device_kind} x{jax.device_count()}",
                  jax=jax.__version__, peak=matmul_peak(n, steps)))
        run = lambda row: kdjax_row(row, args)  # noqa: E731
    else:
        import torch
        import transformers

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.tiny:
            torch.set_num_threads(1)
        emit(dict(info="torch", torch=torch.__version__, transformers=transformers.__version__, device=device,
                  threads=torch.get_num_threads()))
        run = lambda row: torch_row(row, args, device)  # noqa: E731
    for row in rows:
        if time.time() > args.deadline:
            emit({**row, "skipped": "time budget"})
            continue
        try:
            emit({**row, **run(row)})
        except Exception as e:  # noqa: BLE001  (one failed row must not lose the others: it is reported)
            emit({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"})


# ---------------------------------------------------------------------------------------------------- the table
def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(records: list[dict], args) -> str:
    """The one table: a header with device and peak, then a line per row."""
    info = {r["info"]: r for r in records if "info" in r}
    rows = [r for r in records if "info" not in r]
    peak = info.get("jax", {}).get("peak")
    jx, pt = info.get("jax", {}), info.get("torch", {})
    lines = [f"device {jx.get('device', '?')}  jax {jx.get('jax', '?')}  torch {pt.get('torch', '-')} "
             f"({pt.get('device', '-')})  transformers {pt.get('transformers', '-')}",
             f"bf16 matmul peak (measured): {_fmt(peak and peak / 1e12, '.3f')} TFLOP/s   audio {args.seconds:g} s "
             f"per example   {args.steps} timed steps a row   torch.compile backend {args.compile_backend}"]
    key = lambda r: (r["work"], r["dtype"], r["batch"])  # noqa: E731
    flops = {key(r): r.get("flops") for r in rows if r["impl"] == "kdjax"}
    eager = {key(r): r.get("step_s") for r in rows if r["impl"] == "torch"}
    head = (f"{'work':8s} {'dtype':8s} {'batch':>5s} {'impl':13s} {'step ms':>9s} {'audio-s/s':>10s} {'MFU':>6s} "
            f"{'mem GB':>7s} {'warm s':>7s} {'/eager':>6s}")
    lines += [head, "-" * len(head)]
    order = {w: i for i, w in enumerate(WORKS)}
    for r in sorted(rows, key=lambda r: (order[r["work"]], r["dtype"], r["batch"], r["impl"])):
        lead = f"{r['work']:8s} {r['dtype']:8s} {r['batch']:5d} {r['impl']:13s}"
        if "step_s" not in r:
            lines.append(f"{lead} {r.get('skipped') or r.get('error')}")
            continue
        t, f = r["step_s"], flops.get(key(r))
        mfu = f / t / peak if f and peak else None
        ratio = t / eager[key(r)] if eager.get(key(r)) else None
        memory, mfu = _fmt(r.get("memory") and r["memory"] / 1e9, "7.3f"), _fmt(mfu and 100 * mfu, "5.1f")
        lines.append(f"{lead} {t * 1e3:9.2f} {r['batch'] * args.seconds / t:10.1f} {mfu:>5s}% {memory:>7s} "
                     f"{r['compile_s']:7.1f} {_fmt(ratio, '6.2f'):>6s}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models, batch 2 x 0.1 s, CPU: a dry run of every row")
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=None, help="default 8,32,64")
    p.add_argument("--seconds", type=float, default=None, help="audio seconds per example (default 4)")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["bfloat16", "float32"])
    p.add_argument("--works", type=lambda s: s.split(","), default=list(WORKS), help=f"subset of {WORKS}")
    p.add_argument("--steps", type=int, default=None, help="timed steps a row (default 10; --tiny 2)")
    p.add_argument("--budget", type=float, default=420.0,
                   help=f"seconds for the whole run: rows not started by then are skipped (+{GRACE_S} s hard stop)")
    p.add_argument("--torch_share", type=float, default=0.45, help="fraction of the budget left to PyTorch")
    p.add_argument("--compile_backend", default=None, help="torch.compile backend (default inductor; --tiny eager)")
    p.add_argument("--remat", action="store_true", help="remat the student's transformer layers")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--skip_compile", action="store_true")
    p.add_argument("--json", default=None, help="also write every row as JSON to this file")
    p.add_argument("--child", choices=("kdjax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = sorted(set(args.works) - set(WORKS)) + sorted(set(args.dtypes) - {"float32", "bfloat16"})
    if unknown:
        p.error(f"--works/--dtypes: unknown {unknown}; expected works from {WORKS}, dtypes float32/bfloat16")
    args.batches = args.batches or ([2] if args.tiny else [8, 32, 64])
    args.seconds = args.seconds or (0.1 if args.tiny else 4.0)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        child(args)
        return 0
    start = time.time()
    rows = plan(args)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if args.tiny:  # a dry run on CPU: cheaper XLA compiles (tiny timings mean nothing anyway), one torch thread
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                   XLA_FLAGS=" ".join([env.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
                                       "--xla_llvm_disable_expensive_passes=true"]).strip())
    flags = [f"--{k}={v}" for k, v in (("seconds", args.seconds), ("steps", args.steps),
                                       ("compile_backend", args.compile_backend))]
    flags += ["--tiny"] * args.tiny + ["--remat"] * args.remat
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, share in (("kdjax", 1.0 - args.torch_share), ("torch", 1.0)):
            mine = [r for r in rows if (r["impl"] == "kdjax") == (name == "kdjax")]
            if name == "torch" and not mine:
                continue
            out = os.path.join(tmp, f"{name}.jsonl")
            deadline = start + share * args.budget
            cmd = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--rows={json.dumps(mine)}",
                   f"--deadline={deadline}", f"--out={out}", *flags]
            try:  # a hard stop shortly past the deadline: a row that runs over loses only itself and later rows
                code = subprocess.run(cmd, env=env, timeout=max(deadline - time.time(), 0) + GRACE_S).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            got = [json.loads(line) for line in open(out)] if os.path.exists(out) else []
            if code != 0:
                print(f"{name} child exited with {code}", file=sys.stderr)
            done = {(r.get("work"), r.get("dtype"), r.get("batch"), r.get("impl")) for r in got}
            got += [{**r, "error": f"not run ({name} child exited with {code})"} for r in mine
                    if (r["work"], r["dtype"], r["batch"], r["impl"]) not in done]
            records += got
    print(table(records, args))
    print(f"total {time.time() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
