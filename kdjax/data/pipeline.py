"""Reading prepared kdjax datasets: random-access sources and grain pipelines yielding host-local numpy batches.

No TensorFlow is imported on this path (tfds.data_source reads ArrayRecord and decodes with numpy).

    src = load_source("synthetic_speech/kws", "train", data_dir=None)       # tfds random-access source
    it = train_iterator(src, batch_size=8, max_samples=16000, seed=0)      # grain iterator, infinite by default
    batch = next(it)        # {"input_values": f32[8,16000], "attention_mask": i32[8,16000], "label": i32[8], ...}
    state = it.get_state()  # checkpoint with the trainer; it.set_state(state) resumes exactly
    for b in eval_batches(load_source("synthetic_speech/kws", "test"), batch_size=8):
        ...                 # all examples in order; b["valid"] marks real rows, b["index"] their position
    label_names("synthetic_speech/kws")        # ['yes', 'no', ..., '_unknown_', '_silence_']
    load_trials("synthetic_speech/sv")         # [(is_target, utt_id_a, utt_id_b), ...] over split "test"
    utterance_ids(load_source("synthetic_speech/sv", "test"))   # example index -> utterance id
    bucketed_iterator(src, batch_size=8, boundaries=[32000, 64000, 96000], seed=0)  # variable-length corpora

Recipe samplers (class-balanced KWS stream and dev resample, s3prl's length-sorted buckets, equal-length evaluation
batches for GroupNorm encoders) are in kdjax.data.sampling; trial-list parsing is kdjax.data.trials.

Batches from `train_iterator`: "input_values" float32 [b, max_samples] (random crop when longer, zero pad when
shorter, zero-mean unit-variance over valid samples when normalize), "attention_mask" int32 [b, max_samples],
"speaker" int32 [b] (index into metadata(name)["speakers"]; -1 where a clip has none) and "label" int32 [b] where the
dataset has labels. batch_size is per process: the global batch s is rows [s*G, (s+1)*G) of one seeded stream over
the whole split (G = batch_size * process_count) and process p reads only its block of b rows of it, so the global
batches (and, with min_samples=0, the iterator states) do not depend on the process count; the last incomplete
global batch is dropped. Crop offsets come from grain's per-index seeded RNG, so a batch
depends only on (seed, step). For SV the class of an utterance is "speaker": training speakers are numbered
0..metadata(name)["num_train_speakers"]-1.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from kdjax.data import audio, trials
from kdjax.errors import DatasetError


def _builder(name: str, data_dir: str | None):
    """A read-only tfds builder over the prepared files (needs neither manual_dir nor the generation config)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import constants

    from kdjax.data import builders

    base_name, _, config = name.partition("/")
    cls = builders.BUILDERS.get(base_name)
    if cls is None:
        raise DatasetError(f"unknown dataset {base_name!r}; kdjax builds {sorted(builders.BUILDERS)}")
    if not config and cls.BUILDER_CONFIGS:
        config = cls.BUILDER_CONFIGS[0].name
    root = data_dir or constants.DATA_DIR
    path = os.path.join(root, base_name, *([config] if config else []), str(cls.VERSION))
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        raise DatasetError(f"dataset {name} is not prepared in {root} (looked for {path}); run: kdjax prepare "
                           f"{base_name}{'/' + config if config else ''}" + (f" --data_dir {data_dir}" if data_dir else ""))
    return tfds.builder_from_directory(path)


