"""WavLM checkpoints for tests, built with transformers (PyTorch); every parameter random so mapping errors show."""
from __future__ import annotations

from pathlib import Path

from tests import hf_utils

# Fuzzed tiny variants: bucket counts and distances (incl. odd counts and distances shorter than the input), both
# layer-norm placements, both conv-norm kinds.
VARIANTS = {
    "base_like": dict(feat_extract_norm="group", do_stable_layer_norm=False, num_buckets=320, max_bucket_distance=800),
    "stable_few_buckets": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_buckets=8,
                               max_bucket_distance=12),
    "postln_odd_buckets": dict(feat_extract_norm="group", do_stable_layer_norm=False, num_buckets=37,
                               max_bucket_distance=50, hidden_act="gelu_python", num_conv_pos_embeddings=15),
}


def wavlm_config(**fields):
    """A transformers WavLMConfig with the tiny sizes of tests.hf_utils.TINY unless overridden."""
    import transformers

    return transformers.WavLMConfig(**{**hf_utils.TINY, **fields})


def wavlm_model(config, seed: int = 0, model_class: str = "WavLMModel"):
    """A transformers WavLM model in eval mode with seeded random parameters (built on the meta device: no init pass).

    Weights are drawn with std 1/sqrt(fan_in), norms' scales around 1, biases small; the relative position embedding
    gets std 1 so that a wrong bucket or head order shows in the outputs.
    """
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, model_class)(config)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "rel_attn_embed" in name:
                p.copy_(noise)
            elif (p.dim() == 1 and "norm" in name and name.endswith("weight")) or "original0" in name \
                    or "weight_g" in name or "gru_rel_pos_const" in name:
                p.copy_(1.0 + 0.1 * noise.abs())
            elif p.dim() == 1 or name.endswith("masked_spec_embed"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
        for buffer in model.buffers():
            buffer.zero_()
    return model


def save_tiny_wavlm(path: Path, variant: str = "base_like", seed: int = 0, **overrides) -> Path:
    """Save a tiny perturbed WavLMModel of a variant (config.json + model.safetensors) to `path`."""
    wavlm_model(wavlm_config(**{**VARIANTS[variant], **overrides}), seed=seed).save_pretrained(path)
    return Path(path)
