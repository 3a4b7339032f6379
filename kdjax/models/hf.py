"""Hugging Face <-> kdjax weights: one key-mapping table, `from_pretrained` and `save_pretrained`.

Reading uses safetensors' NumPy API, so kdjax loads checkpoints without torch. Every problem found while mapping a
checkpoint (unmapped key, missing key, wrong shape) is collected and raised together in one CheckpointError.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.errors import CheckpointError, ConfigError
from kdjax.models.config import EncoderConfig, ignored_hf_settings
from kdjax.models.encoder import Encoder

log = logging.getLogger(__name__)

# Named transforms between PyTorch layouts and kdjax layouts, each with its inverse.
_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "none": (lambda a: a, lambda a: a),
    "linear": (lambda a: a.T, lambda a: a.T),  # torch [out, in] <-> [in, out]
    "conv": (lambda a: a.transpose(2, 1, 0), lambda a: a.transpose(2, 1, 0)),  # torch [out, in, k] <-> [k, in, out]
    "wn_g": (lambda a: a.reshape(-1), lambda a: a.reshape(1, 1, -1)),  # weight-norm gain, torch [1, 1, k] <-> [k]
    "heads": (lambda a: a.reshape(-1), lambda a: a.reshape(1, -1, 1, 1)),  # WavLM gate constant [1, H, 1, 1] <-> [H]
}

# (HF names, kdjax path, transform); "{i}" is a layer index. The first HF name is the one written; the others are
# older spellings that are read too (weight norm before torch's parametrizations: weight_g / weight_v).
_TABLE: list[tuple[tuple[str, ...], str, str]] = [
    (("feature_extractor.conv_layers.{i}.conv.weight",), "feature_encoder.conv_layers.{i}.conv.kernel", "conv"),
    (("feature_extractor.conv_layers.{i}.conv.bias",), "feature_encoder.conv_layers.{i}.conv.bias", "none"),
    (("feature_extractor.conv_layers.{i}.layer_norm.weight",), "feature_encoder.conv_layers.{i}.norm.scale", "none"),
    (("feature_extractor.conv_layers.{i}.layer_norm.bias",), "feature_encoder.conv_layers.{i}.norm.bias", "none"),
    (("feature_projection.layer_norm.weight",), "feature_projection.norm.scale", "none"),
    (("feature_projection.layer_norm.bias",), "feature_projection.norm.bias", "none"),
    (("feature_projection.projection.weight",), "feature_projection.dense.kernel", "linear"),
    (("feature_projection.projection.bias",), "feature_projection.dense.bias", "none"),
    (("masked_spec_embed",), "masked_spec_embed", "none"),
    (("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv_embed.conv.weight_g"),
     "pos_conv.weight_g", "wn_g"),
    (("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv_embed.conv.weight_v"),
     "pos_conv.weight_v", "conv"),
    (("encoder.pos_conv_embed.conv.bias",), "pos_conv.bias", "none"),
    (("encoder.layer_norm.weight",), "encoder_norm.scale", "none"),
    (("encoder.layer_norm.bias",), "encoder_norm.bias", "none"),
    # WavLM: the relative position bias embedding (layer 0 only) and every layer's gate
    (("encoder.layers.0.attention.rel_attn_embed.weight",), "rel_pos_bias.embedding", "none"),
    (("encoder.layers.{i}.attention.gru_rel_pos_linear.weight",), "layers.{i}.attention.gate.linear.kernel", "linear"),
    (("encoder.layers.{i}.attention.gru_rel_pos_linear.bias",), "layers.{i}.attention.gate.linear.bias", "none"),
    (("encoder.layers.{i}.attention.gru_rel_pos_const",), "layers.{i}.attention.gate.const", "heads"),
] + [
    ((f"encoder.layers.{{i}}.{hf}.{hf_leaf}",), f"layers.{{i}}.{ours}.{leaf}", transform)
    for hf, ours, is_norm in [
        ("attention.q_proj", "attention.query", False), ("attention.k_proj", "attention.key", False),
        ("attention.v_proj", "attention.value", False), ("attention.out_proj", "attention.out", False),
        ("feed_forward.intermediate_dense", "feed_forward.intermediate", False),
        ("feed_forward.output_dense", "feed_forward.output", False),
        ("layer_norm", "attention_norm", True), ("final_layer_norm", "output_norm", True)]
    for hf_leaf, leaf, transform in [("weight", "scale" if is_norm else "kernel", "none" if is_norm else "linear"),
                                     ("bias", "bias", "none")]
]


def _regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


_HF_TO_KDJAX = [(_regex(name), ours, transform) for names, ours, transform in _TABLE for name in names]
_KDJAX_TO_HF = [(_regex(ours), names[0], transform) for names, ours, transform in _TABLE]
_BASE_PREFIXES = ("hubert.", "wav2vec2.", "wavlm.")
_OPTIONAL = {"masked_spec_embed"}  # only used for training-time masking; HF also re-initialises it when absent
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _lookup(table, key: str) -> tuple[str, str] | None:
    for regex, template, transform in table:
        match = regex.match(key)
        if match:
            return template.replace("{i}", match.groupdict().get("i") or ""), transform
    return None


def hf_to_kdjax_key(hf_key: str) -> tuple[str, str] | None:
    """(kdjax path, transform name) for a bare HF encoder key, or None if the table has no entry."""
    return _lookup(_HF_TO_KDJAX, hf_key)


def kdjax_to_hf_key(path: str) -> tuple[str, str]:
    """(HF key, transform name) for a kdjax parameter path; raises CheckpointError when unmapped."""
    found = _lookup(_KDJAX_TO_HF, path)
    if found is None:
        raise CheckpointError(f"kdjax parameter {path!r} has no Hugging Face name in the mapping table")
    return found


def _params(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Flat {dotted path: Param variable} of a module."""
    out = {}
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            out[".".join(str(p) for p in path)] = variable
    return out


