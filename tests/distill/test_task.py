"""Distillation through the training loop on a tiny teacher and the tiny synthetic corpus."""
import os

import jax
import numpy as np
import pytest

from kdjax.errors import ConfigError
from kdjax.train.loop import train_and_evaluate
from tests.hf_utils import save_tiny


def _config(arg, teacher, data_dir, name="distill_tiny"):
    """configs/<name>.py:<arg> with the tests' teacher and data_dir."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.distill.teacher = str(teacher)
    config.distill.data_dir = data_dir
    return config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    # 80-sample frames (HuBERT's are 320): 200 frames a second keep the attention, and the test, fast.
    return save_tiny(tmp_path_factory.mktemp("teacher"), "hubert_base_like", seed=3, conv_stride=(5, 4, 4))


def _eval_loss(config, params_state=None):
    """Validation loss of a fresh (untrained) task state, evaluated outside the loop."""
    from kdjax.distill.task import Distillation
    from kdjax.train import sharding

    task = Distillation(config)
    state = jax.jit(task.init)(jax.random.PRNGKey(int(config.seed)))
    mesh = sharding.make_mesh(config.get("mesh"))
    step = jax.jit(task.eval_step, static_argnames="stream")
    sums = {}
    for b in task.eval_data()["validation"]:
        for k, v in step(state, sharding.to_global(b, mesh), task.teacher().params, stream="validation").items():
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    return task.eval_metrics({"validation": sums})["validation"]["loss"]


def test_short_run_lowers_the_loss_and_exports_a_loadable_student(teacher, tiny_data_dir, tmp_path):
    import torch
    import transformers

    import kdjax

    config = _config("runlocal,steps=40", teacher, tiny_data_dir)
    config.optim.lr = 5e-3
    config.optim.warmup_frac = 0.0
    config.log_every = 8
    before = _eval_loss(config)
    results = train_and_evaluate(config, str(tmp_path))
    assert results["final_step"] == 40
    after = results["eval"]["validation/loss"]
    print(f"validation loss: {before:.4f} at step 0, {after:.4f} at step 40")
    assert after < 0.7 * before, (before, after)
    assert results["export"]["distill"]["student_params"] < results["export"]["distill"]["teacher_params"]
    assert results["export"]["encoder_hf"] == str(tmp_path / "student_hf")
    assert set(results["eval"]) >= {"validation/loss", "validation/l1/l1", "validation/cos/l3"}
    assert set(results["train"]) >= {"loss", "l1/l1", "l1/l2", "l1/l3", "cos/l1", "grad_norm", "lr"}
    student_dir = tmp_path / "student_hf"
    model, info = transformers.HubertModel.from_pretrained(student_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.num_hidden_layers == 2 and not model.config.feat_proj_layer_norm
    ours = kdjax.from_pretrained(student_dir)
    x = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).last_hidden_state.numpy()
    assert np.abs(np.asarray(ours(x).last_hidden_state) - ref).max() < 1e-3


def test_feature_grad_mult_scales_only_the_conv_stack():
    import ml_collections

    from kdjax.distill.task import conv_groups
    from kdjax.train import optim

    grads = {"student": {"feature_encoder": {"w": np.ones(2)}, "layers": {"w": np.ones(2)}},
             "heads": {"feature_encoder": {"w": np.ones(2)}}}
    cfg = ml_collections.ConfigDict(optim.default_config())
    cfg.groups = conv_groups(0.1)
    opt = optim.make_optimizer(cfg, 10, param_labels=optim.encoder_labels, labels=optim.ENCODER_GROUPS)
    out = opt.prepare(grads)
    np.testing.assert_allclose(out["student"]["feature_encoder"]["w"], 0.1)
    np.testing.assert_allclose(out["student"]["layers"]["w"], 1.0)
    np.testing.assert_allclose(out["heads"]["feature_encoder"]["w"], 1.0)


def test_unknown_distill_field_is_named(teacher, tiny_data_dir, tmp_path):
    from kdjax.distill.task import Distillation

    config = _config("runlocal", teacher, tiny_data_dir)
    config.distill.teachr_dtype = "bfloat16"
    with pytest.raises(ConfigError, match=r"config\.distill\.teachr_dtype.*teacher_dtype"):
        train_and_evaluate(config, str(tmp_path))
    config = _config("runlocal", teacher, tiny_data_dir)
    config.distill.loss.target_layers = [1, 2, 4]  # the tiny teacher has 3 layers
    with pytest.raises(ConfigError, match=r"config\.distill\.loss\.target_layers has 4"):
        Distillation(config)


@pytest.mark.parametrize("variant", ["hint_bf16", "frozen_conv"])
def test_step_variants_run_and_leave_the_teacher_alone(variant, teacher, tiny_data_dir):
    """Hint mode with a bfloat16 teacher, and feature_grad_mult=0: one jitted step each; the teacher never changes."""
    from kdjax.distill.task import Distillation
    from tests.hf_utils import batch

    config = _config("runlocal,hint" if variant == "hint_bf16" else "runlocal", teacher, tiny_data_dir)
    if variant == "hint_bf16":
        config.distill.teacher_dtype = "bfloat16"
    if variant == "frozen_conv":
        config.distill.feature_grad_mult = 0.0
    task = Distillation(config)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    x, mask = batch(lengths=(1600, 1200))
    teacher_params = task.teacher().params
    before = [np.array(a) for a in jax.tree.leaves(teacher_params)]
    new, metrics = jax.jit(task.train_step)(state, {"input_values": x, "attention_mask": mask}, teacher_params)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    assert new.extra is None  # the teacher is an argument of the step, never part of the state
    for a, b in zip(before, jax.tree.leaves(teacher_params)):
        np.testing.assert_array_equal(a, b)
    conv_before = jax.tree.leaves(state.params["student"]["feature_encoder"])
    conv_after = jax.tree.leaves(new.params["student"]["feature_encoder"])
    changed = any(not np.array_equal(a, b) for a, b in zip(conv_before, conv_after))
    assert changed == (variant != "frozen_conv")
