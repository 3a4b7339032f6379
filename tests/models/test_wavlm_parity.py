"""WavLM parity with transformers' PyTorch WavLMModel (float32, highest matmul precision), and its HF key table."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import kdjax
from kdjax.models import hf, relpos
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import init_encoder
from tests import hf_utils
from tests.models import wavlm_utils

jax.config.update("jax_default_matmul_precision", "highest")
TOL = 1e-4


def _reference(model, x, mask):
    with torch.no_grad():
        out = model(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy()


def _max_diffs(out, ref_hidden, ref_last, frames=None):
    """Max abs diff per hidden state and of the last state, over `frames` (bool [B, T]) or every frame."""
    def diff(a, b):
        d = np.abs(np.asarray(a) - b)
        return float((d[frames] if frames is not None else d).max())

    assert len(out.hidden_states) == len(ref_hidden)
    return [diff(a, b) for a, b in zip(out.hidden_states, ref_hidden)], diff(out.last_hidden_state, ref_last)


@pytest.mark.parametrize("variant", sorted(wavlm_utils.VARIANTS))
def test_every_hidden_state_matches_transformers_on_a_padded_batch(tmp_path, variant):
    import transformers

    folder = wavlm_utils.save_tiny_wavlm(tmp_path / variant, variant)
    x, mask = hf_utils.batch()
    ref_hidden, ref_last = _reference(transformers.WavLMModel.from_pretrained(folder).eval(), x, mask)
    model = kdjax.from_pretrained(folder)
    out = model(x, mask, output_hidden_states=True)
    # every frame, padded ones included: HF's padding semantics (zeroed before the positional conv, keys masked)
    diffs, last = _max_diffs(out, ref_hidden, ref_last)
    print(f"wavlm {variant}: max abs diff per hidden state {['%.1e' % d for d in diffs]}, last {last:.1e}")
    assert max(diffs) <= TOL and last <= TOL, (diffs, last)

    # The check can fail: without the relative position bias the outputs are far off.
    model.rel_pos_bias.embedding.set_value(0 * model.rel_pos_bias.embedding.get_value())
    no_bias, _ = _max_diffs(model(x, mask, output_hidden_states=True), ref_hidden, ref_last)
    assert no_bias[-1] > 100 * TOL


@pytest.mark.parametrize("num_buckets,max_distance", [(320, 800), (8, 12), (37, 50), (64, 40)])
def test_buckets_match_transformers(num_buckets, max_distance):
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    attention = WavLMAttention(16, 2, num_buckets=num_buckets, max_distance=max_distance)
    length = 1500  # 30 s of frames: past every max_distance above
    positions = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    expected = attention._relative_positions_bucket(positions).numpy()
    np.testing.assert_array_equal(relpos.relative_position_buckets(length, num_buckets, max_distance), expected)


def test_hf_to_kdjax_to_hf_is_identical(tmp_path):
    src = wavlm_utils.save_tiny_wavlm(tmp_path / "src", "stable_few_buckets")
    kdjax.save_pretrained(kdjax.from_pretrained(src), tmp_path / "dst")
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "dst" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("stable", [False, True])
def test_kdjax_wavlm_loads_in_transformers_with_same_outputs(tmp_path, stable):
    import transformers

    config = EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "wavlm", "do_stable_layer_norm": stable,
                                    "num_buckets": 16, "max_bucket_distance": 40})
    model = init_encoder(config, seed=3)
    kdjax.save_pretrained(model, tmp_path / "out")
    loaded, info = transformers.WavLMModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert loaded.config.num_buckets == 16 and loaded.config.do_stable_layer_norm == stable
    x, mask = hf_utils.batch(seed=1)
    ref_hidden, ref_last = _reference(loaded.eval(), x, mask)
    diffs, last = _max_diffs(model(x, mask, output_hidden_states=True), ref_hidden, ref_last)
    assert max(diffs) <= TOL and last <= TOL, (diffs, last)


@pytest.mark.parametrize("head", ["WavLMForCTC", "WavLMForXVector", "WavLMForSequenceClassification"])
def test_task_model_checkpoints_load_the_encoder_and_say_what_was_ignored(tmp_path, caplog, head):
    fields = dict(wavlm_utils.VARIANTS["base_like"], vocab_size=12, num_labels=3, tdnn_dim=(8, 8), tdnn_kernel=(3, 1),
                  tdnn_dilation=(1, 1), xvector_output_dim=8, classifier_proj_size=8,
                  use_weighted_layer_sum=head == "WavLMForSequenceClassification")
    reference = wavlm_utils.wavlm_model(wavlm_utils.wavlm_config(**fields), model_class=head)
    reference.save_pretrained(tmp_path / head)
    x, mask = hf_utils.batch()
    ref_hidden, ref_last = _reference(reference.wavlm, x, mask)
    with caplog.at_level(logging.INFO, logger="kdjax.models.hf"):
        model = kdjax.from_pretrained(tmp_path / head)
    diffs, last = _max_diffs(model(x, mask, output_hidden_states=True), ref_hidden, ref_last)
    assert max(diffs) <= TOL and last <= TOL
    heads = sorted(k for k in load_file(str(tmp_path / head / "model.safetensors")) if not k.startswith("wavlm."))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and heads and all(k in warnings[0] for k in heads[:hf._MAX_LISTED_KEYS]), warnings
    if head == "WavLMForSequenceClassification":
        assert "use_weighted_layer_sum=True" in warnings[0] and "layer_weights" in warnings[0]


def test_training_mode_runs_and_never_drops_the_first_layer():
    # Training (fine-tuning, distillation) runs dropout and LayerDrop; HF's WavLM never drops layer 0, where it
    # computes the position bias, so with layerdrop=1 only layer 0 changes the hidden states.
    config = EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "wavlm", "layerdrop": 1.0, "mask_time_prob": 0.0})
    graphdef, state = nnx.split(init_encoder(config, seed=1))
    x, mask = hf_utils.batch()

    @jax.jit
    def run(state):
        def loss(state):
            out = nnx.merge(graphdef, state)(x, mask, output_hidden_states=True, deterministic=False,
                                             rng=jax.random.PRNGKey(0))
            return jnp.mean(out.last_hidden_state ** 2), out.hidden_states

        return jax.grad(loss, has_aux=True)(state)

    grads, hidden = run(state)
    h = [np.asarray(a) for a in hidden]
    assert np.abs(h[1] - h[0]).max() > 1e-3 and all(np.array_equal(h[i], h[i + 1]) for i in range(1, len(h) - 1))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["layers"][0]["attention"]["gate"]["linear"]["kernel"][...])).max() > 0
    assert np.abs(np.asarray(grads["rel_pos_bias"]["embedding"][...])).max() > 0