# ---- reading -----------------------------------------------------------------------------------------------------
def _resolve(path_or_repo_id: str | os.PathLike) -> Path:
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint folder (config.json + model.safetensors), got a file")
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise CheckpointError(f"{repo_id}: no such folder, and not a Hugging Face repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # noqa: BLE001 -- huggingface_hub raises several kinds for "not cached"
        raise CheckpointError(
            f"{repo_id}: not a local folder and not in the local Hugging Face cache (kdjax never downloads). "
            f"Download it where there is network (`huggingface-cli download {repo_id}`) and copy the cache or the "
            f"folder here, then pass the folder path. ({type(e).__name__})") from None


def _read_tensors(folder: Path) -> dict[str, np.ndarray]:
    single, index, torch_bin = (folder / name for name in _WEIGHT_FILES)
    if single.exists():
        from safetensors.numpy import load_file

        return load_file(str(single))
    if index.exists():
        from safetensors.numpy import load_file

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(str(folder / shard)))
        return tensors
    if torch_bin.exists():
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{torch_bin}: PyTorch pickles need torch, which kdjax does not require. Install torch "
                f"(`pip install torch`) or convert the checkpoint to model.safetensors.") from None
        state = torch.load(str(torch_bin), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    raise CheckpointError(f"{folder}: no weights found: expected one of {', '.join(_WEIGHT_FILES)}")


def _read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
    config_file = Path(folder) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{folder}: no config.json: expected a Hugging Face checkpoint folder "
                              f"(config.json + model.safetensors)")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(hf_config).__name__}")
    return hf_config


def _encoder_config(hf_config: dict[str, Any], folder: str | os.PathLike, overrides: dict[str, Any]) -> EncoderConfig:
    try:
        return EncoderConfig.from_hf(hf_config, source=str(Path(folder) / "config.json"), **overrides)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def read_config(folder: str | os.PathLike, **overrides: Any) -> EncoderConfig:
    """The EncoderConfig of an HF checkpoint folder (its config.json), with kdjax fields overridden."""
    return _encoder_config(_read_hf_config(folder), folder, overrides)


def load_weights(model: Encoder, tensors: dict[str, np.ndarray], *, source: str = "checkpoint") -> list[str]:
    """Copy HF tensors into `model` in place; returns the ignored (non-encoder) keys. Raises on any mismatch."""
    prefix = next((p for p in _BASE_PREFIXES if any(k.startswith(p) for k in tensors)), "")
    params = _params(model)
    problems, ignored, seen = [], [], set()
    for key, array in tensors.items():
        if prefix and not key.startswith(prefix):
            ignored.append(key)  # a task head (lm_head, classifier, projector, quantizer, ...)
            continue
        bare = key[len(prefix):]
        mapped = hf_to_kdjax_key(bare)
        if mapped is None:
            problems.append(f"unmapped key {key!r} (shape {tuple(array.shape)})")
            continue
        path, transform = mapped
        if path not in params:
            if path in _OPTIONAL:
                ignored.append(key)
            else:
                problems.append(f"unexpected key {key!r}: the configured model has no {path}")
            continue
        seen.add(path)
        value = _TRANSFORMS[transform][0](np.asarray(array, dtype=np.float32))
        expected = params[path].get_value().shape
        if value.shape != expected:
            torch_shape = _TRANSFORMS[transform][1](np.empty(expected)).shape
            problems.append(f"shape mismatch for {key!r}: checkpoint has {tuple(array.shape)}, "
                            f"config expects {tuple(torch_shape)}")
            continue
        params[path].set_value(jnp.asarray(value))
    for path in sorted(set(params) - seen - _OPTIONAL):
        problems.append(f"missing key {prefix}{kdjax_to_hf_key(path)[0]!r} (for {path})")
    if problems:
        raise CheckpointError(f"{source}: {len(problems)} problem(s) mapping the checkpoint onto the encoder:\n  "
                              + "\n  ".join(problems))
    return ignored


