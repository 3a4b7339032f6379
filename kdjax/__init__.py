"""kdjax: distil self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM) into small students, in JAX/Flax."""

__version__ = "0.1.0"

_LAZY = {
    "from_pretrained": "kdjax.models.hf",
    "save_pretrained": "kdjax.models.hf",
    "EncoderConfig": "kdjax.models.config",
    "Encoder": "kdjax.models.encoder",
}


def __getattr__(name):
    # Lazy so that `import kdjax` (and the CLI's start) does not pay for importing jax.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdjax' has no attribute {name!r}")


__all__ = list(_LAZY)