def load_source(name: str, split: str, data_dir: str | None = None):
    """A random-access source (tfds.data_source over ArrayRecord) of one split of a prepared dataset."""
    builder = _builder(name, data_dir)
    if any(part not in builder.info.splits for part in split.split("+")):  # "train+test" reads both
        raise DatasetError(f"dataset {name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


def metadata(name: str, data_dir: str | None = None) -> dict[str, Any]:
    """The metadata recorded at prepare time: config, speakers, stats, skipped counts, trial lists."""
    return dict(_builder(name, data_dir).info.metadata)


def lengths_cache(name: str, split: str, data_dir: str | None = None) -> str:
    """Where the clip lengths of a prepared split are cached (beside its ArrayRecord files)."""
    return os.fspath(_builder(name, data_dir).data_path / f"lengths-{split.replace('+', '_')}.npy")


def label_names(name: str, data_dir: str | None = None) -> list[str]:
    """Class names of the dataset's "label" feature (index = label id)."""
    builder = _builder(name, data_dir)
    if "label" not in builder.info.features:
        raise DatasetError(f"dataset {name} has no labels (features: {sorted(builder.info.features)}); "
                           f"for speaker tasks use metadata({name!r})['speakers']")
    return list(builder.info.features["label"].names)


def _example(ex: dict, max_samples: int, start: int | None, normalize: bool,
             gain_db: float = 0.0) -> dict[str, np.ndarray]:
    x, mask = audio.crop_or_pad(audio.to_float(ex["audio"]), max_samples, start)
    if gain_db:  # s3prl's SoX `gain` (speech_commands: -3 dB); a no-op under normalize
        x = x * np.float32(10.0 ** (gain_db / 20.0))
    out = {"input_values": audio.normalize(x, mask) if normalize else x, "attention_mask": mask,
           "speaker": np.int32(ex["speaker"])}
    if "label" in ex:
        out["label"] = np.int32(ex["label"])
    return out


def train_iterator(source: Sequence[dict], *, batch_size: int, max_samples: int, seed: int, shuffle: bool = True,
                   num_epochs: int | None = None, normalize: bool = True, process_index: int | None = None,
                   process_count: int | None = None, min_samples: int = 0,
                   gain_db: float = 0.0) -> grain.DatasetIterator:
    """Seeded, sharded, checkpointable grain iterator of training batches (see the module docstring).

    `min_samples` drops shorter clips (s3prl's SV: longer than 2 s, min_samples=32001); `gain_db` scales the audio.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(source)
    global_batch = batch_size * process_count
    if len(ds) < global_batch:
        raise DatasetError(f"the split has {len(ds)} examples, fewer than the global batch {global_batch} "
                           f"(batch_size={batch_size} x {process_count} processes)")
    if min_samples:
        ds = ds.filter(lambda ex: ex["audio"].shape[0] >= min_samples)  # Nones are dropped by to_iter_dataset
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # reshuffles each epoch

    def crop(ex: dict, rng: np.random.Generator) -> dict:
        start = int(rng.integers(0, max(ex["audio"].shape[0] - max_samples, 0) + 1))
        return _example(ex, max_samples, start, normalize, gain_db)

    ds = ds.random_map(crop, seed=seed)  # the global stream: row i depends only on (seed, i)
    ds = _process_rows(ds, batch_size, process_index, process_count)
    threads = min(8, os.cpu_count() or 1)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * batch_size))
    return iter(it_ds.batch(batch_size, drop_remainder=True))


def _process_rows(ds: grain.MapDataset, batch_size: int, process_index: int, process_count: int) -> grain.MapDataset:
    """This process's rows of each global batch of the stream `ds`, laid out so iterator states are topology-free.

    Global batch s is rows [s*G, (s+1)*G) of `ds` (G = batch_size * process_count); process p reads only its block
    [s*G + p*b, s*G + (p+1)*b). Index i of the result is row i of block i // G: None (skipped, nothing read) for the
    first G - b positions, then this process's b rows. A grain iterator over it stands at next_index = s*G after s
    batches on every process and for every process count, so a checkpoint restores on another topology.
    """
    g, b = batch_size * process_count, batch_size
    if process_count == 1:
        return ds

    def row(i: int) -> Any:
        s, r = divmod(i, g)
        return None if r < g - b else ds[s * g + process_index * b + r - (g - b)]

    return grain.MapDataset.range((len(ds) // g) * g).map(row)


def eval_batches(source: Sequence[dict], *, batch_size: int, max_samples: int | None = None,
                 normalize: bool = True, pad_to: int | None = None, indices: Sequence[int] | None = None,
                 starts: Sequence[int | None] | None = None, gain_db: float = 0.0) -> Iterator[dict[str, np.ndarray]]:
    """All examples in order, padded to the batch's longest clip (or centre-cropped to max_samples).

    The last batch is padded up to batch_size; "valid" (bool) marks real rows and "index" (int32) their position.
    `pad_to` rounds each batch's length up to a multiple of it (capped at max_samples), so a jitted model sees few
    shapes; `indices` restricts the batches to those examples (in that order, repeats allowed); `starts` (one per
    index) gives crop offsets for clips longer than max_samples instead of the centre.
    """
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    for lo in range(0, len(order), batch_size):
        take = order[lo:lo + batch_size]
        exs = [source[i] for i in take]
        longest = max(ex["audio"].shape[0] for ex in exs)
        if pad_to:
            longest = -(-longest // pad_to) * pad_to
        length = longest if max_samples is None else min(longest, max_samples)
        offsets = [None] * len(take) if starts is None else list(starts[lo:lo + batch_size])
        rows = [_example(ex, length, None if st is None else min(int(st), max(ex["audio"].shape[0] - length, 0)),
                         normalize, gain_db) for ex, st in zip(exs, offsets)]
        pad = batch_size - len(rows)
        rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * pad
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        batch["valid"] = np.arange(batch_size) < len(exs)
        batch["index"] = np.asarray(take + [-1] * pad, dtype=np.int32)
        yield batch


def process_eval_batches(source: Sequence[dict], *, global_batch_size: int, max_samples: int,
                         limit: int | None = None, normalize: bool = True, indices: Sequence[int] | None = None,
                         crop_seed: int | None = None, gain_db: float = 0.0) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the first `limit` examples as fixed-shape [batch, max_samples] batches.

    Every process yields the same number of batches (what a multi-process evaluation needs); rows past the end are
    padding with "valid" False. `indices` evaluates those examples instead (e.g. `balanced_resample`'s, repeats
    allowed); `crop_seed` crops clips longer than max_samples at a random offset drawn from (crop_seed, position in
    the list) instead of the centre, the same for any process count.
    """
    import jax

    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    count = len(order) if limit is None else min(int(limit), len(order))
    per_process = global_batch_size // jax.process_count()
    mine = list(range(jax.process_index(), count, jax.process_count()))  # positions in `order`
    steps = -(-count // global_batch_size)
    mine += [-1] * (steps * per_process - len(mine))
    for s in range(steps):
        rows = [p for p in mine[s * per_process:(s + 1) * per_process] if p >= 0]
        if rows:
            starts = None if crop_seed is None else [_crop_start(source[order[p]], max_samples, crop_seed, p)
                                                     for p in rows]
            batch = next(eval_batches(source, batch_size=per_process, max_samples=max_samples, normalize=normalize,
                                      pad_to=max_samples, indices=[order[p] for p in rows], starts=starts,
                                      gain_db=gain_db))
        else:  # this process has run out of examples; it still takes part with an all-padding batch
            batch = next(eval_batches(source, batch_size=per_process, max_samples=max_samples, normalize=normalize,
                                      pad_to=max_samples, indices=[0]))
            batch["valid"][:] = False
        yield batch


def _crop_start(ex: dict, max_samples: int, seed: int, position: int) -> int:
    """A random crop offset for one evaluation row, fixed by (seed, position)."""
    return int(np.random.default_rng([seed, position]).integers(0, max(ex["audio"].shape[0] - max_samples, 0) + 1))


def utterance_ids(source: Sequence[dict]) -> list[str]:
    """The "id" of every example of a source, in index order."""
    return [ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"]) for ex in source]


def load_trials(name: str, data_dir: str | None = None, trial_list: str | None = None) -> list[tuple[int, str, str]]:
    """Verification trials (is_target, utt_id_a, utt_id_b) of a prepared SV dataset, ids checked against its split."""
    builder = _builder(name, data_dir)
    lists = dict(builder.info.metadata.get("trials", {}))
    if not lists:
        raise DatasetError(f"dataset {name} has no trial lists")
    trial_list = trial_list or next(iter(lists))
    if trial_list not in lists:
        raise DatasetError(f"dataset {name} has no trial list {trial_list!r}; lists: {sorted(lists)}")
    path = os.fspath(builder.data_path / "trials" / f"{trial_list}.txt")
    parsed = trials.parse(path)
    trials.check_ids(parsed, set(utterance_ids(builder.as_data_source(split=lists[trial_list]))), path)
    return parsed


def bucketed_iterator(source: Sequence[dict], *, batch_size: int, boundaries: Sequence[int], seed: int,
                      num_epochs: int | None = None, normalize: bool = True, process_index: int | None = None,
                      process_count: int | None = None) -> grain.DatasetIterator:
    """Length-bucketed batches for variable-length corpora: each batch is padded only to its bucket's boundary.

    A clip goes to the first bucket whose boundary is >= its length (longer clips are cropped at random to the
    last boundary). Batch composition is planned once from `seed` (reading every clip's length once); the order
    of batches is reshuffled every epoch. Same keys as train_iterator; checkpointable the same way.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    bounds = sorted(boundaries)
    indices = list(range(process_index, len(source), process_count))
    rng = np.random.default_rng([seed, process_index])
    rng.shuffle(indices)
    buckets: dict[int, list[int]] = {}
    for i in indices:
        n = source[i]["audio"].shape[0]
        buckets.setdefault(next((b for b in bounds if n <= b), bounds[-1]), []).append(i)
    plan = [(bound, members[k:k + batch_size]) for bound, members in sorted(buckets.items())
            for k in range(0, len(members) - batch_size + 1, batch_size)]
    if not plan:
        raise DatasetError(f"no bucket of {bounds} has {batch_size} clips (process {process_index}/{process_count})")

    def load(item: tuple[int, list[int]], rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound, members = item
        rows = []
        for i in members:
            ex = source[i]
            start = int(rng.integers(0, max(ex["audio"].shape[0] - bound, 0) + 1))
            rows.append(_example(ex, bound, start, normalize))
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    ds = grain.MapDataset.source(plan).shuffle(seed=seed).repeat(num_epochs).random_map(load, seed=seed)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1),
                                                     prefetch_buffer_size=4)))
