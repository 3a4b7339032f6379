"""EncoderConfig: one frozen dataclass describes every wav2vec 2.0 / HuBERT / WavLM variant kdjax loads."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kdjax.errors import ConfigError

MODEL_TYPES = ("hubert", "wav2vec2", "wavlm")
# transformers' parameter-free ACT2FN names, implemented in kdjax.models.activations (listed here so that reading a
# config does not import jax)
ACTIVATIONS = ("gelu", "gelu_python", "gelu_10", "gelu_new", "gelu_fast", "gelu_accurate", "gelu_pytorch_tanh",
               "gelu_python_tanh", "quick_gelu", "laplace", "hardswish", "leaky_relu", "linear", "mish", "relu",
               "relu2", "relu6", "sigmoid", "silu", "swish", "sqrtsoftplus", "tanh")
_HF_ARCHITECTURES = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}

# HF config flags that transformers' base model reads for an architecture piece kdjax does not implement, per model
# type: (supported value, when it matters). Loading such a checkpoint fails loudly instead of computing something else.
# A flag transformers does not read for that model type is ignored (with a warning), as transformers ignores it.
_UNSUPPORTED_FLAGS: dict[str, dict[str, tuple[Any, str]]] = {
    "hubert": {"conv_pos_batch_norm": (False, "always"), "adapter_attn_dim": (None, "stable")},
    "wav2vec2": {"add_adapter": (False, "always"), "adapter_attn_dim": (None, "stable")},
    "wavlm": {"add_adapter": (False, "always")},
}
# Set in *ForSequenceClassification / *ForXVector ports (e.g. SUPERB models): they only add a head parameter.
_HEAD_ONLY_FLAGS = {"use_weighted_layer_sum": False}

# transformers' config-class defaults (HubertConfig, Wav2Vec2Config, WavLMConfig; transformers 5) where they differ
# from EncoderConfig's own defaults (which are facebook/hubert-base-ls960's published values); used for fields a
# config.json leaves out. tests/models/test_hf_config_compat.py checks them against the installed transformers.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "hubert": {"feat_proj_dropout": 0.0},
    "wav2vec2": {"feat_proj_dropout": 0.0},
    "wavlm": {"feat_proj_dropout": 0.0},
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
    # WavLM's gated relative position bias (used when model_type == "wavlm"; transformers' defaults)
    num_buckets: int = 320
    max_bucket_distance: int = 800
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
        if self.model_type in ("wav2vec2", "wavlm"):
            checks.append(("feat_proj_layer_norm", self.feat_proj_layer_norm,
                           f"True for {self.model_type} (its feature projection always has a LayerNorm)"))
        if self.relative_position_bias:
            checks += [("num_buckets", self.num_buckets >= 4, "an integer >= 4 (half per direction, half exact)"),
                       ("max_bucket_distance", self.max_bucket_distance > self.num_buckets // 4,
                        f"an integer > num_buckets // 4 = {self.num_buckets // 4}")]
        for field, ok, expected in checks:
            if not ok:
                raise ConfigError(f"EncoderConfig.{field}={getattr(self, field)!r} is invalid: expected {expected}")

    # ---- derived ----------------------------------------------------------------------------------------------
    @property
    def relative_position_bias(self) -> bool:
        """Whether attention adds WavLM's gated, bucketed relative position bias."""
        return self.model_type == "wavlm"

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
    def from_hf(cls, hf_config: Mapping[str, Any] | Any, *, source: str = "config",
                **overrides: Any) -> "EncoderConfig":
        """Build from an HF config dict or PretrainedConfig; `source` names the file in errors.

        Fields the config leaves out get transformers' defaults for its model type; `ignored_hf_settings` lists what
        is set but ignored.
        """
        cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        model_type = cfg.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"{source}: model_type={model_type!r} is not supported: expected one of {MODEL_TYPES}")
        refused = _unsupported_flags(cfg)
        if refused:
            key, supported = next(iter(refused.items()))
            raise ConfigError(f"{source}: {key}={cfg[key]!r} is not supported by kdjax for {model_type}: expected "
                              f"{supported!r} (transformers' {_HF_ARCHITECTURES[model_type]} uses it)")
        if cfg.get("num_feat_extract_layers", len(cfg.get("conv_dim", ()))) != len(cfg.get("conv_dim", ())):
            raise ConfigError(f"{source}: num_feat_extract_layers={cfg['num_feat_extract_layers']} does not match "
                              f"len(conv_dim)={len(cfg.get('conv_dim', ()))}")
        names = {f.name for f in dataclasses.fields(cls)} - set(_KDJAX_ONLY)
        kwargs = {**_HF_DEFAULTS[model_type], **{k: cfg[k] for k in names if k in cfg}}
        if model_type != "hubert":
            kwargs["feat_proj_layer_norm"] = True  # transformers has no such field: the LayerNorm is always there
        if model_type != "wavlm":
            kwargs.pop("num_buckets", None), kwargs.pop("max_bucket_distance", None)
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict transformers reads back as HubertConfig / Wav2Vec2Config / WavLMConfig."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _KDJAX_ONLY}
        out["conv_dim"], out["conv_kernel"], out["conv_stride"] = map(list, (self.conv_dim, self.conv_kernel,
                                                                              self.conv_stride))
        out["num_feat_extract_layers"] = len(self.conv_dim)
        out["architectures"] = [_HF_ARCHITECTURES[self.model_type]]
        if self.model_type != "hubert":
            del out["feat_proj_layer_norm"]
        if self.model_type != "wavlm":
            del out["num_buckets"], out["max_bucket_distance"]
        return out


