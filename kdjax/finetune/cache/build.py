"""The cache pass: one deterministic pass of the frozen encoder over a split, written atomically (see store.py).

Each process encodes and writes its own contiguous block of the split; every clip is encoded padded to its own
length bucket (spec.pad_to), never to its batch-mates' length, so the records do not depend on the batch size or the
process count. Process 0 publishes the cache once every block is on disk.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.data import pipeline
from kdjax.errors import DatasetError
from kdjax.finetune.cache import spec as spec_lib
from kdjax.finetune.cache import store
from kdjax.finetune.cache.spec import CacheSpec
from kdjax.models import heads
from kdjax.models.encoder import Encoder

log = logging.getLogger("kdjax.finetune.cache")


def pool_layers(hidden: jax.Array, frame_mask: jax.Array) -> jax.Array:
    """Masked mean over valid frames of every layer: [B, L, T, H], [B, T] -> [B, L, H] (what KWS's head needs)."""
    return jax.vmap(heads.masked_mean, in_axes=(1, None), out_axes=1)(hidden, frame_mask)


def resolve(spec: CacheSpec, encoder: Encoder | None = None) -> tuple[dict[str, Any], Encoder, Any]:
    """(fingerprint parts, the encoder, the dataset source) of a spec; loads the encoder when not given."""
    from kdjax.models import hf

    encoder = encoder if encoder is not None else hf.from_pretrained(spec.encoder)
    source = pipeline.load_source(spec.dataset, spec.split, spec.data_dir)
    info = getattr(source, "dataset_info", None)
    version = str(info.version) if info is not None else "unknown"
    layers = spec.layer_indices(encoder.config.num_hidden_layers + 1)
    parts = spec_lib.fingerprint(spec, weights=spec_lib.params_digest(nnx.state(encoder, nnx.Param)),
                                 config=spec_lib.config_digest(encoder.config), dataset_version=version,
                                 num_examples=len(source), layers=layers)
    return parts, encoder, source


def clip_length(spec: CacheSpec, num_samples: int) -> int:
    """Samples a clip is encoded at: max_samples for pooled; its pad_to bucket (capped at max_samples) for frames."""
    if spec.kind == "pooled":
        return spec.max_samples
    length = -(-num_samples // spec.pad_to) * spec.pad_to
    return min(length, spec.max_samples) if spec.max_samples else length


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "kind", "dtype"))
def _encode(state, x, mask, *, graphdef, layers: tuple[int, ...], kind: str, dtype: str):
    # Module-level with the graph static: one compile per (architecture, shape) for every split and every pass.
    out = nnx.merge(graphdef, state)(x, mask, output_hidden_states=True, deterministic=True)
    hs = jnp.stack([out.hidden_states[i] for i in layers], axis=1).astype(jnp.float32)  # [B, L, T, H]
    if kind == "pooled":
        hs = pool_layers(hs, out.frame_mask)
    return hs.astype(jnp.dtype(spec_lib.storage_dtype(dtype))), jnp.sum(out.frame_mask, axis=-1)


def _encode_fn(encoder: Encoder, layers: tuple[int, ...], kind: str, dtype: str):
    graphdef, state = nnx.split(encoder)
    return functools.partial(_encode, state, graphdef=graphdef, layers=layers, kind=kind, dtype=dtype)


