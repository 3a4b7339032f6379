"""Frozen fine-tuning, uncached vs cached: wall time per epoch of KWS and SV, the cache pass, and the disk it takes.

Run: .venv/bin/python benchmarks/frozen_finetune.py [--models teacher,student,base] [--repeats 3] [--disk_only]

For each model, timed steps (median of `repeats` after a warm-up that compiles):
  uncached  jitted encoder forward (frozen, no backward) + featurizer/head step (Adam), as the uncached run does
  cached    the featurizer/head step alone, from pooled [b, L, H] (KWS) or frame crops [b, L, T, H] (SV) features,
            plus reading those batches back from a real on-disk cache (kdjax.finetune.cache readers, float16)
  cache     the encoder forward of the cache pass (per clip; SV caches whole utterances: --sv_utterance_seconds)
Epoch times are extrapolated from a few batches: steps per epoch x seconds per step, clearly estimates.
Models: "teacher" and "student" are the demo's (kdjax/assets/teacher_tiny_hubert; its 1-layer student shape with
random weights) with the demo's plan (batch 16, 1 s KWS clips, 2 s SV crops, x-vector width 256) and the synthetic
corpus's epochs; "base" is HuBERT-base shapes with random weights and SUPERB's settings (batch 32, 3 s SV crops,
x-vector width 512), extrapolated to Speech Commands v1 and VoxCeleb1 (--base_batch runs fewer clips a step and
scales per clip). The development machine is 2 shared cores: timings are noisy, compare ratios, rerun before
quoting. The disk table is computed from shapes only.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from common import median_time

SC1 = {"train": 51_094, "validation": 6_798, "test": 6_835}  # Speech Commands v0.01 (SUPERB KS), 1 s clips
VOX1 = {"train": 148_642, "test": 4_874, "hours": 352.0}  # VoxCeleb1 dev / test utterances, hours in total
SYNTH_KWS = {"train": 3_600, "validation": 450, "test": 450}  # synthetic_speech/kws: 300 speakers x 15 clips, 80/10/10
SYNTH_SV = {"train": 2_000, "test": 400}  # synthetic_speech/sv: 250 + 50 speakers x 8 utterances


@dataclasses.dataclass
class Setting:
    name: str
    batch: int
    sv_seconds: float
    sv_width: int
    speakers: int
    kws_epoch: dict
    sv_epoch: dict
    sv_utterance_seconds: float  # mean utterance length the SV cache pass encodes


def frames_per_clip(seconds: float) -> int:
    """Encoder frames of a clip (base conv stack: receptive field 400, stride 320)."""
    return (int(seconds * 16000) - 400) // 320 + 1


def disk_table(hidden: int = 768, states: int = 13) -> str:
    """Markdown table: bytes per audio-second and corpus totals, per dtype and layer choice (frames and pooled)."""
    rows = ["| features | layers | dtype | bytes / audio-s | Speech Commands v1 (64.7k clips) | VoxCeleb1 (352 h) |",
            "|---|---|---|---|---|---|"]
    sc_clips = sum(SC1.values())
    vox_frames = VOX1["hours"] * 3600 * 50  # 50 frames/s
    vox_utts = VOX1["train"] + VOX1["test"]
    for layers, n in (("all", states), ("1", 1)):
        for dtype, size in (("float32", 4), ("float16 / bfloat16", 2)):
            per_frame = n * hidden * size
            sc = sc_clips * frames_per_clip(1.0) * per_frame
            rows.append(f"| frames | {layers} ({n}) | {dtype} | {50 * per_frame / 1e6:.3g} MB | {_size(sc)} | "
                        f"{_size(vox_frames * per_frame)} |")
    for layers, n in (("all", states), ("1", 1)):
        for dtype, size in (("float32", 4), ("float16 / bfloat16", 2)):
            per_clip = n * hidden * size
            rows.append(f"| pooled (KWS) | {layers} ({n}) | {dtype} | {per_clip / 1e3:.3g} kB per clip | "
                        f"{_size(sc_clips * per_clip)} | ({_size(vox_utts * per_clip)}: SV needs frames) |")
    return "\n".join(rows)


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def _encoder(name: str):
    from flax import nnx

    from kdjax.models import hf
    from kdjax.models.config import preset
    from kdjax.models.encoder import Encoder

    teacher_dir = os.path.join(os.path.dirname(__file__), "..", "kdjax", "assets", "teacher_tiny_hubert")
    if name == "teacher":
        return hf.from_pretrained(teacher_dir)
    if name == "student":
        return Encoder(hf.read_config(teacher_dir).replace(num_hidden_layers=1), rngs=nnx.Rngs(0))
    return Encoder(preset("facebook/hubert-base-ls960"), rngs=nnx.Rngs(0))


def _fake_cache(path: str, kind: str, shape: tuple, count: int, num_samples: int):
    """A complete on-disk cache of random float16 records (what the cached epoch reads)."""
    import json

    from array_record.python.array_record_module import ArrayRecordWriter

    from kdjax.finetune.cache import store

    os.makedirs(path)
    rng = np.random.default_rng(0)
    writer = ArrayRecordWriter(os.path.join(path, "block-00000-of-00001.array_record"), "group_size:1")
    for i in range(count):
        writer.write(store.encode_record(rng.standard_normal(shape).astype(np.float16), index=i, utt_id=str(i),
                                         label=i % 12, speaker=i % 7, num_samples=num_samples))
    writer.close()
    json.dump({"indices": list(range(count)), "ids": [str(i) for i in range(count)],
               "num_samples": [num_samples] * count}, open(os.path.join(path, "block-00000-of-00001.json"), "w"))
    fp = {"dataset": {"num_examples": count}, "features": {"dtype": "float16", "layers": list(range(shape[0]))},
          "preprocessing": {"kind": kind, "max_samples": 0}}
    json.dump({"format": store.FORMAT, "fingerprint": fp, "blocks": ["block-00000-of-00001"], "frame_stride": 320,
               "receptive_field": 400}, open(os.path.join(path, "manifest.json"), "w"))
    return store.CachedFeatures(path)


def _reader_seconds(it, batches: int) -> float:
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def bench(name: str, s: Setting, repeats: int) -> dict:
    """Seconds per step (uncached, cached head, cached read) and per clip of the cache pass, KWS and SV."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from kdjax.finetune import cache
    from kdjax.finetune.model import KWSDownstream, SVDownstream
    from kdjax.models import heads

    encoder = _encoder(name)
    layers, dim = encoder.config.num_hidden_layers + 1, encoder.config.hidden_size
    rng = np.random.default_rng(0)
    out = {"params_M": sum(x.size for x in jax.tree.leaves(nnx.state(encoder, nnx.Param))) / 1e6}

    @nnx.jit(static_argnums=3)
    def forward(encoder, x, mask, pooled):
        o = encoder(x, mask, output_hidden_states=True, deterministic=True)
        hs = jax.lax.stop_gradient(jnp.stack(o.hidden_states))
        return (cache.pool_layers(jnp.moveaxis(hs, 0, 1), o.frame_mask) if pooled else hs), o.frame_mask

    for task in ("kws", "sv"):
        seconds = 1.0 if task == "kws" else s.sv_seconds
        x = jnp.asarray(rng.standard_normal((s.batch, int(seconds * 16000))), jnp.float32)
        mask = jnp.ones(x.shape, jnp.int32)
        labels = jnp.asarray(rng.integers(0, 12 if task == "kws" else s.speakers, s.batch), jnp.int32)
        if task == "kws":
            down = KWSDownstream(layers, dim, 12, rngs=nnx.Rngs(1))
        else:
            down = SVDownstream(layers, dim, s.speakers, width=s.sv_width, embed_dim=min(s.sv_width, 512),
                                rngs=nnx.Rngs(1))
        down.train()
        opt = nnx.Optimizer(down, optax.adam(1e-4), wrt=nnx.Param)

        @nnx.jit
        def uncached(encoder, down, opt, x, mask, labels):
            hs, fmask = forward(encoder, x, mask, False)
            opt.update(down, nnx.grad(lambda d: d.loss(hs, fmask, labels)[0])(down))

        @nnx.jit
        def cached(down, opt, feats, fmask, labels):
            if task == "kws":
                loss = lambda d: cache.kws_pooled_loss(d, feats, labels)[0]  # noqa: E731
            else:
                loss = lambda d: d.loss(heads.BatchMajor(feats), fmask, labels)[0]  # noqa: E731
            opt.update(down, nnx.grad(loss)(down))

        pooled, fmask = forward(encoder, x, mask, task == "kws")
        feats = pooled if task == "kws" else jnp.moveaxis(pooled, 0, 1)
        out[f"{task}_uncached"] = median_time(
            lambda: (uncached(encoder, down, opt, x, mask, labels), jax.block_until_ready(nnx.state(down))),
            repeats)
        out[f"{task}_cached_head"] = median_time(
            lambda: (cached(down, opt, feats, fmask, labels), jax.block_until_ready(nnx.state(down))), repeats)
        with tempfile.TemporaryDirectory() as tmp:
            if task == "kws":
                c = _fake_cache(os.path.join(tmp, "c"), "pooled", (layers, dim), 2000, 16000)
                it = cache.kws_train_iterator(c, batch_size=s.batch, seed=0, process_index=0, process_count=1)
            else:
                utt = int(s.sv_utterance_seconds * 16000)
                shape = (layers, frames_per_clip(s.sv_utterance_seconds), dim)
                c = _fake_cache(os.path.join(tmp, "c"), "frames", shape, 2 * s.batch, utt)
                it = cache.sv_train_iterator(c, batch_size=s.batch, crop_samples=int(seconds * 16000), seed=0,
                                             process_index=0, process_count=1)
            out[f"{task}_cached_read"] = _reader_seconds(it, max(repeats, 1))
        # the cache pass: forward only, per clip (SV: whole utterances of the mean length)
        pass_seconds = 1.0 if task == "kws" else s.sv_utterance_seconds
        xp = jnp.asarray(rng.standard_normal((min(8, s.batch), int(pass_seconds * 16000))), jnp.float32)  # spec batch
        mp = jnp.ones(xp.shape, jnp.int32)
        out[f"{task}_cache_pass_per_clip"] = median_time(
            lambda: jax.block_until_ready(jax.device_get(forward(encoder, xp, mp, task == "kws"))),
            repeats) / xp.shape[0]
    return out


