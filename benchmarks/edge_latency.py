"""Edge latency: ms per 1 s of audio at batch 1 and size on disk, for jax.jit, onnxruntime float32 / int8, LiteRT
float32 / int8, transformers PyTorch float32 and torch dynamic int8; on the demo student (the shipped teacher's
1-layer student, teacher-initialised), the demo teacher (kdjax/assets) and a DistilHuBERT-size student (random).

Run: .venv/bin/python benchmarks/edge_latency.py [--models student,teacher,distilhubert] [--threads 1,2]
     [--repeats 20] [--json out.json]
Each thread count runs in its own process (XLA's CPU thread pool is fixed at start-up). Needs `kdjax[export]`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TEACHER = Path(__file__).resolve().parents[1] / "kdjax" / "assets" / "teacher_tiny_hubert"


def _encoder(name: str):
    from flax import nnx

    from kdjax.distill.student import build_student, student_config
    from kdjax.models import hf
    from kdjax.models.config import preset
    from kdjax.models.encoder import init_encoder

    if name == "teacher":
        return hf.from_pretrained(TEACHER)
    if name == "student":
        teacher = hf.from_pretrained(TEACHER)
        return build_student(student_config(teacher.config, {"num_hidden_layers": 1}), teacher, "teacher",
                             nnx.Rngs(0))
    if name == "distilhubert":
        return init_encoder(preset("ntu-spml/distilhubert"))
    raise SystemExit(f"unknown model {name!r}: expected student, teacher or distilhubert")


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def measure_model(name: str, threads: int, repeats: int) -> list[dict]:
    """Rows {model, backend, threads, ms_per_s, mb} for one model at one thread count."""
    import jax
    import torch

    from common import median_time
    from kdjax.export import api
    from kdjax.models import hf

    torch.set_num_threads(threads)
    encoder = _encoder(name)
    cfg = encoder.config
    samples = 16000 // cfg.frame_stride * cfg.frame_stride
    audio = np.random.default_rng(0).standard_normal((1, samples)).astype(np.float32)
    mask = np.ones((1, samples), np.int32)
    last = [cfg.num_hidden_layers]
    rows = []

    def add(backend, fn, path=None, mb=None):
        ms = median_time(fn, repeats) * 1e3 * 16000 / samples
        rows.append({"model": name, "backend": backend, "threads": threads, "ms_per_s": round(ms, 2),
                     "mb": round(_mb(path) if path else mb, 2)})
        print(json.dumps(rows[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_dir = hf.save_pretrained(encoder, tmp / "hf")
        forward = jax.jit(lambda x, m: encoder(x, m).last_hidden_state)
        add("jax.jit float32", lambda: forward(audio, mask).block_until_ready(), hf_dir / "model.safetensors")
        for fmt, fixed in (("onnx", None), ("tflite", None), ("tflite", (1, samples))):
            floating = api.export((encoder, None, None), tmp / f"float.{fmt}", fmt=fmt, layers=last, fixed_shape=fixed)
            quantized = api.export((encoder, None, None), tmp / f"int8.{fmt}", fmt=fmt, quantize="dynamic-int8",
                                   layers=last, fixed_shape=fixed)
            label = {"onnx": "onnxruntime"}.get(fmt, "LiteRT fixed 1x1s" if fixed else "LiteRT")
            for kind, path in (("float32", floating), ("dynamic int8", quantized)):
                run = api.runner(path, threads=threads)
                add(f"{label} {kind}", lambda: run(audio, mask), path)
        import transformers

        model = transformers.AutoModel.from_pretrained(hf_dir).eval()
        x, m = torch.from_numpy(audio), torch.from_numpy(mask).long()
        with torch.no_grad():
            add("PyTorch float32", lambda: model(x, attention_mask=m), hf_dir / "model.safetensors")
            q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            torch.save(q.state_dict(), tmp / "q.pt")
            add("PyTorch dynamic int8", lambda: q(x, attention_mask=m), tmp / "q.pt")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="student,teacher,distilhubert")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one model at one thread count, rows as JSON lines on stdout
        measure_model(args.models, int(args.threads), args.repeats)
        return
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}",
                   OMP_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu")
        for name in args.models.split(","):
            out = subprocess.run([sys.executable, __file__, "--worker", "--models", name, "--threads", str(threads),
                                  "--repeats", str(args.repeats)], env=env, capture_output=True, text=True,
                                 cwd=os.path.dirname(os.path.abspath(__file__)))
            got = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
            rows += got
    print("\n| model | backend | threads | ms per 1 s audio | MB on disk |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['threads']} | {r['ms_per_s']:.2f} | {r['mb']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
