"""Host batches from a feature cache through grain, aligned with kdjax.data.pipeline's uncached batches.

    kws_train_iterator(cache, batch_size=8, seed=0)   # {"pooled": f32[b, L, H], "label", "speaker"}
    sv_train_iterator(cache, batch_size=8, crop_samples=48000, seed=0)
                       # {"hidden_states": [b, L, T, H] (storage dtype), "frame_mask": bool[b, T], "speaker",
                       #  "label", "index", "crop_start"}; T = frames of crop_samples
    eval_batches(cache, batch_size=8)                 # every example in order (frames in the storage dtype), "valid"
                                                      # and "index" as pipeline's
    process_eval_batches(cache, global_batch_size=32) # this process's share, fixed shapes

The training iterators build the same grain graph as pipeline.train_iterator (source -> shuffle(seed) -> repeat ->
random_map(seed) -> this process's rows of each global batch), so with the same seed and batch size row i is the same
example as in the uncached stream, and a random crop draws the very sample offset the uncached crop draws (grain's
per-index RNG); the cached crop takes the frames that offset maps to. Batches are batch-major ([b, L, ...]) so they
shard on 'data' like any batch; the Featurizer weighs them in that layout (kdjax.models.heads.BatchMajor).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from kdjax.data import pipeline
from kdjax.errors import DatasetError
from kdjax.finetune.cache.store import CachedFeatures


def num_frames(num_samples: int, frame_stride: int, receptive_field: int) -> int:
    """Encoder frames of a clip (the conv stack's nested floors collapse to this closed form)."""
    return max((int(num_samples) - receptive_field) // frame_stride + 1, 0)


def longest_frames(cache: CachedFeatures) -> int:
    """Frames of a frames cache's longest record, from the clip lengths kept beside the records (none is read): the
    cache pass keeps the centre max_samples of a longer clip (0: no cap) and every valid frame of the rest."""
    cap = cache.max_samples
    longest = int(np.max(cache.num_samples)) if len(cache) else 0
    return num_frames(min(longest, cap) if cap else longest, cache.frame_stride, cache.receptive_field)


def crop_frames(cached_frames: int, offset_samples: int, crop_frames_: int, frame_stride: int) -> tuple[int, int]:
    """(first frame, length) of the frame-space crop for a sample crop at `offset_samples` into the cached window.

    Frame t of the window covers samples [t*stride, t*stride + receptive_field), so a crop at a multiple of the stride
    maps to exactly the frames the crop's own conv features are (tests/finetune/test_cache.py checks it on the conv
    stack); other offsets round to the nearest frame (at most stride/2 samples off, 10 ms for the base models).
    """
    length = min(crop_frames_, cached_frames)
    first = (int(offset_samples) + frame_stride // 2) // frame_stride
    return min(max(first, 0), cached_frames - length), length


class _Raw:
    """A frames cache's records in the storage dtype: the SV reader converts only the frames it crops."""

    def __init__(self, cache: CachedFeatures):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict:
        return self.cache.record(index)


class _Indices:
    """0..n-1 as a grain source (same length, so the same shuffle as the records' source)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return int(index)


def _stream(cache: Any, fn: Callable | None, *, batch_size: int, seed: int, shuffle: bool,
            num_epochs: int | None, process_index: int | None, process_count: int | None,
            batch_fn: Callable | None = None, name: str | None = None,
            in_memory: bool = False) -> grain.DatasetIterator:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(_Raw(cache) if getattr(cache, "kind", None) == "frames" else cache)
    if len(ds) < batch_size * process_count:
        raise DatasetError(f"the cache {name or cache.path} has {len(ds)} examples, fewer than the global batch "
                           f"{batch_size * process_count} (batch_size={batch_size} x {process_count} processes)")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if fn is not None:
        ds = ds.random_map(fn, seed=seed)  # same graph as pipeline.train_iterator: same rows, same RNG
    ds = pipeline._process_rows(ds, batch_size, process_index, process_count)
    # Reader threads hide disk reads; from memory there is nothing to hide, and on few cores they only compete with
    # the step for the CPU and the GIL (the demo's cached KWS step: 18 ms a step with 2 threads, 10 ms without).
    threads = 0 if in_memory else min(8, os.cpu_count() or 1)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * batch_size))
    it_ds = it_ds.batch(batch_size, drop_remainder=True)
    return iter(it_ds if batch_fn is None else it_ds.map(batch_fn))


def _labels(rec: dict) -> dict[str, np.ndarray]:
    return {"label": np.int32(rec["label"]), "speaker": np.int32(rec["speaker"]), "index": np.int32(rec["index"])}


def _require(cache: CachedFeatures, kind: str, reader: str) -> None:
    if cache.kind != kind:
        raise DatasetError(f"{reader} reads kind={kind!r} caches; {cache.path} holds kind={cache.kind!r}")


def kws_train_iterator(cache: CachedFeatures, *, batch_size: int, seed: int, shuffle: bool = True,
                       num_epochs: int | None = None, process_index: int | None = None,
                       process_count: int | None = None) -> grain.DatasetIterator:
    """Seeded, sharded, checkpointable batches of pooled features {"pooled": f32[b, L, H], "label", "speaker"}."""
    _require(cache, "pooled", "kws_train_iterator")
    memory = cache.in_memory()
    if memory is not None:  # gather whole batches from memory: per-example grain steps would cost more than the step
        def gather(rows: np.ndarray) -> dict:
            rows = np.asarray(rows, np.int64)
            return {"pooled": memory["x"][rows], "label": memory["label"][rows].astype(np.int32),
                    "speaker": memory["speaker"][rows].astype(np.int32), "index": rows.astype(np.int32)}

        return _stream(_Indices(len(cache)), None, batch_size=batch_size, seed=seed, shuffle=shuffle,
                       num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                       batch_fn=gather, name=cache.path, in_memory=True)

    def fn(rec: dict, rng: np.random.Generator) -> dict:
        return {"pooled": rec["x"], **_labels(rec)}

    return _stream(cache, fn, batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                   process_index=process_index, process_count=process_count)


def sv_train_iterator(cache: CachedFeatures, *, batch_size: int, crop_samples: int, seed: int, shuffle: bool = True,
                      num_epochs: int | None = None, process_index: int | None = None,
                      process_count: int | None = None) -> grain.DatasetIterator:
    """Batches of random frame-space crops matching pipeline.train_iterator(max_samples=crop_samples)'s crops."""
    _require(cache, "frames", "sv_train_iterator")
    held = cache.hold()
    stride, cap = cache.frame_stride, cache.max_samples
    frames = num_frames(crop_samples, stride, cache.receptive_field)

    def fn(rec: dict, rng: np.random.Generator) -> dict:
        n = rec["num_samples"]
        start = int(rng.integers(0, max(n - crop_samples, 0) + 1))  # the draw of pipeline.train_iterator's crop
        window = (n - cap) // 2 if cap and n > cap else 0  # the cache kept the centre `cap` samples
        x = rec["x"]
        first, length = crop_frames(x.shape[1], start - window, frames, stride)
        # in the storage dtype: the step converts to float32 on the device (a float16 cache moves half the bytes
        # through the host and skips numpy's slow float16 -> float32 conversion)
        out = np.zeros((x.shape[0], frames, x.shape[2]), x.dtype)
        out[:, :length] = x[:, first:first + length]
        return {"hidden_states": out, "frame_mask": np.arange(frames) < length, "crop_start": np.int32(start),
                **_labels(rec)}

    return _stream(cache, fn, batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                   process_index=process_index, process_count=process_count, in_memory=held)


def _batch(cache: CachedFeatures, take: Sequence[int], batch_size: int, frames_to: int | None) -> dict:
    # frames stay in the storage dtype (the step converts them on the device, kdjax.finetune.cached.features): a
    # float16 cache's SV test batches took 0.14 s each to convert and pad on the host
    recs = [cache.record(i) if cache.kind == "frames" else cache[i] for i in take]
    pad = batch_size - len(recs)
    out: dict[str, Any] = {k: np.stack([_labels(r)[k] for r in recs] + [np.int32(0)] * pad)
                           for k in ("label", "speaker")}
    x0 = recs[0]["x"]
    if cache.kind == "pooled":
        out["pooled"] = np.zeros((batch_size, *x0.shape), np.float32)
        for r, rec in enumerate(recs):
            out["pooled"][r] = rec["x"]
    else:
        longest = max(rec["x"].shape[1] for rec in recs)
        t = longest if frames_to is None else max(frames_to, longest)
        out["hidden_states"] = np.zeros((batch_size, x0.shape[0], t, x0.shape[2]), x0.dtype)
        out["frame_mask"] = np.zeros((batch_size, t), bool)
        for r, rec in enumerate(recs):
            out["hidden_states"][r, :, :rec["x"].shape[1]] = rec["x"]
            out["frame_mask"][r, :rec["x"].shape[1]] = True
    out["valid"] = np.arange(batch_size) < len(recs)
    out["index"] = np.asarray(list(take) + [-1] * pad, np.int32)
    return out


def eval_batches(cache: CachedFeatures, *, batch_size: int, indices: Sequence[int] | None = None,
                 frames_to: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """All examples in order (or `indices`); frames padded to the batch's longest (at least frames_to).

    The last batch is padded up to batch_size; "valid" marks real rows and "index" their position, as
    pipeline.eval_batches.
    """
    order = list(range(len(cache))) if indices is None else list(indices)
    for lo in range(0, len(order), batch_size):
        yield _batch(cache, order[lo:lo + batch_size], batch_size, frames_to)


def process_eval_batches(cache: CachedFeatures, *, global_batch_size: int, frames_to: int | None = None,
                         process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's share (every process_count-th example) in fixed-shape batches; the same count per process.

    Frames batches need `frames_to` >= the longest cached utterance for fixed shapes.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    count, per = len(cache), global_batch_size // process_count
    mine = list(range(process_index, count, process_count))
    for s in range(-(-count // global_batch_size)):
        rows = mine[s * per:(s + 1) * per]
        batch = _batch(cache, rows or [0], per, frames_to)
        if not rows:  # this process has run out of examples; it still takes part with an all-padding batch
            batch["valid"][:] = False
        yield batch
