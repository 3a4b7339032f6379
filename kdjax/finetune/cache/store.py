"""On-disk layout of a feature cache: ArrayRecord blocks of msgpack records, a manifest, atomic publication.

    <cache_dir>/<dataset name, "/" -> "__">/<split>/<key>/      key = spec.key(fingerprint)
        manifest.json                       fingerprint, shapes, blocks; written last, before the rename
        block-00000-of-00002.array_record   one block per writing process, records in write order
        block-00000-of-00002.json           index, utterance id and length of each record of that block

A pass writes into <key>.incomplete/ and renames it to <key>/ only after every block and the manifest are fsynced,
so a pass killed at any point leaves nothing that `open_cache` accepts (an .incomplete folder is never read and is
cleared by the next pass).
"""
from __future__ import annotations

import json
import os
from typing import Any

import msgpack
import numpy as np

from kdjax.errors import DatasetError
from kdjax.finetune.cache import spec as spec_lib

MANIFEST = "manifest.json"
FORMAT = 1


def split_dir(cache_dir: str, dataset: str, split: str) -> str:
    """The folder holding every cache (one per fingerprint) of a dataset split."""
    return os.path.join(cache_dir, dataset.replace("/", "__"), split)


def block_name(index: int, count: int) -> str:
    """File stem of block `index` of `count`."""
    return f"block-{index:05d}-of-{count:05d}"


def encode_record(features: np.ndarray, *, index: int, utt_id: str, label: int, speaker: int,
                  num_samples: int) -> bytes:
    """One example: features [L, H] (pooled) or [L, T, H] (frames) in the storage dtype, plus its labels."""
    return msgpack.packb({"index": int(index), "id": utt_id, "label": int(label), "speaker": int(speaker),
                          "num_samples": int(num_samples), "shape": list(features.shape),
                          "x": np.ascontiguousarray(features).tobytes()})


def decode_record(data: bytes, dtype: np.dtype, as_float32: bool = True) -> dict[str, Any]:
    """Inverse of encode_record; "x" comes back as float32 (or, as_float32=False, a read-only storage-dtype view)."""
    rec = msgpack.unpackb(data)
    x = np.frombuffer(rec["x"], dtype=dtype).reshape(rec["shape"])
    rec["x"] = x.astype(np.float32) if as_float32 else x
    return rec


def read_sidecar(path: str) -> dict[str, list]:
    """A block's {"indices", "ids", "num_samples"} (record order)."""
    with open(path) as f:
        return json.load(f)


