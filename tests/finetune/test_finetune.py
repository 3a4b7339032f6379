"""Fine-tuning: frozen vs fine-tuned encoders, multi-task steps, test metrics in results.json, resume, bad configs."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.eval.report import build_report
from tests.finetune.configs import finetune
from kdjax.finetune.task import FineTune
from kdjax.train.loop import train_and_evaluate
from tests import hf_utils

BASE_CONV = dict(conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return str(hf_utils.save_tiny(tmp_path_factory.mktemp("enc") / "teacher_hf", "hubert_base_like", **BASE_CONV))


def _config(mode, args, encoder, data_dir, **fields):
    config = finetune(mode, f"runlocal,{args}" if args else "runlocal", encoder=encoder, **fields)
    config.finetune.data_dir = data_dir
    # One device: XLA's CPU compile of these steps partitioned over 8 forced devices takes minutes; sharded
    # training itself is tested in tests/train.
    config.mesh.devices = 1
    return config


def _steps(task, config, n):
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    before = jax.tree.map(np.asarray, state.params)
    its = task.train_data()
    step = jax.jit(task.train_step)
    for _ in range(n):
        state, metrics = step(state, {k: next(it) for k, it in its.items()})
    assert np.isfinite(float(metrics["loss"]))
    return before, jax.tree.map(np.asarray, state.params)


def _changed(before, after):
    return [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]


def test_frozen_encoder_stays_bit_identical_while_heads_train(tiny_encoder, tiny_data_dir):
    config = _config("kws", "frozen=True", tiny_encoder, tiny_data_dir)
    before, after = _steps(FineTune(config), config, 3)
    assert not any(_changed(before["encoder"], after["encoder"]))
    assert all(_changed(before["kws"]["head"], after["kws"]["head"]))
    assert _changed(before["kws"]["featurizer"], after["kws"]["featurizer"]) == [True]


def test_multitask_step_changes_both_heads_and_the_shared_encoder(tiny_encoder, tiny_data_dir):
    config = _config("multitask", "frozen=False", tiny_encoder, tiny_data_dir)
    before, after = _steps(FineTune(config), config, 2)
    assert any(_changed(before["kws"], after["kws"])) and any(_changed(before["sv"], after["sv"]))
    assert any(_changed(before["encoder"]["layers"], after["encoder"]["layers"]))
    # the conv feature encoder stays frozen by default when fine-tuning
    assert not any(_changed(before["encoder"]["feature_encoder"], after["encoder"]["feature_encoder"]))


def test_each_head_is_its_own_optimizer_group(tiny_encoder, tiny_data_dir):
    """kws_head / sv_head label each downstream model (head and featurizer); a group's settings reach only its head."""
    from kdjax.finetune.task import finetune_labels

    config = _config("multitask", "frozen=True", tiny_encoder, tiny_data_dir)
    config.optim.groups = {"kws_head": {"frozen": True}}
    task = FineTune(config)
    labels = finetune_labels(jax.eval_shape(task.init, jax.random.PRNGKey(0)).params)
    assert set(jax.tree.leaves(labels["kws"])) == {"kws_head"} and set(jax.tree.leaves(labels["sv"])) == {"sv_head"}
    assert set(jax.tree.leaves(labels["encoder"])) == {"encoder", "feature_encoder"}
    before, after = _steps(task, config, 2)
    assert not any(_changed(before["kws"], after["kws"]))
    assert all(_changed(before["sv"]["head"], after["sv"]["head"]))


@pytest.mark.parametrize("saved_prob", [0.0, 0.65])  # a distilled student's config; a pre-training config
def test_finetuned_encoders_mask_time_as_configured_whatever_the_checkpoint_says(tmp_path, tiny_data_dir, saved_prob):
    encoder = str(hf_utils.save_tiny(tmp_path / "enc", "hubert_base_like", mask_time_prob=saved_prob, **BASE_CONV))
    config = _config("kws", "frozen=False", encoder, tiny_data_dir)
    config.finetune.encoder_overrides = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                             feat_proj_dropout=0.0, layerdrop=0.0)  # masking is the only randomness
    batch = next(FineTune(config).train_data()["kws"])

    def two_draws(prob):
        config.finetune.update(mask_time_prob=prob, mask_time_min_masks=2)  # 2 spans: every clip is masked
        task = FineTune(config)
        assert (task.encoder_config.mask_time_prob, task.encoder_config.mask_time_min_masks) == (prob, 2)
        state = task.init(jax.random.PRNGKey(0))
        model = nnx.merge(task.train_graphdef, state.params, state.extra["stats"])
        return [np.asarray(task._encode(model, batch, jax.random.PRNGKey(k))[1].last_hidden_state) for k in (1, 2)]

    a, b = two_draws(0.05)
    assert not np.allclose(a, b)  # different keys mask different frames
    a, b = two_draws(0.0)
    np.testing.assert_array_equal(a, b)


