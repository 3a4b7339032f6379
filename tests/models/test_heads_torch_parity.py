"""x-vector and ECAPA-TDNN heads vs independent PyTorch references (channels-first Conv1d/BatchNorm1d), float32.

The references below are written from the architectures (SUPERB/Kaldi x-vector; ECAPA-TDNN with the structure
kdjax documents: SAME zero padding, SE-Res2 blocks, multi-layer aggregation, attentive statistics pooling with global
context, BatchNorm, Linear), not transliterated from the JAX code. kdjax's weights, with BatchNorm scales, biases and
running statistics set to non-trivial random values, are copied into them.

Conventions shared by both sides (kdjax's choices, documented in heads.py / docs/finetune.md): standard deviations
are sqrt(biased variance + 1e-5); BatchNorm eps is 1e-5; SAME convolutions pad with zeros.
"""
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from kdjax.models import heads as H

jax.config.update("jax_default_matmul_precision", "highest")

EPS = 1e-5
B, T, D = 3, 60, 32
LENGTHS = (60, 47, 33)  # padded batch: the x-vector's 15-frame receptive field leaves 46, 33, 19 valid frames
XV = dict(hidden=64, widths=(64,) * 5, embed_dim=32)
ECAPA = dict(channels=64, embed_dim=32, scale=8, attention_channels=32)  # mfa: 3 * 64 = 192


# ----------------------------------------------------------------------------------------------------- references
def _std(h, dim):
    return torch.sqrt(h.var(dim, unbiased=False) + EPS)


