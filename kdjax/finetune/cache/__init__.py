"""Frozen-feature cache: encode a split once with the frozen encoder, then train and evaluate heads from the cache.

    spec = CacheSpec(encoder="hf_dir", dataset="speech_commands", split="train", kind="pooled", max_samples=16000)
    path = build_cache(spec, "caches/")          # one deterministic pass, atomic; reuses a complete cache
    cache = open_cache(spec, "caches/")          # refuses a stale cache, naming the part that differs
    it = kws_train_iterator(cache, batch_size=32, seed=0)   # {"pooled": f32[b, L, H], "label", ...}
    logits = kws_pooled_logits(model.kws, batch["pooled"])  # == model.kws(hidden_states, frame_mask)

Modules: spec (CacheSpec, fingerprint), store (layout, records, CachedFeatures), build (the cache pass), readers
(grain batches, frame-space crops), pooled (the KWS identity), cli (`kdjax cache-features`). See docs/cache.md.
"""
import importlib

_EXPORTS = {
    "build": ("build_cache", "load", "open_cache", "pool_layers"),
    "cli": ("main", "run_specs"),
    "pooled": ("kws_pooled_logits", "kws_pooled_loss"),
    "readers": ("crop_frames", "eval_batches", "kws_train_iterator", "longest_frames", "num_frames",
                "process_eval_batches", "sv_train_iterator"),
    "spec": ("CacheSpec",),
    "store": ("CachedFeatures",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    # Lazy: `kdjax cache-features --help` (and the kdjax parser that registers it) should not import jax.
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
