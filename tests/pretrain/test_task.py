"""Pre-training through the training loop: a short run on the tiny corpus exports a teacher transformers loads."""
import json
import os

import jax
import numpy as np
import pytest
import torch

from kdjax.train.loop import train_and_evaluate


def _load_config(arg):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain_tiny_hubert.py")
    spec = importlib.util.spec_from_file_location("pretrain_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def iteration1(tiny_data_dir, tmp_path_factory):
    """(workdir, results) of a short iteration-1 run on the tiny corpus."""
    workdir = tmp_path_factory.mktemp("iteration1")
    config = _load_config("runlocal")
    config.pretrain.data_dir = tiny_data_dir
    return workdir, train_and_evaluate(config, str(workdir))


def test_short_pretraining_run_exports_a_loadable_teacher(iteration1):
    import transformers

    import kdjax

    tmp_path, results = iteration1
    config = _load_config("runlocal")
    assert results["final_step"] == config.total_steps
    assert np.isfinite(results["eval"]["validation/loss"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["eval"]["validation/loss"] == results["eval"]["validation/loss"]
    teacher = tmp_path / "teacher_hf"
    model, info = transformers.HubertModel.from_pretrained(teacher, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours = kdjax.from_pretrained(teacher)
    x = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).last_hidden_state.numpy()
    assert np.abs(np.asarray(ours(x).last_hidden_state) - ref).max() < 1e-3
    assert (tmp_path / "kmeans.npz").exists()


def test_iteration2_clusters_the_earlier_models_layer_and_warm_starts_from_it(iteration1, tiny_data_dir, tmp_path):
    from kdjax.errors import ConfigError
    from kdjax.models.hf import load_state
    from kdjax.pretrain.task import HubertPretraining

    earlier = str(iteration1[0] / "teacher_hf")
    config = _load_config(f"iteration2={earlier},runlocal,steps=2")
    config.pretrain.update(data_dir=tiny_data_dir, target_layer=1)
    assert config.pretrain.target_encoder == config.pretrain.init_encoder == earlier
    task = HubertPretraining(config)
    audio = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32)
    feats = task._features(audio, np.ones_like(audio, dtype=np.int32))
    assert feats.shape[-1] == config.model.hidden_size  # hidden states, not the 39 MFCC coefficients
    expected = task.target.targets(task.target.params, audio, np.ones_like(audio, dtype=np.int32), (1,))[0]
    np.testing.assert_allclose(np.asarray(feats), np.asarray(expected), atol=1e-6)
    assert task.kmeans.centroids.shape == (config.pretrain.num_clusters, config.model.hidden_size)
    state = task.init(jax.random.key(1))
    _, _, loaded = load_state(earlier)
    for a, b in zip(jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), b)
    results = train_and_evaluate(config, str(tmp_path))
    assert results["final_step"] == 2 and np.isfinite(results["eval"]["validation/loss"])

    config.model.num_hidden_layers = 3
    with pytest.raises(ConfigError, match=r"init_encoder=.*architecture differs from config.model in \['num_hidden_layers'\]"):
        HubertPretraining(config)
    config.model.num_hidden_layers = 2
    config.pretrain.target_layer = 5
    with pytest.raises(ConfigError, match=r"target_layer=5: expected 0..2"):
        HubertPretraining(config)
