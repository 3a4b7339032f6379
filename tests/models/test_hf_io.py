"""Two-way conversion with Hugging Face and the errors users see for bad checkpoints."""
import json

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import kdjax
from kdjax.errors import CheckpointError
from kdjax.models import hf
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import init_encoder
from tests import hf_utils

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.mark.parametrize("variant", ["hubert_no_proj_ln", "wav2vec2_layer_stableln_bias"])
def test_hf_to_kdjax_to_hf_is_identical(tmp_path, variant):
    src = hf_utils.save_tiny(tmp_path / "src", variant)
    kdjax.save_pretrained(kdjax.from_pretrained(src), tmp_path / "dst")
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "dst" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2"])
def test_kdjax_model_loads_in_transformers_with_same_outputs(tmp_path, model_type):
    import transformers

    config = EncoderConfig.from_hf({**hf_utils.TINY, "model_type": model_type, "conv_dim": [32, 32, 32]})
    model = init_encoder(config, seed=3)
    kdjax.save_pretrained(model, tmp_path / "out")
    cls = transformers.HubertModel if model_type == "hubert" else transformers.Wav2Vec2Model
    loaded, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    x, mask = hf_utils.batch(seed=1)
    with torch.no_grad():
        ref = loaded.eval()(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long()).last_hidden_state
    out = model(x, mask)
    valid = np.asarray(out.frame_mask)
    assert np.abs(np.asarray(out.last_hidden_state) - ref.numpy())[valid].max() <= 1e-4


def test_save_overwrites_atomically(tmp_path):
    model = init_encoder(EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "hubert"}))
    kdjax.save_pretrained(model, tmp_path)
    kdjax.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_folder_without_config_names_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tmp_path}.*no config\.json"):
        kdjax.from_pretrained(tmp_path)


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type='whisper' is not supported.*hubert"):
        kdjax.from_pretrained(tmp_path)


def test_unsupported_architecture_flag_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "add_adapter": True}))
    with pytest.raises(CheckpointError, match=r"add_adapter=True is not supported"):
        kdjax.from_pretrained(tmp_path)


def test_wrong_shape_and_missing_and_unmapped_keys_are_all_listed(tmp_path):
    folder = hf_utils.save_tiny(tmp_path / "m", "hubert_base_like")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["encoder.layers.0.attention.q_proj.weight"] = np.zeros((32, 31), np.float32)
    del tensors["encoder.layers.1.final_layer_norm.bias"]
    tensors["encoder.layers.0.attention.rope.weight"] = np.zeros((3,), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        kdjax.from_pretrained(folder)
    message = str(e.value)
    assert "3 problem(s)" in message
    assert "shape mismatch for 'encoder.layers.0.attention.q_proj.weight': checkpoint has (32, 31), " \
           "config expects (32, 32)" in message
    assert "missing key 'encoder.layers.1.final_layer_norm.bias'" in message
    assert "unmapped key 'encoder.layers.0.attention.rope.weight'" in message


def test_folder_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**hf_utils.TINY, "model_type": "hubert"}))
    with pytest.raises(CheckpointError, match=r"no weights found: expected one of model\.safetensors"):
        kdjax.from_pretrained(tmp_path)


def test_uncached_repo_id_says_kdjax_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"facebook/hubert-base-ls960: not a local folder and not in the local"):
        kdjax.from_pretrained("facebook/hubert-base-ls960")


def test_pytorch_bin_checkpoint_loads_when_torch_is_installed(tmp_path):
    folder = hf_utils.save_tiny(tmp_path / "m", "hubert_base_like")
    tensors = load_file(str(folder / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    reference = hf.to_hf_tensors(kdjax.from_pretrained(folder))
    for key, value in tensors.items():
        np.testing.assert_array_equal(reference[key], value)


def test_key_table_round_trips_every_parameter():
    model = init_encoder(EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "wav2vec2",
                                               "feat_extract_norm": "layer", "conv_bias": True}))
    for path in hf._params(model):
        key, _ = hf.kdjax_to_hf_key(path)
        assert hf.hf_to_kdjax_key(key)[0] == path


def test_float16_checkpoint_halves_the_file_and_loads_back(tmp_path):
    model = init_encoder(EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "hubert"}), seed=1)
    kdjax.save_pretrained(model, tmp_path / "f32")
    kdjax.save_pretrained(model, tmp_path / "f16", dtype="float16")
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("f16") < 0.55 * size("f32")
    back = hf.to_hf_tensors(kdjax.from_pretrained(tmp_path / "f16"))
    for key, value in hf.to_hf_tensors(model).items():
        np.testing.assert_allclose(back[key], value, rtol=1e-3, atol=1e-4)
