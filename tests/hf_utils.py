"""Tiny Hugging Face checkpoints for tests, built with transformers (PyTorch) and saved with save_pretrained."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)

VARIANTS = {
    "wav2vec2_group_postln": dict(model_type="wav2vec2", feat_extract_norm="group", do_stable_layer_norm=False,
                                  conv_bias=False),
    "wav2vec2_layer_stableln_bias": dict(model_type="wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True,
                                         conv_bias=True, num_conv_pos_embeddings=15),
    "hubert_base_like": dict(model_type="hubert", feat_extract_norm="group", do_stable_layer_norm=False,
                             feat_proj_layer_norm=True),
    "hubert_no_proj_ln": dict(model_type="hubert", feat_extract_norm="group", do_stable_layer_norm=False,
                              feat_proj_layer_norm=False),
}


def hf_config(model_type: str, **fields):
    """A transformers config object (HubertConfig or Wav2Vec2Config)."""
    import transformers

    cls = transformers.HubertConfig if model_type == "hubert" else transformers.Wav2Vec2Config
    fields = {k: v for k, v in fields.items() if k != "model_type"}
    return cls(**fields)


def hf_model(config, seed: int = 0, model_class: str | None = None):
    """A transformers model in eval mode with every parameter perturbed, so mapping errors cannot hide."""
    import torch
    import transformers

    torch.manual_seed(seed)
    prefix = "Hubert" if config.model_type == "hubert" else "Wav2Vec2"
    model = getattr(transformers, model_class or f"{prefix}Model")(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "original0" in name or "weight_g" in name:
                p.mul_(1.0 + 0.1 * torch.rand_like(p))
            else:
                p.add_(0.05 * torch.randn_like(p))
    return model


def save_tiny(path: Path, variant: str, seed: int = 0, **overrides) -> Path:
    """Build a tiny HF model of a variant and save it (config.json + model.safetensors) to `path`."""
    fields = {**TINY, **VARIANTS[variant], **overrides}
    model = hf_model(hf_config(**fields), seed=seed)
    model.save_pretrained(path)
    return Path(path)


def batch(seed: int = 0, lengths=(4000, 2800)):
    """Float32 audio [B, S] and an int attention mask with right padding."""
    rng = np.random.default_rng(seed)
    total = max(lengths)
    x = rng.standard_normal((len(lengths), total)).astype(np.float32)
    mask = (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return (x * mask).astype(np.float32), mask
