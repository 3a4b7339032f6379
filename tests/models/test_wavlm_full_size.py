"""Full-size WavLM parity on the published configurations (random weights), every hidden state, padded batch of 2.

microsoft/wavlm-base and wavlm-base-plus share one architecture (the test asserts it), so one run covers both.
The input is short (0.5 s and 0.35 s) to keep wavlm-large within the CI budget on 2 cores.
"""
import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from kdjax.models import hf
from kdjax.models.config import preset
from kdjax.models.encoder import Encoder
from tests import hf_utils
from tests.models import wavlm_utils

jax.config.update("jax_default_matmul_precision", "highest")
_TRAINING_ONLY = {"hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "layerdrop",
                  "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
                  "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks"}


def test_wavlm_base_and_base_plus_share_one_architecture():
    base, plus = preset("microsoft/wavlm-base"), preset("microsoft/wavlm-base-plus")
    differing = {f.name for f in dataclasses.fields(base) if getattr(base, f.name) != getattr(plus, f.name)}
    assert not differing - _TRAINING_ONLY and base.model_type == "wavlm" and not base.do_stable_layer_norm


@pytest.mark.slow
@pytest.mark.parametrize("name", ["microsoft/wavlm-base-plus",
                                  pytest.param("microsoft/wavlm-large", marks=pytest.mark.heavy)])
def test_published_wavlm_config_matches_transformers(name):
    config = preset(name, scan_layers=True)  # one compiled layer: the 24-layer compile would dominate the test
    fields = {k: v for k, v in config.to_hf().items() if k not in ("model_type", "architectures")}
    reference = wavlm_utils.wavlm_model(wavlm_utils.wavlm_config(**fields))
    x, mask = hf_utils.batch(lengths=(8000, 5600))
    with torch.no_grad():
        ref = reference(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    tensors = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    del reference

    model = nnx.eval_shape(lambda: Encoder(config, rngs=nnx.Rngs(0)))  # no random init: every tensor is loaded
    hf.load_weights(model, tensors, source=name)
    graphdef, state = nnx.split(model)
    out = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m, output_hidden_states=True))(state, x, mask)
    diffs = [float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(out.hidden_states, ref.hidden_states)]
    last = float(np.abs(np.asarray(out.last_hidden_state) - ref.last_hidden_state.numpy()).max())
    print(f"{name}: max abs diff per hidden state {['%.1e' % d for d in diffs]}, last {last:.1e}")
    assert len(diffs) == config.num_hidden_layers + 1
    assert max(diffs) <= 1e-4 and last <= 1e-4, (diffs, last)
