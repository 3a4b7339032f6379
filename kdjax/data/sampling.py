"""Recipe-specific batching on top of kdjax.data.pipeline: class-balanced streams, s3prl's length-sorted buckets,
equal-length evaluation batches.

    labels = example_values(src, "label")                       # one read of the split
    it = balanced_iterator(src, labels=labels, batch_size=32, max_samples=16000, seed=0)   # KWS training (s3prl)
    dev = balanced_resample(labels, seed=0)                     # indices of SUPERB's class-balanced dev resample
    pipeline.process_eval_batches(src, global_batch_size=32, max_samples=16000, indices=dev, crop_seed=0)
    it = sorted_bucket_iterator(src, lengths=example_lengths(src), batch_size=24, max_samples=250_000, seed=0)
    for b in equal_length_batches(src, batch_size=1): ...      # full-length utterances, no padding (GroupNorm)

Class-balanced sampling is torch's WeightedRandomSampler with weight N / count(label) (s3prl speech_commands): an
example of class c is drawn with probability 1 / (C * count_c), with replacement. Row i of the global stream depends
only on (seed, i) and process p reads its block of each global batch exactly as pipeline.train_iterator, so the
stream, and the iterator state, do not depend on the process count.
"""
from __future__ import annotations

import collections
import os
from concurrent import futures
from typing import Iterator, Sequence

import grain
import numpy as np

from kdjax.data.pipeline import _example, _process_rows
from kdjax.errors import DatasetError


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return process_index, process_count


def example_values(source: Sequence[dict], key: str = "label") -> np.ndarray:
    """`key` of every example, in index order (reads the split once, in threads)."""
    with futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return np.asarray(list(pool.map(lambda i: int(source[i][key]), range(len(source)))), np.int64)


def example_lengths(source: Sequence[dict], cache: str | None = None) -> np.ndarray:
    """Number of samples of every example, in index order (reads the split once, in threads).

    `cache` (a .npy path) is read when it exists and written otherwise, as s3prl's len_for_bucket tables: reading
    all of LibriSpeech 960 h once takes a while.
    """
    if cache and os.path.exists(cache):
        lengths = np.load(cache)
        if lengths.shape != (len(source),):
            raise DatasetError(f"{cache}: {lengths.shape[0]} lengths for a split of {len(source)} examples; delete it")
        return lengths
    with futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        lengths = np.asarray(list(pool.map(lambda i: source[i]["audio"].shape[0], range(len(source)))), np.int64)
    if cache:  # written whole or not at all: a kill never leaves a truncated table
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        tmp = f"{cache}.tmp-{os.getpid()}.npy"
        np.save(tmp, lengths)
        os.replace(tmp, cache)
    return lengths


def balanced_weights(labels: Sequence[int]) -> np.ndarray:
    """s3prl's sample weights: N / count(label of the example)."""
    labels = np.asarray(labels)
    counts = collections.Counter(labels.tolist())
    return np.asarray([len(labels) / counts[c] for c in labels.tolist()], np.float64)


def _members(labels: Sequence[int]) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if labels.size == 0:
        raise DatasetError("class-balanced sampling needs at least one example")
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _draw(members: list[np.ndarray], rng: np.random.Generator) -> int:
    """One class-balanced draw: a class uniformly, then one of its examples uniformly (= weight N / count)."""
    group = members[int(rng.integers(len(members)))]
    return int(group[int(rng.integers(len(group)))])


def balanced_resample(labels: Sequence[int], seed: int, num_samples: int | None = None) -> np.ndarray:
    """Indices of a class-balanced resample with replacement (SUPERB's KS dev set; len(labels) draws by default)."""
    members = _members(labels)
    rng = np.random.default_rng([seed, 7919])
    return np.asarray([_draw(members, rng) for _ in range(len(labels) if num_samples is None else num_samples)],
                      np.int64)


