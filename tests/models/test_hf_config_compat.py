"""Checkpoints people have: kdjax accepts what transformers accepts for the encoder, with transformers' defaults."""
import dataclasses
import json
import logging

import numpy as np
import pytest
import torch

import kdjax
from kdjax.errors import CheckpointError, ConfigError
from kdjax.models import activations
from kdjax.models import config as config_module
from kdjax.models.config import _KDJAX_ONLY, EncoderConfig, ignored_hf_settings
from tests import hf_utils

_CONFIG_CLASSES = {"hubert": "HubertConfig", "wav2vec2": "Wav2Vec2Config", "wavlm": "WavLMConfig"}


def _architecture_fields(model_type):
    skip = set(_KDJAX_ONLY) | ({"feat_proj_layer_norm"} if model_type != "hubert" else set()) \
        | ({"num_buckets", "max_bucket_distance"} if model_type != "wavlm" else set())
    return [f.name for f in dataclasses.fields(EncoderConfig) if f.name not in skip]


@pytest.mark.parametrize("model_type", sorted(_CONFIG_CLASSES))
def test_absent_fields_get_transformers_defaults(model_type):
    import transformers

    reference = getattr(transformers, _CONFIG_CLASSES[model_type])().to_dict()
    ours = EncoderConfig.from_hf({"model_type": model_type})
    for name in _architecture_fields(model_type):
        if name not in reference:  # e.g. WavLMConfig has no mask_feature_min_masks (transformers never reads it)
            continue
        expected = tuple(reference[name]) if isinstance(reference[name], list) else reference[name]
        assert getattr(ours, name) == expected, f"{model_type}.{name}: kdjax {getattr(ours, name)!r}, HF {expected!r}"
    assert ours.feat_proj_dropout == 0.0  # the reported case: kdjax used 0.1 where transformers uses 0.0


def test_activations_compute_what_transformers_computes():
    from transformers.activations import ACT2CLS, ACT2FN

    assert set(ACT2CLS) - set(activations.ACTIVATIONS) == {"prelu", "xielu"}  # the two with learned parameters
    assert set(activations.ACTIVATIONS) == set(config_module.ACTIVATIONS)  # the names configs accept
    x = np.linspace(-12, 12, 2001, dtype=np.float32)
    for name, fn in activations.ACTIVATIONS.items():
        expected = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(fn(x)), expected, atol=2e-6, rtol=1e-5, err_msg=name)
    # the reported case; its checkpoint-level parity: tests/models/test_wavlm_parity.py variant postln_odd_buckets
    assert EncoderConfig.from_hf({"model_type": "hubert", "hidden_act": "gelu_python"}).hidden_act == "gelu_python"


def test_weighted_layer_sum_classifier_loads_with_one_warning(tmp_path, caplog):
    # How SUPERB ports are saved: HubertForSequenceClassification with use_weighted_layer_sum=True (a head parameter)
    fields = {**hf_utils.TINY, **hf_utils.VARIANTS["hubert_base_like"], "use_weighted_layer_sum": True,
              "num_labels": 3, "classifier_proj_size": 8}
    hf_utils.hf_model(hf_utils.hf_config(**fields), model_class="HubertForSequenceClassification") \
        .save_pretrained(tmp_path / "cls")
    with caplog.at_level(logging.INFO, logger="kdjax.models.hf"):
        kdjax.from_pretrained(tmp_path / "cls")
        kdjax.from_pretrained(tmp_path / "cls")  # said once, not on every load
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    for expected in ("use_weighted_layer_sum=True", "layer_weights", "classifier.weight", "projector.weight"):
        assert expected in warnings[0]


def test_an_override_reaches_a_config_with_head_only_flags(tmp_path):
    folder = hf_utils.save_tiny(tmp_path / "m", "hubert_base_like")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_weighted_layer_sum": True}))
    assert kdjax.from_pretrained(folder, hidden_dropout=0.0).config.hidden_dropout == 0.0


@pytest.mark.parametrize("model_type", ["wav2vec2", "wavlm"])
def test_conv_pos_batch_norm_is_ignored_where_transformers_ignores_it(model_type):
    cfg = {"model_type": model_type, "conv_pos_batch_norm": True}
    assert EncoderConfig.from_hf(cfg).model_type == model_type
    assert any(s.startswith("conv_pos_batch_norm=True") and "does not read it" in s for s in ignored_hf_settings(cfg))


def test_conv_pos_batch_norm_is_refused_for_hubert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert", "conv_pos_batch_norm": True}))
    with pytest.raises(CheckpointError, match=r"config\.json: conv_pos_batch_norm=True is not supported.*hubert"):
        kdjax.from_pretrained(tmp_path)


def test_adapter_attn_dim_matters_only_with_stable_layer_norm():
    assert EncoderConfig.from_hf({"model_type": "wav2vec2", "adapter_attn_dim": 16}).model_type == "wav2vec2"
    assert ignored_hf_settings({"model_type": "wav2vec2", "adapter_attn_dim": 16})
    with pytest.raises(ConfigError, match="adapter_attn_dim=16 is not supported"):
        EncoderConfig.from_hf({"model_type": "wav2vec2", "adapter_attn_dim": 16, "do_stable_layer_norm": True})


def test_ignored_keys_are_a_warning_not_info(tmp_path, caplog):
    fields = {**hf_utils.TINY, **hf_utils.VARIANTS["wav2vec2_group_postln"], "vocab_size": 12}
    hf_utils.hf_model(hf_utils.hf_config(**fields), model_class="Wav2Vec2ForCTC").save_pretrained(tmp_path / "ctc")
    with caplog.at_level(logging.WARNING, logger="kdjax.models.hf"):
        kdjax.from_pretrained(tmp_path / "ctc")
    assert any("lm_head.weight" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
