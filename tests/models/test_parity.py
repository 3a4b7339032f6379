"""Layer-by-layer parity with transformers' PyTorch wav2vec 2.0 / HuBERT, float32 at highest matmul precision."""
import jax
import numpy as np
import pytest
import torch

import kdjax
from tests import hf_utils

jax.config.update("jax_default_matmul_precision", "highest")
TOL = 1e-4


def _hf_outputs(folder, x, mask):
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy()


def _assert_parity(folder, x, mask):
    ref_hidden, ref_last = _hf_outputs(folder, x, mask)
    model = kdjax.from_pretrained(folder)
    out = model(x, mask, output_hidden_states=True)
    valid = np.asarray(out.frame_mask)
    assert len(out.hidden_states) == len(ref_hidden)
    diffs = []
    for i, (ours, ref) in enumerate(zip(out.hidden_states, ref_hidden)):
        ours = np.asarray(ours)
        assert ours.shape == ref.shape, f"hidden state {i}"
        diffs.append(float(np.abs(ours - ref)[valid].max()))
    last = float(np.abs(np.asarray(out.last_hidden_state) - ref_last)[valid].max())
    assert max(diffs) <= TOL and last <= TOL, f"max abs diff per hidden state {diffs}, last {last}"
    return max(diffs + [last])


@pytest.mark.parametrize("variant", sorted(hf_utils.VARIANTS))
def test_hidden_states_match_transformers(tmp_path, variant):
    folder = hf_utils.save_tiny(tmp_path / variant, variant)
    x, mask = hf_utils.batch()
    diff = _assert_parity(folder, x, mask)
    print(f"{variant}: max abs diff {diff:.2e}")


def test_padded_frames_match_transformers_too(tmp_path):
    # HF zeroes padded frames before the positional conv and masks padded keys, but still computes padded query
    # frames; kdjax does the same, so even those (meaningless) frames agree.
    folder = hf_utils.save_tiny(tmp_path / "m", "hubert_base_like")
    x, mask = hf_utils.batch()
    ref_hidden, _ = _hf_outputs(folder, x, mask)
    out = kdjax.from_pretrained(folder)(x, mask, output_hidden_states=True)
    assert np.abs(np.asarray(out.hidden_states[-1]) - ref_hidden[-1]).max() <= TOL


def test_old_weight_norm_names_and_model_prefix(tmp_path):
    """A HubertForCTC checkpoint with `hubert.` prefix and weight_g/weight_v names loads; its head is ignored."""
    from safetensors.numpy import load_file, save_file

    fields = {**hf_utils.TINY, **hf_utils.VARIANTS["hubert_base_like"], "vocab_size": 12}
    ctc = hf_utils.hf_model(hf_utils.hf_config(**fields), model_class="HubertForCTC")
    folder = tmp_path / "ctc"
    ctc.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    renamed = {k.replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v"): v for k, v in tensors.items()}
    assert any(k.startswith("hubert.") for k in renamed) and any("weight_g" in k for k in renamed)
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})

    x, mask = hf_utils.batch()
    with torch.no_grad():
        ref = ctc.hubert(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long(),
                         output_hidden_states=True)
    out = kdjax.from_pretrained(folder)(x, mask, output_hidden_states=True)
    valid = np.asarray(out.frame_mask)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert np.abs(np.asarray(ours) - theirs.numpy())[valid].max() <= TOL


def test_unpadded_batch_without_mask(tmp_path):
    folder = hf_utils.save_tiny(tmp_path / "m", "wav2vec2_group_postln")
    x, _ = hf_utils.batch(lengths=(3200, 3200))
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).last_hidden_state.numpy()
    ours = np.asarray(kdjax.from_pretrained(folder)(x).last_hidden_state)
    assert np.abs(ours - ref).max() <= TOL
