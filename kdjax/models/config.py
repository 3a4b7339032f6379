"""EncoderConfig: one frozen dataclass describes every wav2vec 2.0 / HuBERT variant kdjax loads."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kdjax.errors import ConfigError

MODEL_TYPES = ("hubert", "wav2vec2")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish")

# HF config flags that select architecture pieces kdjax does not implement: loading such a checkpoint must fail loudly
# instead of silently computing something else. Value = the setting that is supported.
_UNSUPPORTED_FLAGS = {
    "add_adapter": False,
    "conv_pos_batch_norm": False,
    "adapter_attn_dim": None,
    "use_weighted_layer_sum": False,  # only heads use it, but it changes what users expect from the encoder output
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a wav2vec 2.0 / HuBERT encoder (field names follow Hugging Face) plus kdjax runtime knobs."""

    model_type: str = "hubert"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.1
    layerdrop: float = 0.1
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    initializer_range: float = 0.02
    # kdjax runtime knobs (not part of the HF architecture; not written to config.json)
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: bool = False  # jax.checkpoint each transformer layer
    scan_layers: bool = False  # lax.scan over stacked layers (faster compiles for deep models)
    pos_conv_impl: str = "auto"  # "conv" (native grouped conv), "einsum" (CPU-friendly weight gradient), "auto"

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self.validate()

    # ---- validation -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value kdjax cannot use."""
        checks = [
            ("model_type", self.model_type in MODEL_TYPES, f"one of {MODEL_TYPES}"),
            ("feat_extract_norm", self.feat_extract_norm in ("group", "layer"), "'group' or 'layer'"),
            ("hidden_act", self.hidden_act in ACTIVATIONS, f"one of {ACTIVATIONS}"),
            ("feat_extract_activation", self.feat_extract_activation in ACTIVATIONS, f"one of {ACTIVATIONS}"),
            ("conv_kernel", len(self.conv_kernel) == len(self.conv_dim) == len(self.conv_stride),
             f"conv_dim, conv_kernel and conv_stride of equal length (got {len(self.conv_dim)}, "
             f"{len(self.conv_kernel)}, {len(self.conv_stride)})"),
            ("num_hidden_layers", self.num_hidden_layers >= 0, "a non-negative integer"),
            ("num_attention_heads", self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0,
             f"a positive divisor of hidden_size={self.hidden_size}"),
            ("num_conv_pos_embedding_groups",
             self.num_conv_pos_embedding_groups > 0 and self.hidden_size % self.num_conv_pos_embedding_groups == 0,
             f"a positive divisor of hidden_size={self.hidden_size}"),
            ("dtype", self.dtype in ("float32", "bfloat16", "float16"), "'float32', 'bfloat16' or 'float16'"),
            ("pos_conv_impl", self.pos_conv_impl in ("auto", "conv", "einsum"), "'auto', 'conv' or 'einsum'"),
        ]
        if self.model_type == "wav2vec2":
            checks.append(("feat_proj_layer_norm", self.feat_proj_layer_norm,
                           "True for wav2vec2 (its feature projection always has a LayerNorm)"))
        for field, ok, expected in checks:
            if not ok:
                raise ConfigError(f"EncoderConfig.{field}={getattr(self, field)!r} is invalid: expected {expected}")

    # ---- derived ----------------------------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        """Samples the conv feature encoder needs for one output frame (400 for the base models)."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field = (field - 1) * stride + kernel
        return field

    @property
    def frame_stride(self) -> int:
        """Input samples per output frame (320 for the base models: 20 ms at 16 kHz)."""
        stride = 1
        for s in self.conv_stride:
            stride *= s
        return stride

    def replace(self, **changes: Any) -> "EncoderConfig":
        """A copy with some fields changed (validated)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"EncoderConfig has no field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face interop ---------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any] | Any, *, source: str = "config", **overrides: Any) -> "EncoderConfig":
        """Build from an HF config dict or PretrainedConfig; `source` names the file in errors."""
        cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        model_type = cfg.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"{source}: model_type={model_type!r} is not supported: expected one of {MODEL_TYPES}")
        for key, supported in _UNSUPPORTED_FLAGS.items():
            if cfg.get(key) not in (None, supported):
                raise ConfigError(f"{source}: {key}={cfg[key]!r} is not supported by kdjax: expected {supported!r}")
        if cfg.get("num_feat_extract_layers", len(cfg.get("conv_dim", ()))) != len(cfg.get("conv_dim", ())):
            raise ConfigError(f"{source}: num_feat_extract_layers={cfg['num_feat_extract_layers']} does not match "
                              f"len(conv_dim)={len(cfg.get('conv_dim', ()))}")
        names = {f.name for f in dataclasses.fields(cls)} - set(_KDJAX_ONLY)
        kwargs = {k: cfg[k] for k in names if k in cfg}
        if model_type == "wav2vec2":
            kwargs["feat_proj_layer_norm"] = True
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict transformers reads back as HubertConfig / Wav2Vec2Config."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _KDJAX_ONLY}
        out["conv_dim"], out["conv_kernel"], out["conv_stride"] = map(list, (self.conv_dim, self.conv_kernel,
                                                                              self.conv_stride))
        out["num_feat_extract_layers"] = len(self.conv_dim)
        out["architectures"] = ["HubertModel" if self.model_type == "hubert" else "Wav2Vec2Model"]
        if self.model_type == "wav2vec2":
            del out["feat_proj_layer_norm"]
        return out


_KDJAX_ONLY = ("dtype", "remat", "scan_layers", "pos_conv_impl")

_HUBERT_BASE = EncoderConfig()

PRESETS: dict[str, EncoderConfig] = {
    # Values from the published config.json of each Hugging Face repo.
    "facebook/hubert-base-ls960": _HUBERT_BASE,
    "facebook/wav2vec2-base": EncoderConfig(
        model_type="wav2vec2", activation_dropout=0.0, layerdrop=0.05, feat_proj_dropout=0.1),
    "facebook/wav2vec2-large-lv60": EncoderConfig(
        model_type="wav2vec2", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True, activation_dropout=0.0,
        layerdrop=0.1, feat_proj_dropout=0.1),
    "ntu-spml/distilhubert": EncoderConfig(
        num_hidden_layers=2, feat_proj_layer_norm=False, hidden_dropout=0.1, activation_dropout=0.1,
        attention_dropout=0.1, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0),
}


def preset(name: str, **overrides: Any) -> EncoderConfig:
    """A named published configuration (e.g. 'facebook/hubert-base-ls960'), optionally with fields changed."""
    if name not in PRESETS:
        raise ConfigError(f"unknown encoder preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