_WARNED: set[str] = set()
_MAX_LISTED_KEYS = 12


def _warn_ignored(folder: Path, settings: list[str], keys: list[str]) -> None:
    """One WARNING per checkpoint folder and process naming what loading ignored (head keys, head-only settings)."""
    parts = []
    if settings:
        parts.append(f"config setting(s) {'; '.join(settings)}")
    if keys:
        listed = sorted(keys)[:_MAX_LISTED_KEYS]
        more = f", ... ({len(keys) - len(listed)} more)" if len(keys) > len(listed) else ""
        parts.append(f"{len(keys)} non-encoder weight(s) {', '.join(listed)}{more}")
    message = f"{folder}: loaded the encoder only; ignored " + " and ".join(parts)
    if parts and message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def from_pretrained(path_or_repo_id: str | os.PathLike, **config_overrides: Any) -> Encoder:
    """Load a wav2vec 2.0 / HuBERT / WavLM encoder from an HF folder or a locally cached repo id (no downloads).

    `config_overrides` set kdjax runtime fields (e.g. dtype="bfloat16", remat=True) or architecture fields such as
    dropout rates. What the checkpoint holds beyond the encoder (a task head, head-only settings such as
    `use_weighted_layer_sum`) is ignored, and said once at WARNING level.
    """
    folder = _resolve(path_or_repo_id)
    hf_config = _read_hf_config(folder)
    model = Encoder(_encoder_config(hf_config, folder, config_overrides), rngs=nnx.Rngs(0))
    ignored = load_weights(model, _read_tensors(folder), source=str(folder))
    _warn_ignored(folder, ignored_hf_settings(hf_config), ignored)
    return model


# ---- writing -----------------------------------------------------------------------------------------------------
def to_hf_tensors(model: Encoder, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The model's parameters under their HF names and layouts (float32, or float16 for smaller files)."""
    out = {}
    for path, variable in _params(model).items():
        key, transform = kdjax_to_hf_key(path)
        value = _TRANSFORMS[transform][1](np.asarray(variable.get_value(), dtype=np.float32))
        out[key] = np.ascontiguousarray(value.astype(dtype))
    return out


def save_pretrained(model: Encoder, path: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write config.json + model.safetensors that transformers' HubertModel / Wav2Vec2Model / WavLMModel load unchanged.

    Files are written to a temporary folder and moved into place, so a crash never leaves a half-written checkpoint.
    `dtype="float16"` halves the file (transformers and kdjax load it back as float32).
    """
    if dtype not in ("float32", "float16"):
        raise CheckpointError(f"save_pretrained dtype={dtype!r}: expected 'float32' or 'float16'")
    from safetensors.numpy import save_file

    if not isinstance(model, Encoder):
        raise CheckpointError(f"save_pretrained expects a kdjax Encoder, got {type(model).__name__}")
    target = Path(path).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kdjax-save-", dir=target))
    try:
        (staging / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2, sort_keys=True) + "\n")
        save_file(to_hf_tensors(model, dtype), str(staging / "model.safetensors"), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        for name in ("model.safetensors", "config.json"):
            os.chmod(staging / name, 0o666 & ~umask)  # the staging folder's files are private; the result is not
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_state(path_or_repo_id: str | os.PathLike, **config_overrides: Any) -> tuple[EncoderConfig, Any, Any]:
    """(config, graphdef, params) of a checkpoint without building random weights first (shape-only module, then
    the checkpoint's tensors assigned); params are host numpy arrays, ready to be placed once on the devices."""
    folder = _resolve(path_or_repo_id)
    config = read_config(folder, **config_overrides)
    model = nnx.eval_shape(lambda: Encoder(config, rngs=nnx.Rngs(0)))
    ignored = load_weights(model, _read_tensors(folder), source=str(folder))
    if ignored:
        log.info("%s: ignored %d non-encoder key(s): %s", folder, len(ignored), ", ".join(sorted(ignored)))
    for variable in _params(model).values():  # optional tensors the checkpoint lacks (training-time masking only)
        value = variable.get_value()
        if isinstance(value, jax.ShapeDtypeStruct):
            variable.set_value(np.zeros(value.shape, value.dtype))
    graphdef, params = nnx.split(model, nnx.Param)
    return config, graphdef, jax.tree.map(np.asarray, params)
