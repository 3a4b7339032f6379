"""Throughput of the training input pipeline (read ArrayRecord, random crop, normalise, batch) on this machine.

Compare with what training consumes: a distillation step on batch 4 x 2 s takes ~3 s on a 2-core CPU, i.e.
~2.7 audio-seconds/s; the pipeline must deliver at least 10x that.

    python benchmarks/input_pipeline.py --data_dir DIR [--dataset synthetic_speech/unlabeled] [--batch_size 4]
"""
from __future__ import annotations

import argparse
import time

from kdjax.data import pipeline

STEP_AUDIO_S_PER_S = 4 * 2.0 / 3.0  # batch 4 x 2 s per ~3 s distillation step


def measure(dataset: str, data_dir: str | None, batch_size: int, max_samples: int, steps: int) -> tuple[float, float]:
    """(examples/s, audio-seconds/s) over `steps` batches after a warm-up batch."""
    src = pipeline.load_source(dataset, "train", data_dir)
    it = pipeline.train_iterator(src, batch_size=batch_size, max_samples=max_samples, seed=0,
                                 process_index=0, process_count=1)
    next(it)  # warm-up: thread pool start, first reads
    start, audio_s = time.perf_counter(), 0.0
    for _ in range(steps):
        audio_s += next(it)["attention_mask"].sum() / 16_000
    elapsed = time.perf_counter() - start
    return steps * batch_size / elapsed, audio_s / elapsed


def main() -> None:
    """Print pipeline throughput and its ratio to one training step's consumption."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--dataset", default="synthetic_speech/unlabeled")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--max_samples", type=int, default=32_000)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    ex_s, audio_s = measure(args.dataset, args.data_dir, args.batch_size, args.max_samples, args.steps)
    print(f"{args.dataset} batch {args.batch_size} x {args.max_samples / 16000:.1f} s: {ex_s:.0f} examples/s, "
          f"{audio_s:.0f} audio-s/s = {audio_s / STEP_AUDIO_S_PER_S:.0f}x a distillation step's "
          f"{STEP_AUDIO_S_PER_S:.1f} audio-s/s (need >= 10x)")


if __name__ == "__main__":
    main()