class TorchTDNN(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d on [B, C, T]; `same=True` pads with zeros to keep the length."""

    def __init__(self, c_in, c_out, kernel, dilation=1, same=False):
        super().__init__()
        pad = dilation * (kernel - 1) // 2 if same else 0
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=pad)
        self.bn = nn.BatchNorm1d(c_out, eps=EPS, momentum=0.1)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


class TorchXVector(nn.Module):
    def __init__(self, d_in, hidden, widths, embed_dim):
        super().__init__()
        self.projector = nn.Linear(d_in, hidden)
        dims = (hidden, *widths)
        self.tdnn = nn.Sequential(*[TorchTDNN(dims[i], dims[i + 1], k, d)
                                    for i, (k, d) in enumerate(zip((5, 3, 3, 1, 1), (1, 2, 3, 1, 1)))])
        self.embedding = nn.Linear(2 * widths[-1], embed_dim)

    def forward(self, x):  # x: [B, T, D], all frames valid
        h = self.tdnn(self.projector(x).transpose(1, 2))  # [B, C, T - 14]
        return self.embedding(torch.cat([h.mean(-1), _std(h, -1)], -1))


class TorchSERes2Block(nn.Module):
    def __init__(self, channels, kernel, dilation, scale, se_bottleneck=128):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.tdnn1 = TorchTDNN(channels, channels, 1, same=True)
        self.res2 = nn.ModuleList([TorchTDNN(width, width, kernel, dilation, same=True) for _ in range(scale - 1)])
        self.tdnn2 = TorchTDNN(channels, channels, 1, same=True)
        self.se_fc1 = nn.Linear(channels, se_bottleneck)
        self.se_fc2 = nn.Linear(se_bottleneck, channels)

    def forward(self, x):  # [B, C, T]
        chunks = torch.chunk(self.tdnn1(x), self.scale, dim=1)
        ys = [chunks[0]]
        for i, conv in enumerate(self.res2, start=1):
            ys.append(conv(chunks[i] if i == 1 else chunks[i] + ys[-1]))
        h = self.tdnn2(torch.cat(ys, dim=1))
        gate = torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(h.mean(-1)))))
        return h * gate.unsqueeze(-1) + x


class TorchAttentiveStatsPool(nn.Module):
    def __init__(self, channels, attention_channels):
        super().__init__()
        self.tdnn = TorchTDNN(3 * channels, attention_channels, 1, same=True)
        self.score = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x):  # [B, C, T] -> [B, 2C]
        t = x.shape[-1]
        ctx = torch.cat([x, x.mean(-1, keepdim=True).expand(-1, -1, t), _std(x, -1).unsqueeze(-1).expand(-1, -1, t)],
                        dim=1)
        w = torch.softmax(self.score(torch.tanh(self.tdnn(ctx))), dim=-1)
        mean = (w * x).sum(-1)
        var = (w * (x - mean.unsqueeze(-1)) ** 2).sum(-1)
        return torch.cat([mean, torch.sqrt(var.clamp(min=0) + EPS)], dim=-1)


class TorchECAPA(nn.Module):
    def __init__(self, d_in, channels, embed_dim, scale, attention_channels):
        super().__init__()
        mfa = 3 * channels
        self.stem = TorchTDNN(d_in, channels, 5, same=True)
        self.blocks = nn.ModuleList([TorchSERes2Block(channels, 3, d, scale) for d in (2, 3, 4)])
        self.mfa = TorchTDNN(3 * channels, mfa, 1, same=True)
        self.pool = TorchAttentiveStatsPool(mfa, attention_channels)
        self.pool_bn = nn.BatchNorm1d(2 * mfa, eps=EPS, momentum=0.1)
        self.embedding = nn.Linear(2 * mfa, embed_dim)

    def forward(self, x):  # x: [B, T, D], all frames valid
        h = self.stem(x.transpose(1, 2))
        outs = []
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        return self.embedding(self.pool_bn(self.pool(self.mfa(torch.cat(outs, dim=1)))))


# ----------------------------------------------------------------------------------------------------- weights
def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _randomize(model, seed):
    """Non-trivial biases, BatchNorm affines and running statistics (defaults are zeros/ones)."""
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, (nnx.Linear, nnx.Conv)):
            m.bias[...] = jnp.asarray(rng.normal(scale=0.1, size=m.bias.shape), jnp.float32)
        elif isinstance(m, nnx.BatchNorm):
            n = m.mean.shape
            m.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
            m.bias[...] = jnp.asarray(rng.normal(scale=0.2, size=n), jnp.float32)
            m.mean[...] = jnp.asarray(rng.normal(scale=0.3, size=n), jnp.float32)
            m.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
    return model


def _copy_linear(dst: nn.Module, src: nnx.Linear):
    w = np.asarray(src.kernel[...]).T  # [in, out] -> [out, in]
    dst.weight.copy_(_t(w if isinstance(dst, nn.Linear) else w[..., None]))  # Conv1d k=1: [out, in, 1]
    dst.bias.copy_(_t(src.bias[...]))


def _copy_conv(dst: nn.Conv1d, src: nnx.Conv):
    dst.weight.copy_(_t(np.asarray(src.kernel[...]).transpose(2, 1, 0)))  # [k, in, out] -> [out, in, k]
    dst.bias.copy_(_t(src.bias[...]))


def _copy_bn(dst: nn.BatchNorm1d, src: nnx.BatchNorm):
    dst.weight.copy_(_t(src.scale[...]))
    dst.bias.copy_(_t(src.bias[...]))
    dst.running_mean.copy_(_t(src.mean[...]))
    dst.running_var.copy_(_t(src.var[...]))


def _copy_tdnn(dst: TorchTDNN, src: H.TDNNLayer):
    _copy_conv(dst.conv, src.conv)
    _copy_bn(dst.bn, src.norm)


@torch.no_grad()
def _torch_xvector(head: H.XVectorHead) -> TorchXVector:
    ref = TorchXVector(D, **XV)
    _copy_linear(ref.projector, head.projector)
    for dst, src in zip(ref.tdnn, head.tdnn, strict=True):
        _copy_tdnn(dst, src)
    _copy_linear(ref.embedding, head.embedding)
    return ref


@torch.no_grad()
def _torch_ecapa(head: H.ECAPAHead) -> TorchECAPA:
    ref = TorchECAPA(D, **ECAPA)
    _copy_tdnn(ref.stem, head.stem)
    for dst, src in zip(ref.blocks, head.blocks, strict=True):
        _copy_tdnn(dst.tdnn1, src.tdnn1)
        for d, s in zip(dst.res2, src.res2, strict=True):
            _copy_tdnn(d, s)
        _copy_tdnn(dst.tdnn2, src.tdnn2)
        _copy_linear(dst.se_fc1, src.se.fc1)
        _copy_linear(dst.se_fc2, src.se.fc2)
    _copy_tdnn(ref.mfa, head.mfa)
    _copy_tdnn(ref.pool.tdnn, head.pool.tdnn)
    _copy_linear(ref.pool.score, head.pool.score)
    _copy_bn(ref.pool_bn, head.pool_norm)
    _copy_linear(ref.embedding, head.embedding)
    return ref


def _xvector(seed=0):
    return _randomize(H.XVectorHead(D, **XV, rngs=nnx.Rngs(seed)), seed + 100)


def _ecapa(seed=0):
    return _randomize(H.ECAPAHead(D, **ECAPA, rngs=nnx.Rngs(seed)), seed + 100)


# ----------------------------------------------------------------------------------------------------- helpers
@nnx.jit
def _forward(model, x, mask):
    return model(x, mask)


def _inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype(np.float32)


def _run_torch(ref, x):
    with torch.no_grad():
        return ref(torch.from_numpy(x)).numpy()


def _assert_close(ours, ref, what):
    """|ours - ref| <= 2e-5 * (1 + |ref|) elementwise; returns the max abs difference."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, what
    assert np.isfinite(ours).all() and np.isfinite(ref).all(), what
    diff = np.abs(ours - ref)
    assert (diff <= 2e-5 * (1 + np.abs(ref))).all(), f"{what}: max abs diff {diff.max():.3e}"
    assert np.abs(ref).max() > 1e-2, f"{what}: reference is degenerate"  # a vacuous comparison must not pass
    return float(diff.max())


# ----------------------------------------------------------------------------------------------------- tests
def test_xvector_eval_matches_torch():
    head = _xvector()
    head.eval()
    ref = _torch_xvector(head).eval()
    x = _inputs()
    diff = _assert_close(_forward(head, x, np.ones((B, T), bool)), _run_torch(ref, x), "x-vector eval")
    print(f"x-vector eval: max abs diff {diff:.2e}")


def test_xvector_train_matches_torch_outputs_and_running_stats():
    head = _xvector(1)
    head.train()
    ref = _torch_xvector(head).train()
    old = [(np.asarray(t.norm.mean[...]), np.asarray(t.norm.var[...])) for t in head.tdnn]
    bn_inputs = []  # torch BatchNorm1d inputs [B, C, T'], to compute the batch statistics independently
    hooks = [layer.bn.register_forward_pre_hook(lambda _, args: bn_inputs.append(args[0].detach().double()))
             for layer in ref.tdnn]
    x = _inputs(1)
    # Both normalise with the batch mean and the BIASED batch variance in training mode.
    diff = _assert_close(_forward(head, x, np.ones((B, T), bool)), _run_torch(ref, x), "x-vector train")
    for h in hooks:
        h.remove()
    print(f"x-vector train: max abs diff {diff:.2e}")

    for i, (layer, tl, (m0, v0), z) in enumerate(zip(head.tdnn, ref.tdnn, old, bn_inputs, strict=True)):
        n = z.shape[0] * z.shape[2]  # B * T' = 171, 156, 138, 138, 138 frames
        batch_mean = z.mean((0, 2)).numpy()
        biased = z.var((0, 2), unbiased=False).numpy()
        unbiased = z.var((0, 2), unbiased=True).numpy()
        mean_k, var_k = np.asarray(layer.norm.mean[...]), np.asarray(layer.norm.var[...])
        mean_t, var_t = tl.bn.running_mean.numpy(), tl.bn.running_var.numpy()
        # Same momentum convention: flax momentum 0.9 and torch momentum 0.1 both give 0.9 * old + 0.1 * batch.
        np.testing.assert_allclose(mean_k, 0.9 * m0 + 0.1 * batch_mean, rtol=1e-4, atol=1e-5, err_msg=f"layer {i}")
        np.testing.assert_allclose(mean_k, mean_t, rtol=1e-4, atol=1e-5, err_msg=f"layer {i}")
        # Known convention difference: flax's BatchNorm updates the running variance with the BIASED batch variance,
        # torch's BatchNorm1d with the UNBIASED one (factor n / (n - 1)). Eval-mode outputs therefore differ by that
        # factor's effect after training; with n >= 138 frames per update it is below 1 %.
        np.testing.assert_allclose(var_k, 0.9 * v0 + 0.1 * biased, rtol=1e-4, atol=1e-5, err_msg=f"layer {i}")
        np.testing.assert_allclose(var_t, 0.9 * v0 + 0.1 * unbiased, rtol=1e-4, atol=1e-5, err_msg=f"layer {i}")
        np.testing.assert_allclose(var_t - var_k, 0.1 * biased / (n - 1), rtol=1e-2, atol=1e-6, err_msg=f"layer {i}")
        assert np.abs(var_t - var_k).max() > 1e-4  # the difference is real, and this test would see it vanish


def test_ecapa_eval_matches_torch():
    head = _ecapa()
    head.eval()
    ref = _torch_ecapa(head).eval()
    x = _inputs(2)
    diff = _assert_close(_forward(head, x, np.ones((B, T), bool)), _run_torch(ref, x), "ECAPA eval")
    print(f"ECAPA eval: max abs diff {diff:.2e}")


def test_padded_batch_matches_torch_on_each_unpadded_utterance():
    """Eval mode: kdjax on a padded batch (garbage in the padding) == torch on each utterance alone, unpadded."""
    rng = np.random.default_rng(3)
    x = _inputs(3)
    mask = np.arange(T)[None] < np.asarray(LENGTHS)[:, None]
    x_padded = np.where(mask[..., None], x, rng.normal(scale=1e3, size=x.shape)).astype(np.float32)
    for name, head, to_torch in (("x-vector", _xvector(4), _torch_xvector), ("ECAPA", _ecapa(4), _torch_ecapa)):
        head.eval()
        ref = to_torch(head).eval()
        ours = np.asarray(_forward(head, x_padded, mask))
        diffs = [_assert_close(ours[b], _run_torch(ref, x[b:b + 1, :n])[0], f"{name} utterance {b} ({n} frames)")
                 for b, n in enumerate(LENGTHS)]
        print(f"{name} padded: max abs diff per utterance {[f'{d:.2e}' for d in diffs]}")
