"""Activation functions by their Hugging Face names (transformers' ACT2FN), each computing what transformers computes.

"gelu" is the exact erf form, written as PyTorch writes it. Only parameter-free activations are here: transformers'
"prelu" and "xielu" carry learned parameters that wav2vec 2.0-family checkpoints never use.
"""
import functools
import math

import jax
import jax.numpy as jnp



def _gelu(x: jax.Array) -> jax.Array:
    """Exact GELU. In float32 as PyTorch writes it, x (1 + erf(x / sqrt 2)) / 2: in this form onnxruntime fuses the
    exported ops into one Gelu kernel (jax.nn.gelu's erfc form exports as six elementwise passes: ~7 ms of a
    DistilHuBERT-size int8 graph's 45 ms per second of audio). In lower precision jax.nn.gelu's erfc form: 1 + erf
    cancels for negative inputs, which bfloat16 cannot afford."""
    if x.dtype != jnp.float32:
        return jax.nn.gelu(x, approximate=False)
    return x * (1.0 + jax.lax.erf(x / math.sqrt(2.0))) * 0.5


_gelu_tanh = functools.partial(jax.nn.gelu, approximate=True)

ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_python": _gelu,
    "gelu_10": lambda x: jnp.clip(_gelu(x), -10, 10),
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "laplace": lambda x: 0.5 * (1.0 + jax.lax.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "hardswish": jax.nn.hard_swish,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "linear": lambda x: x,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sqrtsoftplus": lambda x: jnp.sqrt(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
}