def test_pretrained_weights_are_loaded_into_the_encoder(tiny_encoder, tiny_data_dir):
    import kdjax

    config = _config("kws", "", tiny_encoder, tiny_data_dir)
    task = FineTune(config)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    reference = nnx.state(kdjax.from_pretrained(tiny_encoder), nnx.Param)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state.params["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_multitask_run_writes_test_metrics_the_report_reads(tiny_encoder, tiny_data_dir, tmp_path):
    config = _config("multitask", "frozen=False", tiny_encoder, tiny_data_dir, model_name="tiny", role="teacher")
    # the checkpoint with the best mean of KWS validation error and validation-trial EER is tested and exported
    config.finetune.update(sv_select="validation", sv_dev_trials="validation", multitask_select="mean_error")
    results = train_and_evaluate(config, str(tmp_path / "mt"))
    saved = json.loads((tmp_path / "mt" / "results.json").read_text())["export"]
    assert results["task"] == "finetune" and results["final_step"] == config.total_steps  # the loop's own keys
    assert results["best"]["metric"] == "multitask/validation/mean_error" and results["best"]["mode"] == "min"
    ev = results["eval"]
    assert ev["multitask/validation/mean_error"] == pytest.approx(
        (1.0 - ev["kws/validation/accuracy"] + ev["sv/validation/eer"]) / 2)
    for key in ("kws/test/accuracy", "sv/test/eer", "sv/test/mindcf_0.01", "sv/test/mindcf_0.05"):
        assert 0.0 <= saved["metrics"][key] <= 1.0 and saved["metrics"][key] == results["export"]["metrics"][key]
    assert np.asarray(saved["confusion_matrix"]).shape == (12, 12)
    assert np.asarray(saved["confusion_matrix"]).sum() == 12  # every kws_tiny test clip once
    assert len(saved["sv_scores"]["scores"]) == len(saved["sv_scores"]["labels"]) > 0
    assert saved["model"]["name"] == "tiny" and saved["encoder"] == "finetuned" and saved["task"] == "multitask"
    table = build_report([str(tmp_path / "mt")], str(tmp_path / "report"))
    assert (tmp_path / "report" / "report.md").exists() and table
    # kdjax export reads the run back (its best state) and gets the same test accuracy
    import jax.numpy as jnp

    from kdjax.data import pipeline
    from kdjax.export.source import load_finetune_run

    encoder, kws, sv = load_finetune_run(tmp_path / "mt")
    assert sv is not None
    hits, count = 0, 0
    for b in pipeline.eval_batches(pipeline.load_source("synthetic_speech/kws_tiny", "test", tiny_data_dir),
                                   batch_size=8, max_samples=16000, pad_to=16000):
        out = encoder(jnp.asarray(b["input_values"]), jnp.asarray(b["attention_mask"]), output_hidden_states=True)
        pred = np.asarray(jnp.argmax(kws(out.hidden_states, out.frame_mask), -1))
        hits += int(np.sum((pred == b["label"]) & b["valid"]))
        count += int(np.sum(b["valid"]))
    assert hits / count == saved["metrics"]["kws/test/accuracy"]


def test_resume_mid_finetuning_gives_the_same_final_metrics(tiny_encoder, tiny_data_dir, tmp_path):
    straight = train_and_evaluate(_config("kws", "steps=6", tiny_encoder, tiny_data_dir), str(tmp_path / "a"))
    train_and_evaluate(_config("kws", "steps=3", tiny_encoder, tiny_data_dir), str(tmp_path / "b"))
    resumed = train_and_evaluate(_config("kws", "steps=6", tiny_encoder, tiny_data_dir), str(tmp_path / "b"))
    assert resumed["resumed_from"] == 3
    assert resumed["export"]["metrics"] == straight["export"]["metrics"]
    assert resumed["export"]["confusion_matrix"] == straight["export"]["confusion_matrix"]


def test_mean_error_selection_needs_a_multitask_run_with_validation_trials(tiny_encoder, tiny_data_dir):
    config = _config("kws", "", tiny_encoder, tiny_data_dir)
    config.finetune.multitask_select = "mean_error"
    with pytest.raises(ConfigError, match="multitask_select='mean_error' needs mode='multitask'"):
        FineTune(config)
    config.finetune.multitask_select = "sum"
    with pytest.raises(ConfigError, match="multitask_select='sum'"):
        FineTune(config)


def test_kws_batch_size_sizes_the_kws_stream_only(tiny_encoder, tiny_data_dir):
    config = _config("multitask", "frozen=True", tiny_encoder, tiny_data_dir)
    config.finetune.kws_batch_size = 2 * config.batch_size
    its = FineTune(config).train_data()
    assert len(next(its["kws"])["label"]) == 2 * config.batch_size
    assert len(next(its["sv"])["speaker"]) == config.batch_size
    config.finetune.kws_batch_size = -8
    with pytest.raises(ConfigError, match="kws_batch_size=-8"):
        FineTune(config)


@pytest.mark.parametrize("args,field", [("init=sideways", "finetune.init"), ("frozen=True,init=random", "")])
def test_bad_configs_name_the_field(tiny_encoder, tiny_data_dir, args, field):
    config = _config("kws", args, tiny_encoder, tiny_data_dir)
    config.finetune.frozen = "frozen=True" in args
    with pytest.raises(ConfigError, match=field or "random features"):
        FineTune(config)


def test_unknown_mode_and_missing_encoder_are_named(tiny_encoder, tiny_data_dir, tmp_path):
    config = _config("kws", "", tiny_encoder, tiny_data_dir)
    config.finetune.mode = "asr"
    with pytest.raises(ConfigError, match="config.finetune.mode='asr'"):
        FineTune(config)
    with pytest.raises(ConfigError, match="config.finetune.encoder=.*HF checkpoint folder.*finished kdjax workdir"):
        FineTune(_config("kws", "", str(tmp_path), tiny_data_dir))


def test_mismatched_label_set_names_the_labels(tiny_encoder, tiny_data_dir):
    config = _config("kws", "", tiny_encoder, tiny_data_dir)
    config.finetune.labels = ["yes", "no", "maybe"]
    with pytest.raises(ConfigError, match=r"labels not in the dataset \['maybe'\].*'up'"):
        FineTune(config)
