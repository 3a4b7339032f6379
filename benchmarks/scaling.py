"""Weak scaling of the distillation step: 1, 2, 4, 8 devices at a fixed per-device batch, data-parallel over a mesh.

Each device count runs in its own subprocess. With `--platform cpu` (the default) the devices are forced host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set per subprocess), so they share this machine's
cores: the figures then measure the SPMD overhead (partitioning, all-reduces, per-device dispatch), not a speed-up,
and the efficiency falls roughly as cores / devices. With `--platform default` the subprocess uses the first N real
accelerators (GPU/TPU) of the host; counts above the host's device count are skipped.

Run: .venv/bin/python benchmarks/scaling.py [--size tiny|small|base] [--per_device_batch 2] [--seconds 1]
                                            [--devices 1,2,4,8] [--repeats 5] [--platform cpu|default]
                                            [--teacher_dtype float32|bfloat16] [--dtype float32|bfloat16] [--remat]
Prints, per device count: global batch, median step time, audio-seconds per second, and the weak-scaling efficiency
throughput(N) / (N x throughput(1)). Sizes: tiny (teacher 4 x 64-d, 3-layer conv stack; seconds on a CPU), small
(teacher 6 x 256-d, base conv stack), base (HuBERT-base teacher 12 x 768-d); the student is always 2 layers,
prediction heads for 3 teacher layers, L1 + cosine loss, AdamW, random weights (as benchmarks/distill_step.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 conv_dim=(64, 64, 64), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4),
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024),
    "base": dict(),
}


def _targets(layers: int) -> tuple[int, ...]:
    return tuple(layers * i // 3 for i in (1, 2, 3))


def worker(args: argparse.Namespace) -> dict:
    """One device count in this process: build the step on a mesh of `args.count` devices and time it."""
    import jax
    import numpy as np

    from common import distill_setup
    from kdjax.distill.losses import LossConfig
    from kdjax.distill.student import student_config
    from kdjax.models.config import preset
    from kdjax.train import sharding

    devices = jax.devices()[:args.count]
    if len(devices) < args.count:
        return {"devices": args.count, "skipped": f"only {len(devices)} devices"}
    mesh = sharding.make_mesh(None, devices=devices)
    t_cfg = preset("facebook/hubert-base-ls960", dtype=args.teacher_dtype, mask_time_prob=0.0, **SIZES[args.size])
    s_cfg = student_config(t_cfg, {"remat": args.remat, "init": "random", "dtype": args.dtype})
    loss_cfg = LossConfig(target_layers=_targets(t_cfg.num_hidden_layers))
    state, teacher, train_step = distill_setup(t_cfg, s_cfg, loss_cfg)
    shardings = sharding.state_sharding(state, mesh)
    state = jax.device_put(state, shardings)
    teacher = jax.device_put(teacher, sharding.replicated(mesh))
    batch_size, samples = args.per_device_batch * args.count, int(args.seconds * 16000)
    rng = np.random.default_rng(0)
    host = {"input_values": rng.standard_normal((batch_size, samples)).astype(np.float32),
            "attention_mask": np.ones((batch_size, samples), np.int32)}
    batch = sharding.to_global(host, mesh)
    step = jax.jit(train_step,
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    t0 = time.perf_counter()
    state, metrics = step(state, batch, teacher)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, teacher)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"devices": args.count, "platform": devices[0].platform, "kind": devices[0].device_kind,
            "global_batch": batch_size, "step_s": step_s, "first_step_s": compile_s,
            "audio_s_per_s": batch_size * args.seconds / step_s, "loss": float(metrics["loss"])}


def _run_one(args: argparse.Namespace, count: int) -> dict:
    env = dict(os.environ)
    if args.platform == "cpu":
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--count", str(count)] + [
        a for a in sys.argv[1:] if a != "--worker"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"devices": count, "skipped": f"exit {out.returncode}: {out.stderr.strip()[-500:]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--per_device_batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--platform", default="cpu", choices=["cpu", "default"])
    parser.add_argument("--teacher_dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="student compute dtype")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per device count")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return

    rows = [_run_one(args, int(n)) for n in args.devices.split(",")]
    done = [r for r in rows if "skipped" not in r]
    base = next((r["audio_s_per_s"] / r["devices"] for r in done), None)
    print(f"distillation step, size {args.size}, {args.per_device_batch} x {args.seconds:g} s per device, "
          f"teacher {args.teacher_dtype}, student {args.dtype}, remat {args.remat}, platform {args.platform}"
          + (f" ({done[0]['kind']}, {os.cpu_count()} host cores)" if done else ""))
    print(f"{'devices':>7} {'batch':>6} {'step s':>8} {'audio-s/s':>10} {'efficiency':>10}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['devices']:>7} skipped: {r['skipped']}")
            continue
        r["efficiency"] = r["audio_s_per_s"] / (r["devices"] * base)
        print(f"{r['devices']:>7} {r['global_batch']:>6} {r['step_s']:>8.3f} {r['audio_s_per_s']:>10.2f} "
              f"{r['efficiency']:>10.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
