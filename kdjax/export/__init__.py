"""Export an encoder, or one graph from audio to KWS logits or to the SV embedding, to ONNX or LiteRT (TFLite), in
float32 or int8, for devices. Needs the optional `kdjax[export]` extra (jax2onnx + onnxruntime, litert-converter +
ai-edge-litert + litert-quantizer); no TensorFlow is involved. See docs/export.md.
"""


def __getattr__(name):
    # Lazy, so that building the `kdjax` command line does not import jax and the converters.
    if name in ("export", "measure"):
        from kdjax.export import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdjax.export' has no attribute {name!r}")
