"""Frozen fine-tuning from the feature cache through the loop: the same training and test metrics as uncached."""
import jax
import numpy as np
import pytest
from flax import nnx

from kdjax.errors import ConfigError
from kdjax.export.source import load_finetune_run
from kdjax.finetune.evaluation import trial_speakers
from kdjax.finetune.task import FineTune
from kdjax.models.hf import from_pretrained
from kdjax.train.loop import train_and_evaluate
from kdjax.train.state import param_count
from tests.finetune.test_finetune import _config, tiny_encoder  # noqa: F401  (the module's fixture)


@pytest.mark.parametrize("mode,sv_select", [("kws", "final"), ("sv", "validation")])
def test_cached_run_equals_uncached(mode, sv_select, tiny_encoder, tiny_data_dir, tmp_path):  # noqa: F811
    runs = {}
    for name, cache in (("uncached", ""), ("cached", str(tmp_path / "cache"))):
        config = _config(mode, "steps=4", tiny_encoder, tiny_data_dir)
        config.finetune.update(cache=cache, sv_seconds=4.0)  # SV crops covering every utterance: exactly equal
        # SV keeps the checkpoint with the best EER on the validation speakers' trials, scored from their cache
        config.finetune.update(sv_select=sv_select, sv_dev_trials="validation" if mode == "sv" else "")
        # 2 s: the uncached in-loop scoring pads every 1-2 s sv_tiny utterance to this, as the cache pads each to
        # whole seconds (a GroupNorm feature encoder sees the padding, so the two agree only at equal lengths)
        config.finetune.sv_eval_max_seconds = 2.0
        config.eval_every = 2
        runs[name] = train_and_evaluate(config, str(tmp_path / name))
    a, b = runs["uncached"], runs["cached"]
    key = "kws/loss" if mode == "kws" else "sv/loss"
    np.testing.assert_allclose(b["train"][key], a["train"][key], rtol=1e-5)
    for metric, value in a["export"]["metrics"].items():
        np.testing.assert_allclose(b["export"]["metrics"][metric], value, atol=1e-5, err_msg=metric)
    if mode == "kws":
        assert b["eval"]["kws/validation/accuracy"] == a["eval"]["kws/validation/accuracy"]
        # the cached run's state holds the heads only; exported, it brings back its encoder from the cached folder
        assert b["param_count"] == a["param_count"] - param_count(nnx.state(from_pretrained(tiny_encoder), nnx.Param))
        (enc_a, kws_a, _), (enc_b, kws_b, _) = (load_finetune_run(tmp_path / n) for n in ("uncached", "cached"))
        for x, y in ((enc_a, enc_b), (kws_a, kws_b)):
            jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6),
                         nnx.state(x, nnx.Param), nnx.state(y, nnx.Param))
    else:
        np.testing.assert_allclose(b["eval"]["sv/validation/eer"], a["eval"]["sv/validation/eer"], atol=1e-6)
        assert 0.0 <= b["eval"]["sv/validation/eer"] <= 1.0
        # the trials' speakers (for the speaker bootstrap) come from the scored batches: those the split holds
        cfg = _config(mode, "steps=4", tiny_encoder, tiny_data_dir).finetune
        expected = trial_speakers(cfg, "test", "test")
        assert (expected >= 0).all() and len(np.unique(expected)) > 1
        for run in (a, b):
            np.testing.assert_array_equal(run["export"]["sv_scores"]["speakers"], expected)


def test_cache_needs_a_frozen_two_stage_run(tiny_encoder, tiny_data_dir, tmp_path):  # noqa: F811
    config = _config("kws", "frozen=False", tiny_encoder, tiny_data_dir, cache=str(tmp_path))
    with pytest.raises(ConfigError, match=r"config.finetune.cache=.*needs config.finetune.frozen=True"):
        FineTune(config)
    config = _config("kws", "one_stage", tiny_encoder, tiny_data_dir, cache=str(tmp_path))
    config.finetune.one_stage.teacher = tiny_encoder
    with pytest.raises(ConfigError, match=r"config.finetune.cache=.*config.finetune.one_stage.teacher="):
        FineTune(config)