def _unsupported_flags(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """{flag: supported value} for the flags of an HF config dict that select an architecture piece kdjax lacks."""
    out = {}
    for key, (supported, when) in _UNSUPPORTED_FLAGS[cfg["model_type"]].items():
        applies = when == "always" or bool(cfg.get("do_stable_layer_norm"))
        if applies and cfg.get(key) not in (None, supported):
            out[key] = supported
    return out


def ignored_hf_settings(hf_config: Mapping[str, Any]) -> list[str]:
    """The settings of an HF config dict that are set but do not change the encoder (so kdjax ignores them)."""
    cfg = dict(hf_config)
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        return []
    out = [f"{key}={cfg[key]!r} (only the task head uses it; the head's weights are not loaded)"
           for key, default in _HEAD_ONLY_FLAGS.items() if cfg.get(key) not in (None, default)]
    refused, own = _unsupported_flags(cfg), _UNSUPPORTED_FLAGS[model_type]
    arch = _HF_ARCHITECTURES[model_type]
    for key, (supported, _) in {k: v for flags in _UNSUPPORTED_FLAGS.values() for k, v in flags.items()}.items():
        if key not in refused and cfg.get(key) not in (None, supported):
            why = "reads it only with do_stable_layer_norm=true" if key in own else "does not read it"
            out.append(f"{key}={cfg[key]!r} (transformers' {arch} {why})")
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
    # microsoft/wavlm-base(-plus) share one architecture (their config.json files differ in no field kdjax reads);
    # wavlm-large is pre-LN ("stable layer norm") with LayerNorm in every conv layer and no conv bias.
    "microsoft/wavlm-base": EncoderConfig(
        model_type="wavlm", activation_dropout=0.0, feat_proj_dropout=0.1, layerdrop=0.05),
    "microsoft/wavlm-base-plus": EncoderConfig(
        model_type="wavlm", activation_dropout=0.0, feat_proj_dropout=0.1, layerdrop=0.05),
    "microsoft/wavlm-large": EncoderConfig(
        model_type="wavlm", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_bias=False, feat_extract_norm="layer", do_stable_layer_norm=True, activation_dropout=0.0,
        feat_proj_dropout=0.1, layerdrop=0.1, mask_time_prob=0.075),
    "ntu-spml/distilhubert": EncoderConfig(
        num_hidden_layers=2, feat_proj_layer_norm=False, hidden_dropout=0.1, activation_dropout=0.1,
        attention_dropout=0.1, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0),
}


def preset(name: str, **overrides: Any) -> EncoderConfig:
    """A named published configuration (e.g. 'facebook/hubert-base-ls960'), optionally with fields changed."""
    if name not in PRESETS:
        raise ConfigError(f"unknown encoder preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
