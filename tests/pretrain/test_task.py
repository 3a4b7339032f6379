"""Pre-training through the training loop: a short run on the tiny corpus exports a teacher transformers loads."""
import json
import os

import numpy as np
import torch

from kdjax.train.loop import train_and_evaluate


def _load_config(arg):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain_tiny_hubert.py")
    spec = importlib.util.spec_from_file_location("pretrain_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_short_pretraining_run_exports_a_loadable_teacher(tiny_data_dir, tmp_path):
    import transformers

    import kdjax

    config = _load_config("runlocal")
    config.pretrain.data_dir = tiny_data_dir
    results = train_and_evaluate(config, str(tmp_path))
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
