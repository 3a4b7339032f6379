"""One-stage fine-tuning: distillation + task losses in one run (kdjax.finetune.one_stage)."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

import kdjax
from kdjax.distill.losses import distill_loss, teacher_targets
from kdjax.errors import ConfigError
from tests.finetune.configs import finetune
from kdjax.finetune.task import FineTune
from kdjax.models.hf import save_pretrained
from kdjax.train.loop import train_and_evaluate
from tests import hf_utils
from tests.finetune.test_finetune import BASE_CONV

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return str(hf_utils.save_tiny(tmp_path_factory.mktemp("teacher") / "teacher_hf", "hubert_base_like", **BASE_CONV))


def _config(mode, teacher, data_dir, *, weight=1.0, args=""):
    config = finetune(mode, f"runlocal,one_stage{',' + args if args else ''}")
    config.finetune.one_stage.teacher = teacher
    config.finetune.data_dir = data_dir
    config.mesh.devices = 1  # see tests/finetune/test_finetune.py
    one = config.finetune.one_stage
    one.weight = weight
    one.student.num_hidden_layers = 1
    # A deterministic student forward (no dropout, no time masking), so the step's loss can be recomputed.
    one.student.update(NO_DROPOUT)
    config.finetune.mask_time_prob = 0.0
    one.loss.target_layers = [1, 3]
    return config


def _init(task, config):
    return jax.jit(task.init)(jax.random.PRNGKey(0))


def _batches(task):
    its = task.train_data()
    return lambda: {k: next(it) for k, it in its.items()}


def test_one_stage_loss_is_task_loss_plus_weighted_distillation_loss(teacher, tiny_data_dir):
    config = _config("kws", teacher, tiny_data_dir, weight=0.7)
    task = FineTune(config)
    state = _init(task, config)
    batch = _batches(task)()
    _, metrics = jax.jit(task.train_step)(state, batch, task.teacher().params)

    # The distillation loss recomputed from scratch with kdjax.distill on the same student, heads and teacher.
    model = nnx.merge(task.train_graphdef, state.params, state.extra["stats"])
    targets = teacher_targets(kdjax.from_pretrained(teacher), batch["kws"]["input_values"],
                              batch["kws"]["attention_mask"], (1, 3))
    expected, _ = distill_loss(model.encoder, model.distill_heads, targets, batch["kws"], task.one_stage.loss_cfg)
    np.testing.assert_allclose(float(metrics["distill/loss"]), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics["kws/loss"]) + 0.7 * float(expected), rtol=1e-5)
    assert float(metrics["distill/loss"]) > 0.1  # untrained heads: far from the teacher


def test_student_starts_from_the_teachers_first_layer(teacher, tiny_data_dir):
    config = _config("kws", teacher, tiny_data_dir)
    task = FineTune(config)
    state = _init(task, config)
    ref = nnx.state(kdjax.from_pretrained(teacher), nnx.Param)
    assert task.encoder_config.num_hidden_layers == 1
    for a, b in zip(jax.tree.leaves(ref["layers"][0]), jax.tree.leaves(state.params["encoder"]["layers"][0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    conv = state.params["encoder"]["feature_encoder"]
    for a, b in zip(jax.tree.leaves(ref["feature_encoder"]), jax.tree.leaves(conv)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _two_steps(config, n=2):
    task = FineTune(config)
    state = _init(task, config)
    next_batch, step = _batches(task), jax.jit(task.train_step)
    teacher = task.teacher().params if task.teacher() is not None else None
    for _ in range(n):
        state, _ = step(state, next_batch(), teacher)
    return task, jax.tree.map(np.asarray, state.params)


def test_weight_zero_trains_exactly_like_two_stage_and_weight_one_does_not(teacher, tiny_data_dir, tmp_path):
    # Two-stage from the same student: save the one-stage run's initial student and fine-tune it without a teacher.
    config = _config("kws", teacher, tiny_data_dir, weight=0.0)
    task = FineTune(config)
    state = _init(task, config)
    student_dir = tmp_path / "student_hf"
    save_pretrained(nnx.merge(task.train_graphdef, state.params, state.extra["stats"]).encoder, student_dir)
    two_stage = finetune("kws", "runlocal,frozen=False", encoder=str(student_dir))
    two_stage.finetune.update(data_dir=tiny_data_dir, mask_time_prob=0.0)
    two_stage.mesh.devices = 1

    _, reference = _two_steps(two_stage)
    _, silent = _two_steps(config)
    config.finetune.one_stage.weight = 1.0
    _, distilled = _two_steps(config)
    for name in ("encoder", "kws"):
        for a, b in zip(jax.tree.leaves(reference[name]), jax.tree.leaves(silent[name])):
            np.testing.assert_allclose(a, b, atol=2e-6)
    moved = [not np.allclose(a, b, atol=1e-6) for a, b in zip(jax.tree.leaves(reference["encoder"]["layers"]),
                                                               jax.tree.leaves(distilled["encoder"]["layers"]))]
    assert any(moved)  # the distillation loss reaches the student's layers


def test_one_stage_run_exports_a_student_that_loads(teacher, tiny_data_dir, tmp_path):
    config = _config("kws", teacher, tiny_data_dir)
    results = train_and_evaluate(config, str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["export"]
    assert saved["one_stage"]["target_layers"] == [1, 3] and saved["encoder"] == "finetuned"
    assert 0.0 <= results["export"]["metrics"]["kws/test/accuracy"] <= 1.0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/distill/loss" in m and np.isfinite(m["train/distill/loss"]) for m in metrics)
    student = kdjax.from_pretrained(saved["encoder_hf"])
    assert student.config.num_hidden_layers == 1 and saved["model"]["path"] == saved["encoder_hf"]


def test_one_stage_config_errors_name_the_field(teacher, tiny_data_dir, tmp_path):
    config = _config("kws", teacher, tiny_data_dir)
    config.finetune.frozen = True
    with pytest.raises(ConfigError, match="one_stage .*frozen=False"):
        FineTune(config)
    config = _config("kws", str(tmp_path / "nowhere"), tiny_data_dir)
    with pytest.raises(ConfigError, match="config.finetune.one_stage.teacher=.*nowhere"):
        FineTune(config)
    config = _config("kws", teacher, tiny_data_dir)
    config.finetune.one_stage.loss.target_layers = [1, 9]
    with pytest.raises(ConfigError, match=r"config.finetune.one_stage.loss.target_layers has 9"):
        FineTune(config)
    config = _config("kws", teacher, tiny_data_dir)
    config.finetune.one_stage.student.num_hidden_layers = 5
    with pytest.raises(ConfigError, match="config.finetune.one_stage.student.num_hidden_layers=5"):
        FineTune(config)
    config = _config("kws", teacher, tiny_data_dir, weight=-0.5)
    with pytest.raises(ConfigError, match=r"config.finetune.one_stage.weight=-0.5 must be >= 0"):
        FineTune(config)
    config = _config("kws", teacher, tiny_data_dir)
    config.finetune.one_stage.student.init = "random"
    with pytest.raises(ConfigError, match=r"config.finetune.one_stage.student.init: set config.finetune.init"):
        FineTune(config)


def test_command_line_overrides_reach_the_one_stage_fields():
    from kdjax.train.config_file import parse

    config, _ = parse(["kdjax", "--config=configs/finetune_kws.py:one_stage", "--workdir=unused",
                       "--config.finetune.one_stage.teacher=runs/teacher_hf",
                       "--config.finetune.one_stage.weight=0.5",
                       "--config.finetune.one_stage.loss.target_layers=(2, 4)",
                       "--config.finetune.one_stage.student.num_hidden_layers=1"])
    one = config.finetune.one_stage
    assert (one.teacher, one.weight, tuple(one.loss.target_layers), one.student.num_hidden_layers) == \
        ("runs/teacher_hf", 0.5, (2, 4), 1)
    assert config.finetune.frozen is False  # one-stage trains the encoder unless told otherwise
