"""configs/superb_{ks,asv}.py load, carry every field of the fine-tuning config layout, and keep s3prl's values."""
import importlib.util
import os

import pytest

from kdjax.finetune.config import finetune_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config


def _keys(c, prefix=""):
    out = set()
    for k, v in c.items():
        nested = hasattr(v, "items") and k not in ("one_stage", "groups", "encoder_overrides")
        out |= _keys(v, f"{prefix}{k}.") if nested else {prefix + k}
    return out


@pytest.mark.parametrize("name,mode", [("superb_ks", "kws"), ("superb_asv", "sv")])
def test_superb_configs_spell_out_every_field(name, mode):
    get = _load(name)
    config = get()
    assert _keys(finetune_config(mode)) == _keys(config)  # every field written out, none the task would reject
    assert get("last").finetune.featurizer == "last" and get("runlocal").total_steps == 6


def test_s3prl_values():
    ks, asv = _load("superb_ks")(), _load("superb_asv")()
    assert (ks.total_steps, ks.eval_every, ks.batch_size, ks.optim.name, ks.optim.lr, ks.optim.clip_norm) == (
        200_000, 5_000, 32, "adam", 1e-4, 1.0)
    assert (ks.finetune.kws_dataset, ks.finetune.kws_sampling, ks.finetune.gain_db) == (
        "speech_commands/v1", "balanced", -3.0)
    assert asv.total_steps // asv.optim.accum_steps == 200_000 and asv.batch_size * asv.optim.accum_steps == 50
    assert (asv.optim.name, asv.optim.lr, asv.optim.weight_decay, asv.optim.clip_norm) == ("adamw", 1e-4, 0.01, 1e3)
    f = asv.finetune
    assert (f.sv_head, f.sv_loss, f.sv_margin_scale, f.sv_margin, f.sv_seconds, f.sv_min_seconds) == (
        "xvector_superb", "am", 30.0, 0.4, 8.0, 2.0)
    assert (f.sv_dataset, f.sv_trials, f.sv_eval_batch_size) == ("voxceleb1/superb", "superb", 1)


@pytest.mark.parametrize("name", ["superb_ks", "superb_asv"])
def test_superb_recipes_run_through_the_loop(name, tiny_data_dir, tmp_path):
    """Class-balanced sampling and dev resample (KS), the SUPERB x-vector, AM-softmax, equal-length evaluation and
    best-test-EER checkpoint selection (ASV), on the tiny corpus."""
    from kdjax.train.loop import train_and_evaluate
    from tests.finetune.test_finetune import BASE_CONV
    from tests.hf_utils import save_tiny

    encoder = str(save_tiny(tmp_path / "enc", "hubert_base_like", **BASE_CONV))
    config = _load(name)("runlocal")
    config.finetune.update(encoder=encoder, data_dir=tiny_data_dir)
    config.mesh.devices = 1
    results = train_and_evaluate(config, str(tmp_path / "run"))
    metrics = results["export"]["metrics"]
    if name == "superb_ks":
        assert 0.0 <= metrics["kws/test/accuracy"] <= 1.0 and 0.0 <= results["eval"]["kws/validation/accuracy"] <= 1
    else:
        assert 0.0 <= metrics["sv/test/eer"] <= 1.0 and results["best"]["metric"] == "sv/test/eer"
        assert results["best"]["step"] in (3, 6) and 0.0 <= results["eval"]["sv/test/eer"] <= 1.0
