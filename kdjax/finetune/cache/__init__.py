"""Frozen-feature cache: encode a split once with the frozen encoder, then train and evaluate heads from the cache.

    spec = CacheSpec(encoder="hf_dir", dataset="speech_commands", split="train", kind="pooled", max_samples=16000)
    path = build_cache(spec, "caches/")          # one deterministic pass, atomic; reuses a complete cache
    cache = open_cache(spec, "caches/")          # refuses a stale cache, naming the part that differs
    it = kws_train_iterator(cache, batch_size=32, seed=0)   # {"pooled": f32[b, L, H], "label", ...}
    logits = kws_pooled_logits(model.kws, batch["pooled"])  # == model.kws(hidden_states, frame_mask)

Modules: spec (CacheSpec, fingerprint), store (layout, records, CachedFeatures), build (the cache pass), readers
(grain batches, frame-space crops), pooled (the KWS identity), cli (`kdjax cache-features`). See docs/cache.md.
"""
from kdjax.finetune.cache.build import build_cache, load, open_cache, pool_layers
from kdjax.finetune.cache.cli import main, run_specs
from kdjax.finetune.cache.pooled import kws_pooled_logits, kws_pooled_loss
from kdjax.finetune.cache.readers import (crop_frames, eval_batches, kws_train_iterator, layer_major, num_frames,
                                          process_eval_batches, sv_train_iterator)
from kdjax.finetune.cache.spec import CacheSpec
from kdjax.finetune.cache.store import CachedFeatures

__all__ = ["CacheSpec", "CachedFeatures", "build_cache", "crop_frames", "eval_batches", "kws_pooled_logits",
           "kws_pooled_loss", "kws_train_iterator", "layer_major", "load", "main", "num_frames", "open_cache",
           "pool_layers", "process_eval_batches", "run_specs", "sv_train_iterator"]