def balanced_iterator(source: Sequence[dict], *, batch_size: int, max_samples: int, seed: int,
                      labels: Sequence[int] | None = None, num_epochs: int | None = None, normalize: bool = True,
                      process_index: int | None = None, process_count: int | None = None,
                      gain_db: float = 0.0) -> grain.DatasetIterator:
    """Class-balanced training batches drawn with replacement (s3prl's KWS sampler); clips longer than max_samples
    are cropped at a random offset (s3prl's random 1 s of a `_silence_` noise file); same keys as train_iterator.

    An epoch is len(source) draws; `labels` (example_values(source)) saves reading the split once more.
    """
    process_index, process_count = _processes(process_index, process_count)
    members = _members(example_values(source) if labels is None else labels)
    global_batch = batch_size * process_count
    if len(source) < global_batch:
        raise DatasetError(f"the split has {len(source)} examples, fewer than the global batch {global_batch}")

    def draw(_: int, rng: np.random.Generator) -> dict:
        ex = source[_draw(members, rng)]
        start = int(rng.integers(0, max(ex["audio"].shape[0] - max_samples, 0) + 1))
        return _example(ex, max_samples, start, normalize, gain_db)

    ds = grain.MapDataset.range(len(source)).repeat(num_epochs).random_map(draw, seed=seed)
    ds = _process_rows(ds, batch_size, process_index, process_count)
    threads = min(8, os.cpu_count() or 1)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * batch_size))
    return iter(it_ds.batch(batch_size, drop_remainder=True))


def sorted_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """s3prl's bucketing (pretrain/bucket_dataset.py): indices sorted by length, longest first, cut into consecutive
    batches of batch_size (the last, incomplete batch is dropped: s3prl keeps it when it has 2+ clips)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[k:k + batch_size].tolist() for k in range(0, len(order) - batch_size + 1, batch_size)]


def sorted_bucket_iterator(source: Sequence[dict], *, batch_size: int, max_samples: int, seed: int,
                           lengths: Sequence[int] | None = None, num_epochs: int | None = None,
                           normalize: bool = True, pad_to: int | None = None, process_index: int | None = None,
                           process_count: int | None = None) -> grain.DatasetIterator:
    """DistilHuBERT's batches (s3prl pretrain/distiller): length-sorted buckets, batch order reshuffled each epoch,
    clips longer than max_samples cropped at random, each batch padded to its longest (cropped) clip.

    batch_size is per process: global batch s is a bucket of batch_size * process_count consecutive clips and process
    p reads its block of it; all processes pad to the global batch's longest clip (rounded up to `pad_to` when set, to
    bound the number of shapes a jitted step compiles). Same keys as train_iterator; checkpointable the same way.
    """
    process_index, process_count = _processes(process_index, process_count)
    lengths = example_lengths(source) if lengths is None else np.asarray(lengths)
    plan = sorted_buckets(lengths, batch_size * process_count)
    if not plan:
        raise DatasetError(f"the split has {len(lengths)} clips, fewer than the global batch "
                           f"{batch_size * process_count}")

    def load(members: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        starts = [int(rng.integers(0, max(int(lengths[i]) - max_samples, 0) + 1)) for i in members]
        longest = min(max(int(lengths[i]) for i in members), max_samples)
        if pad_to:
            longest = min(-(-longest // pad_to) * pad_to, max_samples)
        mine = range(process_index * batch_size, (process_index + 1) * batch_size)
        rows = [_example(source[members[k]], longest, starts[k], normalize) for k in mine]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    ds = grain.MapDataset.source(plan).shuffle(seed=seed).repeat(num_epochs).random_map(load, seed=seed)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1),
                                                     prefetch_buffer_size=4)))


def equal_length_batches(source: Sequence[dict], *, batch_size: int = 1, normalize: bool = True,
                         round_to: int = 1, lengths: Sequence[int] | None = None,
                         indices: Sequence[int] | None = None, gain_db: float = 0.0) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches without padding inside any row: every batch holds utterances of one length.

    A GroupNorm feature encoder (wav2vec2-base, HuBERT-base, DistilHuBERT) normalises over the whole input length, so
    padding changes every embedding; here no row is padded. batch_size=1 is s3prl's one utterance at a time.
    `round_to` > 1 trims each utterance's tail to a multiple of it (less than round_to samples lost), so a jitted model
    compiles one shape per length bucket instead of one per distinct length. The last batch of a length is filled up
    with all-zero rows, "valid" False. Keys as eval_batches ("valid", "index" = example index).
    """
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    lengths = example_lengths(source) if lengths is None else np.asarray(lengths)
    if round_to < 1:
        raise DatasetError(f"equal_length_batches: round_to={round_to} must be >= 1")
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i in order:
        n = int(lengths[i])
        groups[n // round_to * round_to if n >= round_to else n].append(i)
    for length in sorted(groups):
        members = groups[length]
        for lo in range(0, len(members), batch_size):
            take = members[lo:lo + batch_size]
            rows = [_example(source[i], length, 0, normalize, gain_db) for i in take]
            pad = batch_size - len(rows)
            rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * pad
            batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
            batch["valid"] = np.arange(batch_size) < len(take)
            batch["index"] = np.asarray(take + [-1] * pad, dtype=np.int32)
            yield batch