def block_range(num_examples: int, process_index: int, process_count: int) -> range:
    """The contiguous examples process `process_index` of `process_count` encodes."""
    return range(num_examples * process_index // process_count, num_examples * (process_index + 1) // process_count)


def write_block(spec: CacheSpec, tmp: str, parts: dict[str, Any], encoder: Encoder, source: Any, *,
                process_index: int, process_count: int, progress: bool = True) -> None:
    """Encode this process's block of the split into tmp/block-p-of-P.{array_record,json}, fsynced."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    layers = tuple(parts["features"]["layers"])
    encode = _encode_fn(encoder, layers, spec.kind, spec.dtype)
    stem = os.path.join(tmp, store.block_name(process_index, process_count))
    # Uncompressed: hidden states are float noise to a compressor (7% smaller with the default zstd) and compressing
    # them made the writes 9x and the reads 2x slower (the teacher's SV test split: 8.7 s vs 1.0 s to write 0.9 GB).
    writer = ArrayRecordWriter(stem + ".array_record", "group_size:1,uncompressed")
    sidecar: dict[str, list] = {"indices": [], "ids": [], "num_samples": []}
    rows = block_range(len(source), process_index, process_count)
    bar = tqdm(total=len(rows), unit="clip", desc=f"caching {spec.dataset}/{spec.split}", dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr, disable=not progress)
    start, audio_seconds, cropped = time.time(), 0.0, 0
    buckets: dict[int, list[tuple[int, dict, dict]]] = {}

    def flush(length: int) -> None:
        nonlocal audio_seconds
        items = buckets.pop(length)
        x = np.zeros((spec.batch_size, length), np.float32)
        mask = np.zeros((spec.batch_size, length), np.int32)
        for r, (_, _, ex) in enumerate(items):
            x[r], mask[r] = ex["input_values"], ex["attention_mask"]
        feats, frames = jax.device_get(encode(x, mask))
        for r, (index, raw, ex) in enumerate(items):
            f = feats[r] if spec.kind == "pooled" else feats[r][:, :int(frames[r])]
            utt = raw["id"].decode() if isinstance(raw["id"], bytes) else str(raw["id"])
            n = int(raw["audio"].shape[0])
            writer.write(store.encode_record(f, index=index, utt_id=utt, label=int(raw.get("label", -1)),
                                             speaker=int(raw["speaker"]), num_samples=n))
            sidecar["indices"].append(index)
            sidecar["ids"].append(utt)
            sidecar["num_samples"].append(n)
            audio_seconds += n / spec_lib.SAMPLE_RATE
        bar.update(len(items))
        bar.set_postfix(audio_s_per_s=f"{audio_seconds / max(time.time() - start, 1e-9):.4g}", refresh=False)

    for index in rows:
        raw = source[index]
        length = clip_length(spec, int(raw["audio"].shape[0]))
        cropped += int(raw["audio"].shape[0] > length)
        ex = pipeline._example(raw, length, None, spec.normalize)  # the uncached pipeline's own preprocessing
        buckets.setdefault(length, []).append((index, raw, ex))
        if len(buckets[length]) == spec.batch_size:
            flush(length)
    for length in sorted(buckets):
        flush(length)
    bar.close()
    writer.close()
    store.fsync_file(stem + ".array_record")
    with open(stem + ".json", "w") as f:
        json.dump(sidecar, f)
        f.flush()
        os.fsync(f.fileno())
    log.info("cached %s/%s block %d/%d: %d clips, %.1f audio-s in %.1f s", spec.dataset, spec.split, process_index,
             process_count, len(rows), audio_seconds, time.time() - start)
    if cropped and spec.kind == "pooled":  # the uncached run crops these at random, the cache at the centre
        log.warning("%s/%s: %d of %d clips are longer than max_samples=%d and were centre-cropped", spec.dataset,
                    spec.split, cropped, len(rows), spec.max_samples)


def finalize(tmp: str, final: str, parts: dict[str, Any], encoder: Encoder, process_count: int) -> str:
    """Write the manifest, fsync, and rename tmp -> final (the one step that makes the cache loadable)."""
    blocks = [store.block_name(p, process_count) for p in range(process_count)]
    missing = [b for b in blocks if not os.path.exists(os.path.join(tmp, b + ".json"))]
    if missing:
        raise DatasetError(f"{tmp}: blocks {missing} were not written (did every process run the cache pass?)")
    cfg = encoder.config
    seconds = sum(sum(store.read_sidecar(os.path.join(tmp, b + ".json"))["num_samples"]) for b in blocks) / 16000
    manifest = {"format": store.FORMAT, "fingerprint": parts, "blocks": blocks, "frame_stride": cfg.frame_stride,
                "receptive_field": cfg.receptive_field, "hidden_size": cfg.hidden_size,
                "audio_seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(tmp, store.MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    store.fsync_dir(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.exists(os.path.join(final, store.MANIFEST)):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another run published the same cache first: use that one
    store.fsync_dir(os.path.dirname(final))
    return final


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def build_cache(spec: CacheSpec, cache_dir: str, encoder: Encoder | None = None, progress: bool = True) -> str:
    """The path of the complete cache for `spec` under cache_dir, encoding it first if it is not there.

    Every process of a multi-process run must call this (each writes its own block; cache_dir must be shared).
    """
    parts, encoder, source = resolve(spec, encoder)
    found = store.find(cache_dir, parts)
    if found:
        log.info("feature cache %s: complete, reusing it", found)
        return found
    stale = store.nearest_stale(cache_dir, parts)
    if stale:
        log.info("no feature cache for this run yet (the nearest, %s, differs in %s): writing one", stale[0],
                 "; ".join(stale[1]))
    final = os.path.join(store.split_dir(cache_dir, spec.dataset, spec.split), spec_lib.key(parts))
    tmp = final + ".incomplete"
    pi, pc = jax.process_index(), jax.process_count()
    if pi == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed pass left
        os.makedirs(tmp)
    _barrier("kdjax-cache-start")
    write_block(spec, tmp, parts, encoder, source, process_index=pi, process_count=pc, progress=progress and pi == 0)
    _barrier("kdjax-cache-blocks")
    if pi == 0:
        finalize(tmp, final, parts, encoder, pc)
    _barrier("kdjax-cache-done")
    return final


def open_cache(spec: CacheSpec, cache_dir: str, encoder: Encoder | None = None) -> store.CachedFeatures:
    """The complete cache for `spec`; DatasetError naming the differing parts when only a stale one exists."""
    parts, _, _ = resolve(spec, encoder)
    found = store.find(cache_dir, parts)
    if found:
        return store.CachedFeatures(found)
    stale = store.nearest_stale(cache_dir, parts)
    where = f"{spec.dataset}/{spec.split} in {cache_dir}"
    if stale:
        spec_lib.check(json.load(open(os.path.join(stale[0], store.MANIFEST)))["fingerprint"], parts, stale[0])
    mode = "kws" if spec.kind == "pooled" else "sv"
    raise DatasetError(f"no complete feature cache for {where} (encoder {spec.encoder}); run: kdjax cache-features "
                       f"--encoder {spec.encoder} --mode {mode} --{mode}_dataset {spec.dataset} --splits {spec.split} "
                       f"--cache_dir {cache_dir}")


def load(path: str, spec: CacheSpec, encoder: Encoder | None = None) -> store.CachedFeatures:
    """Open the cache folder `path`, refusing it (naming the differing parts) unless it was built for `spec`."""
    cache = store.CachedFeatures(path)
    parts, _, _ = resolve(spec, encoder)
    spec_lib.check(cache.fingerprint, parts, path)
    return cache