def fsync_dir(path: str) -> None:
    """fsync a folder so a rename or new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """fsync a closed file's contents."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class CachedFeatures:
    """Random-access source over one complete cache: `cache[i]` is example i's record (float32 "x").

    Pooled caches up to `in_memory_bytes` (float32) are read into memory once at open: their records are a few kB,
    and reading them one by one would cost more than the head step they feed. Frames caches stay on disk unless
    `hold()` keeps them in memory (the SV training reader does, up to 4 GiB of files).
    """

    def __init__(self, path: str, in_memory_bytes: int = 2**31):
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest_path):
            raise DatasetError(f"{path}: not a complete feature cache (no {MANIFEST})")
        with open(manifest_path) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path}: cache format {self.manifest.get('format')!r}, expected {FORMAT}")
        self.path = path
        self.fingerprint = self.manifest["fingerprint"]
        self.dtype = spec_lib.storage_dtype(self.fingerprint["features"]["dtype"])
        self.kind = self.fingerprint["preprocessing"]["kind"]
        blocks = self.manifest["blocks"]
        from grain.sources import ArrayRecordDataSource

        self._source = ArrayRecordDataSource([os.path.join(path, b + ".array_record") for b in blocks])
        sidecars = [read_sidecar(os.path.join(path, b + ".json")) for b in blocks]
        order = np.concatenate([np.asarray(s["indices"], np.int64) for s in sidecars])
        n = int(self.fingerprint["dataset"]["num_examples"])
        if len(order) != n or len(self._source) != n or not np.array_equal(np.sort(order), np.arange(n)):
            raise DatasetError(f"{path}: the blocks hold {len(self._source)} records for {n} examples")
        self._where = np.empty(n, np.int64)
        self._where[order] = np.arange(n)
        self._ids = [""] * n
        self.num_samples = np.zeros(n, np.int64)
        for s in sidecars:
            for i, utt, samples in zip(s["indices"], s["ids"], s["num_samples"]):
                self._ids[i], self.num_samples[i] = utt, samples
        self._memory, self._held = None, None
        if self.kind == "pooled" and n and self._size_float32(n) <= in_memory_bytes:
            recs = [self.record(i) for i in range(n)]
            self._memory = {"x": np.stack([r["x"] for r in recs]).astype(np.float32),
                            **{k: np.asarray([r[k] for r in recs]) for k in ("label", "speaker")}}

    def hold(self, max_bytes: int = 2**32) -> bool:
        """Keep every record in memory (storage dtype) when the cache's files total at most max_bytes; True if held.

        For a frames cache a training run reads epoch after epoch: reading and decoding each record from disk again
        costs more than the head step it feeds (the SV readers call this for the training split only)."""
        if self._held is not None:
            return True
        size = sum(os.path.getsize(os.path.join(self.path, b + ".array_record")) for b in self.manifest["blocks"])
        if size > max_bytes:
            return False
        self._held = [decode_record(self._source[int(w)], self.dtype, as_float32=False) for w in self._where]
        return True

    def in_memory(self) -> dict[str, np.ndarray] | None:
        """{"x": f32[N, L, H], "label", "speaker"} of a pooled cache held in memory, else None."""
        return self._memory

    def _size_float32(self, n: int) -> int:
        return n * self.num_layers * int(self.manifest.get("hidden_size", 0) or self.record(0)["x"].shape[-1]) * 4

    def record(self, index: int) -> dict[str, Any]:
        """Example `index` as stored: "x" a read-only view in the storage dtype (readers convert what they keep)."""
        if self._held is not None:
            return self._held[index]
        return decode_record(self._source[int(self._where[index])], self.dtype, as_float32=False)

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._memory is not None:
            m = self._memory
            return {"x": m["x"][index], "label": int(m["label"][index]), "speaker": int(m["speaker"][index]),
                    "index": int(index), "id": self._ids[index], "num_samples": int(self.num_samples[index])}
        if self._held is not None:
            rec = self._held[index]
            return {**rec, "x": rec["x"].astype(np.float32)}
        return decode_record(self._source[int(self._where[index])], self.dtype)

    @property
    def num_layers(self) -> int:
        """Hidden states per example (the Featurizer's num_layers for this cache)."""
        return len(self.fingerprint["features"]["layers"])

    @property
    def frame_stride(self) -> int:
        """Samples per encoder frame (for frame-space crops)."""
        return int(self.manifest["frame_stride"])

    @property
    def receptive_field(self) -> int:
        """Samples one encoder frame covers (frames of a clip: readers.num_frames)."""
        return int(self.manifest["receptive_field"])

    @property
    def max_samples(self) -> int:
        """The cache pass's cap on a clip's samples (it kept the centre this long of a longer clip); 0: no cap."""
        return int(self.fingerprint["preprocessing"]["max_samples"])

    def utterance_ids(self) -> list[str]:
        """The utterance id of every example, in index order (for trial lists)."""
        return list(self._ids)


def find(cache_dir: str, parts: dict[str, Any]) -> str | None:
    """The complete cache for this fingerprint, or None."""
    d = split_dir(cache_dir, parts["dataset"]["name"], parts["dataset"]["split"])
    path = os.path.join(d, spec_lib.key(parts))
    return path if os.path.exists(os.path.join(path, MANIFEST)) else None


def nearest_stale(cache_dir: str, parts: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The complete cache of the same dataset split that differs in the fewest parts, and those parts."""
    d = split_dir(cache_dir, parts["dataset"]["name"], parts["dataset"]["split"])
    best = None
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        manifest = os.path.join(d, name, MANIFEST)
        if name.endswith(".incomplete") or not os.path.exists(manifest):
            continue
        with open(manifest) as f:
            diff = spec_lib.differences(json.load(f)["fingerprint"], parts)
        if diff and (best is None or len(diff) < len(best[1])):
            best = (os.path.join(d, name), diff)
    return best
