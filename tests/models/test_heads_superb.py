"""SUPERB's ASV head (s3prl sv_voxceleb1 amsoftmax.yaml) vs a PyTorch reference written from s3prl's model: TDNN as
unfold + Linear + ReLU without BatchNorm, statistics pooling with torch.std, UtteranceExtractor (Linear-ReLU-Linear-ReLU
in training, ReLU(Linear1) at test). And: a padded batch through a GroupNorm encoder changes embeddings, while
kdjax.data.sampling.equal_length_batches gives the embeddings of single utterances."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from kdjax.data import pipeline, sampling
from kdjax.models import heads as H
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Encoder

from tests import hf_utils

jax.config.update("jax_default_matmul_precision", "highest")
D, HID, AGG = 12, 16, 24


class TorchSUPERBXVector(nn.Module):
    def __init__(self):
        super().__init__()
        self.connector = nn.Linear(D, HID)
        self.ctx = [(5, 1), (3, 2), (3, 3), (1, 1), (1, 1)]
        dims = [HID] * 5 + [AGG]
        self.kernels = nn.ModuleList([nn.Linear(dims[i] * k, dims[i + 1]) for i, (k, _) in enumerate(self.ctx)])
        self.linear1, self.linear2 = nn.Linear(2 * AGG, HID), nn.Linear(HID, HID)

    def forward(self, x):  # [B, T, D], one length: s3prl's TDNN unfolds (context, H) patches, then Linear + ReLU
        x = self.connector(x)
        for (k, d), lin in zip(self.ctx, self.kernels):
            x = F.unfold(x.unsqueeze(1), (k, x.shape[-1]), stride=(1, x.shape[-1]), dilation=(d, 1)).transpose(1, 2)
            x = torch.relu(lin(x))
        pooled = torch.cat([x.mean(1), torch.std(x, dim=1)], -1)
        test = torch.relu(self.linear1(pooled))
        return test, torch.relu(self.linear2(test))


def _copy(head, ref):
    def lin(dst, src, kernel):
        dst.weight.copy_(torch.from_numpy(np.asarray(kernel, np.float32)))
        dst.bias.copy_(torch.from_numpy(np.asarray(src.bias[...], np.float32)))

    with torch.no_grad():
        lin(ref.connector, head.projector, np.asarray(head.projector.kernel[...]).T)
        for layer, dst in zip(head.tdnn, ref.kernels):
            k = np.asarray(layer.conv.kernel[...])  # [k, in, out]; unfold's patch index is c * H + h
            lin(dst, layer.conv, k.reshape(-1, k.shape[-1]).T)
        lin(ref.linear1, head.linear1, np.asarray(head.linear1.kernel[...]).T)
        lin(ref.linear2, head.linear2, np.asarray(head.linear2.kernel[...]).T)


def test_superb_xvector_matches_s3prl_structure_and_ignores_padding():
    head = H.SUPERBXVectorHead(D, hidden=HID, agg_dim=AGG, rngs=nnx.Rngs(0))
    for _, m in nnx.iter_graph(head):
        if isinstance(m, (nnx.Linear, nnx.Conv)):
            m.bias[...] = jax.random.normal(jax.random.key(1), m.bias.shape) * 0.1
    assert not any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(head))
    ref = TorchSUPERBXVector()
    _copy(head, ref)
    x = np.random.default_rng(0).standard_normal((2, 40, D)).astype(np.float32)
    x[1, 31:] = 5.0  # row 1 is a 31-frame utterance followed by padding
    want_test, want_train = (t.detach().numpy() for t in ref(torch.from_numpy(x[:1])))
    short = ref(torch.from_numpy(x[1:, :31]))[0].detach().numpy()
    both = nnx.jit(lambda m, x, mask: (m(x, mask), m.training_embedding(x, mask)))
    test, train = both(head, jnp.asarray(x), jnp.arange(40)[None] < jnp.array([[40], [31]]))
    np.testing.assert_allclose(test[:1], want_test, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(train[:1], want_train, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(test[1:], short, rtol=1e-4, atol=1e-5)


def test_padded_batches_change_groupnorm_embeddings_equal_length_batches_do_not():
    cfg = EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "hubert", "feat_extract_norm": "group",
                                 "do_stable_layer_norm": False, "num_hidden_layers": 1})
    enc = Encoder(cfg, rngs=nnx.Rngs(0))
    head = H.SUPERBXVectorHead(cfg.hidden_size, hidden=HID, agg_dim=AGG, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    lengths = [5200, 3600, 5200]
    src = [{"audio": (rng.standard_normal(n) * 3000).astype(np.int16), "speaker": 0, "id": f"u{i}"}
           for i, n in enumerate(lengths)]

    @nnx.jit
    def forward(enc, head, x, mask):
        out = enc(x, mask, output_hidden_states=True)
        return head(out.hidden_states[-1], out.frame_mask)

    def embed(batch):
        return np.asarray(forward(enc, head, jnp.asarray(batch["input_values"]), jnp.asarray(batch["attention_mask"])))

    # one utterance at a time (an all-zero filler row keeps the batch shape: every op is per example in eval mode)
    single = {i: embed(next(sampling.equal_length_batches(src, batch_size=2, indices=[i])))[0] for i in range(3)}
    padded = embed(next(pipeline.eval_batches(src, batch_size=2, indices=[0, 1])))  # utterance 1 padded by 1600
    assert np.abs(padded[1] - single[1]).max() > 1e-2 * np.abs(single[1]).max()  # GroupNorm saw the padding
    np.testing.assert_allclose(padded[0], single[0], rtol=1e-4, atol=1e-5)  # the unpadded row agrees
    for b in sampling.equal_length_batches(src, batch_size=2):
        e = embed(b)
        for row, i in enumerate(b["index"]):
            if b["valid"][row]:
                np.testing.assert_allclose(e[row], single[int(i)], rtol=1e-4, atol=1e-5)
