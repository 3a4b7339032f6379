"""Frozen fine-tuning from the feature cache (config.finetune.cache): the heads train and are evaluated on cached
hidden states, through the same loop, task and model as an uncached run.

    config.finetune.cache         "" = off; else the cache folder (shared between runs: one sub-folder per fingerprint)
    config.finetune.cache_dtype   float32 | float16 | bfloat16 (storage; heads always see float32)
    config.finetune.cache_layers  "all" hidden states, or indices "0,4,8" (the featurizer then weighs only those)
    config.finetune.sv_train_max_seconds  keep the centre this long of SV training utterances (0: whole utterances)

The caches a run needs (KWS train/validation/test pooled, SV train/test frames; kdjax.finetune.cache.run_specs, the
same as `kdjax cache-features`) are built when the task is built if no complete one matches, and reused otherwise.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax
import numpy as np

from kdjax.errors import ConfigError
from kdjax.finetune import cache as cache_lib
from kdjax.models import heads


def check(cfg: Any, one_stage_on: bool) -> None:
    """The cache serves frozen two-stage runs with kdjax's default data options; anything else is named."""
    if not cfg.cache:
        return
    if one_stage_on:
        raise ConfigError(f"config.finetune.cache={cfg.cache!r} cannot be used with config.finetune.one_stage.teacher="
                          f"{cfg.one_stage.teacher!r}: a one-stage run trains its encoder")
    if not cfg.frozen:
        raise ConfigError(f"config.finetune.cache={cfg.cache!r} needs config.finetune.frozen=True: a fine-tuned "
                          "encoder changes every step, so its features cannot be cached")
    unsupported = {"gain_db": (cfg.gain_db, 0.0), "kws_sampling": (cfg.kws_sampling, "uniform"),
                   "kws_dev": (cfg.kws_dev, "plain"), "sv_eval": (cfg.sv_eval, "padded"),
                   "sv_min_seconds": (cfg.sv_min_seconds, 0.0)}
    for field, (value, default) in unsupported.items():
        if value != default:
            raise ConfigError(f"config.finetune.cache is not implemented with config.finetune.{field}={value!r} "
                              f"(only {default!r}); run uncached (cache='') for that")


SV_EVAL_MEMORY_BYTES = 2**31  # the SV evaluation split's padded batches are kept in memory up to this


class FeatureCaches:
    """The opened caches of one run, by (stream, split), and the batches made from them."""

    def __init__(self, cfg: Any, encoder_dir: str, streams: tuple[str, ...], samples: dict[str, int],
                 overrides: dict, sv_eval_split: str | None = None):
        """`sv_eval_split`: the SV split scored during training (checkpoint selection), cached like the test split."""
        from kdjax.models import hf

        mode = "multitask" if len(streams) == 2 else streams[0]
        specs = cache_lib.run_specs(mode, encoder_dir, kws_dataset=cfg.kws_dataset, sv_dataset=cfg.sv_dataset,
                                    kws_seconds=cfg.kws_seconds, sv_seconds=cfg.sv_seconds,
                                    sv_eval_max_seconds=cfg.sv_eval_max_seconds,
                                    sv_train_max_seconds=cfg.sv_train_max_seconds, layers=cfg.cache_layers,
                                    dtype=cfg.cache_dtype, data_dir=cfg.data_dir)
        specs = [dataclasses.replace(s, normalize=bool(cfg.normalize)) for s in specs]
        if sv_eval_split and sv_eval_split != "test" and "sv" in streams:
            specs.append(dataclasses.replace(next(s for s in specs if s.kind == "frames" and s.split == "test"),
                                             split=sv_eval_split))
        self.sv_eval_split, self._sv_eval_held = sv_eval_split, None
        encoder = hf.from_pretrained(encoder_dir, **overrides)  # once, for every split
        self.caches = {}
        for spec in specs:
            stream = "kws" if spec.kind == "pooled" else "sv"
            self.caches[stream, spec.split] = cache_lib.load(cache_lib.build_cache(spec, cfg.cache, encoder), spec,
                                                             encoder)
        self.cfg, self.samples = cfg, samples

    def num_hidden_states(self, stream: str) -> int:
        """How many hidden states a cached example holds (what the featurizer weighs)."""
        return int(self.caches[stream, "train"].num_layers)

    def train_iterator(self, stream: str, per_process: int, seed: int) -> Iterator[dict]:
        """Seeded training batches from the cache (frame-space crops for SV, as the uncached crops)."""
        cache = self.caches[stream, "train"]
        if stream == "kws":
            return cache_lib.kws_train_iterator(cache, batch_size=per_process, seed=seed)
        return cache_lib.sv_train_iterator(cache, batch_size=per_process, crop_samples=self.samples["sv"], seed=seed)

    def validation_batches(self, global_batch_size: int) -> Iterator[dict]:
        """This process's KWS validation batches (pooled)."""
        return cache_lib.process_eval_batches(self.caches["kws", "validation"], global_batch_size=global_batch_size)

    def sv_eval_batches(self, global_batch_size: int) -> Iterator[dict]:
        """This process's batches of the SV split scored during training, padded to its longest utterance (one
        shape, one compilation); held in memory after the first evaluation when they fit in SV_EVAL_MEMORY_BYTES
        (reading and padding them again at every evaluation cost more than scoring them)."""
        if self._sv_eval_held is not None:
            return iter(self._sv_eval_held)
        cache = self.caches["sv", self.sv_eval_split]
        frames = cache_lib.longest_frames(cache)
        batches = cache_lib.process_eval_batches(cache, global_batch_size=global_batch_size, frames_to=frames)
        first = cache.record(0)["x"]
        padded = len(cache) * first.shape[0] * frames * first.shape[2] * first.dtype.itemsize
        if padded > SV_EVAL_MEMORY_BYTES:
            return batches
        self._sv_eval_held = list(batches)
        return iter(self._sv_eval_held)

    def test_batches(self, stream: str, batch_size: int) -> Iterator[dict]:
        """Every test example, in order, with "valid" and "index" as pipeline.eval_batches; SV frames padded to the
        split's longest utterance: one shape, one compilation (padding each batch to its own longest compiled the
        scoring function once per batch; the heads ignore padded frames)."""
        cache = self.caches[stream, "test"]
        longest = cache_lib.longest_frames(cache) if cache.kind == "frames" else None
        return cache_lib.eval_batches(cache, batch_size=batch_size, frames_to=longest)


def kws_test(logits_fn, caches: FeatureCaches, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the KWS test split from the pooled cache; logits_fn(batch) -> logits."""
    logits, labels = [], []
    for batch in caches.test_batches("kws", batch_size):
        out = np.asarray(logits_fn(batch))
        logits.append(out[batch["valid"]])
        labels.append(batch["label"][batch["valid"]])
    return np.concatenate(logits), np.concatenate(labels)


def features(batch: dict) -> tuple[heads.BatchMajor, jax.Array]:
    """(float32 hidden states, batch-major [B, L, T, H], frame mask [B, T]) of a cached SV batch (batches come in the
    storage dtype)."""
    return heads.BatchMajor(jax.numpy.asarray(batch["hidden_states"], jax.numpy.float32)), batch["frame_mask"]
