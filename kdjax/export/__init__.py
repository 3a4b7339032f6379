"""Export an encoder, or one graph from audio to KWS logits or to the SV embedding, to ONNX or LiteRT (TFLite), in
float32 or int8, for devices. Needs the optional `kdjax[export]` extra (jax2onnx + onnxruntime, litert-converter +
ai-edge-litert + litert-quantizer); no TensorFlow is involved. See docs/export.md.
"""
from kdjax.export.api import export, measure  # noqa: F401
