"""Full-size parity on the four published configurations (random weights), layer by layer."""
import jax
import numpy as np
import pytest
import torch
from flax import nnx

from kdjax.models import hf
from kdjax.models.config import preset
from kdjax.models.encoder import Encoder
from tests import hf_utils

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["facebook/hubert-base-ls960", "facebook/wav2vec2-base", "ntu-spml/distilhubert",
                                  "facebook/wav2vec2-large-lv60"])
def test_published_config_matches_transformers(name):
    config = preset(name)
    torch.manual_seed(0)
    reference = hf_utils.hf_model(hf_utils.hf_config(**config.to_hf()))
    x, mask = hf_utils.batch(lengths=(16000, 11000))
    with torch.no_grad():
        ref = reference(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    tensors = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    del reference

    model = Encoder(config, rngs=nnx.Rngs(0))
    hf.load_weights(model, tensors, source=name)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m, output_hidden_states=True))
    out = forward(state, x, mask)
    valid = np.asarray(out.frame_mask)
    diffs = [float(np.abs(np.asarray(a) - b.numpy())[valid].max()) for a, b in zip(out.hidden_states, ref.hidden_states)]
    scale = [float(np.abs(b.numpy()).max()) for b in ref.hidden_states]
    print(f"{name}: max abs diff per hidden state {['%.1e' % d for d in diffs]}")
    # Tolerance loosens with depth, relative to the activations' scale (pre-LN residual streams grow with depth).
    for i, (d, s) in enumerate(zip(diffs, scale)):
        assert d <= 1e-4 * max(1.0, s) * (1 + i / 4), f"hidden state {i}: diff {d:.2e}, scale {s:.1f}"
    last = float(np.abs(np.asarray(out.last_hidden_state) - ref.last_hidden_state.numpy())[valid].max())
    assert last <= 1e-4 * max(1.0, float(np.abs(ref.last_hidden_state.numpy()).max())) * (1 + len(diffs) / 4)
