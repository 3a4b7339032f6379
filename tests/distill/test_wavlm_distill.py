"""Distillation from a WavLM teacher: configs/distill_wavlm_base_plus.py through the training loop on a tiny teacher."""
import numpy as np
import pytest
from flax import nnx

import kdjax
from kdjax.distill import student as student_lib
from kdjax.errors import ConfigError
from kdjax.train.loop import train_and_evaluate
from tests.distill.test_task import _config as task_config
from tests.models import wavlm_utils


def _config(arg, teacher, data_dir):
    return task_config(arg, teacher, data_dir, name="distill_wavlm_base_plus")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    # 80-sample frames (WavLM's are 320): 200 frames a second keep the attention, and the test, fast.
    return wavlm_utils.save_tiny_wavlm(tmp_path_factory.mktemp("wavlm_teacher"), "base_like", seed=3,
                                       conv_stride=(5, 4, 4), num_buckets=32, max_bucket_distance=64)


def test_recipe_shows_distilhubert_with_a_wavlm_student():
    config = _config(None, "unused", None)
    recipe = (config.total_steps, config.batch_size, config.optim.lr, config.optim.warmup_frac)
    assert recipe == (200_000, 24, 2e-4, 0.07)
    assert config.distill.student.model_type == "wavlm" and config.distill.student.num_hidden_layers == 2
    assert tuple(config.distill.loss.target_layers) == (4, 8, 12)


def test_a_few_steps_export_a_student_that_loads_in_transformers(teacher, tiny_data_dir, tmp_path):
    import torch
    import transformers

    config = _config("runlocal,steps=3", teacher, tiny_data_dir)
    results = train_and_evaluate(config, str(tmp_path))
    assert results["final_step"] == 3 and np.isfinite(results["train"]["loss"])
    model, info = transformers.WavLMModel.from_pretrained(tmp_path / "student_hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.num_hidden_layers == 2 and model.config.num_buckets == 32
    ours = kdjax.from_pretrained(tmp_path / "student_hf")
    x = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).last_hidden_state.numpy()
    assert np.abs(np.asarray(ours(x).last_hidden_state) - ref).max() < 1e-3


def test_teacher_init_copies_the_relative_position_bias_and_gates(teacher):
    teacher_model = kdjax.from_pretrained(teacher)
    settings = dict(model_type="wavlm", feat_proj_layer_norm=True)
    config = student_lib.student_config(teacher_model.config, settings)
    student = student_lib.build_student(config, teacher_model, "teacher", nnx.Rngs(1))
    np.testing.assert_array_equal(student.rel_pos_bias.embedding.get_value(),
                                  teacher_model.rel_pos_bias.embedding.get_value())
    np.testing.assert_array_equal(student.layers[1].attention.gate.linear.kernel.get_value(),
                                  teacher_model.layers[1].attention.gate.linear.kernel.get_value())
    with pytest.raises(ConfigError, match=r"student\.model_type='hubert' with a 'wavlm' teacher.*init='random'"):
        student_lib.student_config(teacher_model.config, {"model_type": "hubert"}, where="student")