def report(name: str, s: Setting, r: dict, batch_scale: float) -> list[str]:
    """Per-epoch lines for one model (times scaled to s.batch clips a step when the run used fewer)."""
    lines = [f"{name} ({r['params_M']:.1f} M params; batch {s.batch}, SV crop {s.sv_seconds:g} s, x-vector width "
             f"{s.sv_width}):"]
    for task, epoch in (("kws", s.kws_epoch), ("sv", s.sv_epoch)):
        steps = epoch["train"] / s.batch
        unc = r[f"{task}_uncached"] * batch_scale
        head, read = r[f"{task}_cached_head"] * batch_scale, r[f"{task}_cached_read"] * batch_scale
        cached = head + read  # conservative: reading is not assumed to overlap the step
        clips = sum(v for k, v in epoch.items() if k != "hours")
        per_clip = r[f"{task}_cache_pass_per_clip"]
        lines.append(f"  {task}: epoch {epoch['train']} clips = {steps:.0f} steps | uncached {unc:.3g} s/step -> "
                     f"{unc * steps / 60:.3g} min/epoch | cached {head:.3g} + read {read:.3g} s/step -> "
                     f"{cached * steps / 60:.3g} min/epoch | speed-up {unc / cached:.1f}x")
        lines.append(f"       cache pass: train split {per_clip * epoch['train'] / 60:.3g} min = "
                     f"{per_clip * epoch['train'] / (unc * steps):.2f} uncached epochs; all splits ({clips} clips) "
                     f"{per_clip * clips / 60:.3g} min")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="teacher,student,base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base_batch", type=int, default=8, help="clips a step actually run for 'base' (of 32)")
    parser.add_argument("--disk_only", action="store_true")
    args = parser.parse_args()
    print("Disk, HuBERT-base shapes (768 hidden, 13 hidden states, 50 frames/s), computed from shapes:")
    print(disk_table())
    if args.disk_only:
        return
    import jax

    print(f"\njax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPUs (shared machine: noisy); "
          f"epoch times are extrapolations from {args.repeats} timed batches")
    demo = dict(batch=16, sv_seconds=2.0, sv_width=256, speakers=250, kws_epoch=SYNTH_KWS, sv_epoch=SYNTH_SV,
                sv_utterance_seconds=2.5)
    settings = {"teacher": Setting("teacher", **demo), "student": Setting("student", **demo),
                "base": Setting("base", batch=32, sv_seconds=3.0, sv_width=512, speakers=1211, kws_epoch=SC1,
                                sv_epoch=VOX1, sv_utterance_seconds=8.2)}
    for name in args.models.split(","):
        s = settings[name]
        run = dataclasses.replace(s, batch=args.base_batch) if name == "base" else s
        r = bench(name, run, args.repeats)
        for line in report(name, s, r, s.batch / run.batch):
            print(line, flush=True)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
