"""What a feature cache holds (CacheSpec) and the fingerprint that keys it: encoder, dataset, preprocessing, features.

The fingerprint is a dict of named parts, so a stale cache is refused with the part that differs named ("encoder
weights differ", "dataset version differs", ...), not a bare hash mismatch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import numpy as np

from kdjax.data.audio import SAMPLE_RATE
from kdjax.errors import ConfigError, DatasetError

KINDS = ("pooled", "frames")
DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """One cached split: which encoder, which data, how the audio is cut, and what of the hidden states is kept.

    kind "pooled" (KWS): each clip is cropped/padded to `max_samples` (centre crop, as eval; SUPERB KWS clips are
    <= 1 s, so training never crops them) and the masked mean over valid frames of every kept layer is stored,
    [L, H] per clip. kind "frames" (SV): each utterance is encoded once, centre-cropped to `max_samples` when that is
    > 0 (0: whole utterances), zero-padded to a multiple of `pad_to` (its own length bucket, so a clip's features never
    depend on its batch-mates), and the valid frames of every kept layer are stored, [L, T, H]. Training crops them in
    frame space (kdjax.finetune.cache.readers).
    """

    encoder: str  # HF checkpoint folder
    dataset: str  # "name[/config]" as kdjax.data.pipeline.load_source takes it
    split: str
    kind: str = "pooled"
    max_samples: int = SAMPLE_RATE
    pad_to: int = SAMPLE_RATE
    layers: str | tuple[int, ...] = "all"  # "all" hidden states (input of layer 0 first) or their indices
    dtype: str = "float32"  # storage dtype; readers always return float32
    normalize: bool = True  # zero-mean unit-variance over valid samples, as the uncached pipeline
    data_dir: str | None = None  # where the dataset is prepared (not part of the fingerprint)
    batch_size: int = 8  # encoder batch of the cache pass (not part of the fingerprint: results do not depend on it)

    def __post_init__(self):
        if isinstance(self.layers, str) and self.layers != "all":
            object.__setattr__(self, "layers", parse_layers(self.layers))
        elif not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        for field, ok, expected in (
                ("kind", self.kind in KINDS, f"one of {KINDS}"),
                ("dtype", self.dtype in DTYPES, f"one of {DTYPES}"),
                ("max_samples", self.max_samples > 0 or (self.kind == "frames" and self.max_samples == 0),
                 "> 0 (0, no limit, only for kind='frames')"),
                ("pad_to", self.pad_to > 0, "> 0"),
                ("batch_size", self.batch_size > 0, "> 0")):
            if not ok:
                raise ConfigError(f"CacheSpec.{field}={getattr(self, field)!r}: expected {expected}")

    def layer_indices(self, num_hidden_states: int) -> tuple[int, ...]:
        """The kept hidden-state indices for an encoder with `num_hidden_states` (num_hidden_layers + 1)."""
        if self.layers == "all":
            return tuple(range(num_hidden_states))
        bad = [i for i in self.layers if not 0 <= i < num_hidden_states]
        if bad or not self.layers:
            raise ConfigError(f"CacheSpec.layers={list(self.layers)}: expected indices in 0..{num_hidden_states - 1}"
                              f" (hidden states of a {num_hidden_states - 1}-layer encoder)")
        return tuple(self.layers)


def parse_layers(text: str) -> str | tuple[int, ...]:
    """'all' or a comma list '0,4,12' -> "all" or (0, 4, 12)."""
    text = text.strip()
    if text == "all":
        return "all"
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"cache layers={text!r}: expected 'all' or comma-separated hidden-state indices") from None


def storage_dtype(name: str) -> np.dtype:
    """numpy dtype of a storage dtype name (bfloat16 via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# Fields that act only when the encoder trains (dropout, masking, LayerDrop): frozen features do not depend on them,
# so a run that changes them shares the cache.
TRAINING_ONLY = ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "layerdrop",
                 "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
                 "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks")


def params_digest(params: Any) -> str:
    """sha256 over every parameter (path, dtype, shape, bytes) of an NNX state or pytree of arrays.

    masked_spec_embed is left out: a frozen (deterministic) encoder never uses it.
    """
    import jax

    h = hashlib.sha256()
    leaves = [kv for kv in jax.tree_util.tree_leaves_with_path(params)
              if "masked_spec_embed" not in jax.tree_util.keystr(kv[0])]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def config_digest(config: Any) -> str:
    """sha256 of an EncoderConfig's architecture (its HF dict less TRAINING_ONLY) plus its compute dtype."""
    payload = {k: v for k, v in config.to_hf().items() if k not in TRAINING_ONLY}
    payload["compute_dtype"] = config.dtype
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(spec: CacheSpec, *, weights: str, config: str, dataset_version: str, num_examples: int,
                layers: Sequence[int]) -> dict[str, Any]:
    """The named parts a cache is keyed by (see `differences`)."""
    return {
        "encoder_weights": weights,
        "encoder_config": config,
        "dataset": {"name": spec.dataset, "version": dataset_version, "split": spec.split,
                    "num_examples": int(num_examples)},
        "preprocessing": {"kind": spec.kind, "max_samples": int(spec.max_samples), "pad_to": int(spec.pad_to),
                          "normalize": bool(spec.normalize)},
        "features": {"layers": [int(i) for i in layers], "dtype": spec.dtype},
    }


def key(parts: dict[str, Any]) -> str:
    """Short hash of a fingerprint: the cache's folder name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def differences(cached: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differing parts, e.g. ["encoder weights (cache 1a2b3c4d..., run 5e6f7a8b...)"]."""
    out = []
    for part in wanted:
        a, b = cached.get(part), wanted[part]
        if a == b:
            continue
        label = part.replace("_", " ")
        if isinstance(a, dict) and isinstance(b, dict):
            for field in sorted(set(a) | set(b)):
                if a.get(field) != b.get(field):
                    out.append(f"{label} {field} (cache {a.get(field)!r}, run {b.get(field)!r})")
        else:
            out.append(f"{label} (cache {str(a)[:12]}..., run {str(b)[:12]}...)")
    return out


def check(cached: dict[str, Any], wanted: dict[str, Any], where: str) -> None:
    """Raise DatasetError naming every part of the fingerprint in which the cache at `where` differs."""
    diff = differences(cached, wanted)
    if diff:
        raise DatasetError(f"feature cache {where} is stale for this run: it differs in " + "; ".join(diff)
                           + ". Rebuild it (kdjax cache-features) or point the run at another cache_dir")
