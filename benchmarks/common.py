"""Pieces the benchmark scripts share: a median timer, random kdjax set-ups (distillation step, SV fine-tuning step)
and the same work in PyTorch (transformers' HubertModel), imported only when called."""
from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call (compilation for JAX)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def distill_setup(t_cfg, s_cfg, loss_cfg, feature_grad_mult: float = 0.1):
    """(TrainState, teacher params, un-jitted train_step(state, batch, teacher)) of kdjax's distillation step
    (kdjax.train.step's skeleton around the task's loss) with random teacher, student and heads."""
    import jax
    from flax import nnx

    from kdjax.distill.losses import distill_loss, make_heads
    from kdjax.distill.student import build_student
    from kdjax.distill.teacher import Teacher, fingerprint
    from kdjax.models.encoder import Encoder
    from kdjax.train import optim
    from kdjax.train.state import TrainState
    from kdjax.train.step import make_train_step

    t_def, t_params = nnx.split(Encoder(t_cfg, rngs=nnx.Rngs(0)), nnx.Param)
    teacher = Teacher("random", t_cfg, t_def, t_params, fingerprint({}))
    student = build_student(s_cfg, None, "random", nnx.Rngs(1))
    heads = make_heads(loss_cfg, s_cfg, t_cfg, rngs=nnx.Rngs(2))
    cfg = optim.default_config()
    cfg.groups = {"feature_encoder": {"grad_scale": float(feature_grad_mult)}}  # kdjax.distill.task.conv_groups
    opt = optim.make_optimizer(cfg, total_steps=1000, param_labels=optim.encoder_labels, labels=optim.ENCODER_GROUPS)
    s_def, s_params = nnx.split(student, nnx.Param)
    h_def, h_params = nnx.split(heads, nnx.Param)
    params = {"student": s_params, "heads": h_params}
    state = TrainState.create(params, opt.tx.init(params), jax.random.PRNGKey(0))

    def loss(params, state, batch, teacher_params):
        targets = teacher.targets(teacher_params, batch["input_values"], batch.get("attention_mask"),
                                  loss_cfg.target_layers)
        value, metrics = distill_loss(nnx.merge(s_def, params["student"]), nnx.merge(h_def, params["heads"]),
                                      targets, batch, loss_cfg, rng=state.step_key(), deterministic=False)
        return value, (metrics, state.extra)

    return state, t_params, make_train_step(loss, opt)


def sv_setup(enc_cfg, num_speakers: int, width: int = 512, embed_dim: int = 512, lr: float = 1e-4):
    """(state, un-jitted step) of SV fine-tuning on a frozen random encoder: weighted layer sum, x-vector, AAM, AdamW.

    The encoder runs deterministically and its hidden states are under stop_gradient (no backward through it), as the
    fine-tuning task's frozen mode; only the SV head (and its BatchNorm statistics) changes.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from kdjax.finetune.model import SVDownstream
    from kdjax.models.encoder import Encoder

    encoder = Encoder(enc_cfg, rngs=nnx.Rngs(0))
    head = SVDownstream(enc_cfg.num_hidden_layers + 1, enc_cfg.hidden_size, num_speakers, width=width,
                        embed_dim=embed_dim, rngs=nnx.Rngs(1))
    e_def, e_params = nnx.split(encoder, nnx.Param)
    h_def, h_params, h_stats = nnx.split(head, nnx.Param, nnx.BatchStat)
    tx = optax.adamw(lr)
    state = {"params": h_params, "stats": h_stats, "opt": tx.init(h_params), "encoder": e_params}

    def step(state, batch):
        out = nnx.merge(e_def, state["encoder"])(batch["input_values"], batch["attention_mask"],
                                                  output_hidden_states=True)
        hidden = jax.lax.stop_gradient(jnp.stack(out.hidden_states))

        def loss_fn(params, stats):
            model = nnx.merge(h_def, params, stats, copy=True)
            loss, _ = model.loss(hidden, out.frame_mask, batch["speaker"])
            return loss, nnx.state(model, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["stats"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {**state, "params": params, "stats": stats, "opt": opt}, {"loss": loss}

    return state, step


# ---- the same work in PyTorch (transformers' HubertModel); torch is imported only when these are called ----------
def torch_hubert(cfg, device: str, train: bool, seed: int = 0):
    """transformers' HubertModel (WavLMModel, Wav2Vec2Model by cfg.model_type) with random weights for a kdjax
    EncoderConfig (same architecture fields)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model_cls, config_cls = {"wavlm": (transformers.WavLMModel, transformers.WavLMConfig),
                             "wav2vec2": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config)}.get(
        cfg.model_type, (transformers.HubertModel, transformers.HubertConfig))
    fields = {k: v for k, v in cfg.to_hf().items() if k not in ("model_type", "architectures")}
    model = model_cls(config_cls(**fields)).to(device)
    return model.train() if train else model.eval()


def _autocast(device: str, dtype: str):
    import torch

    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def _compiled(module, backend: str | None):
    import torch

    return torch.compile(module, backend=backend) if backend else module


def torch_encoder_forward(cfg, x, device: str = "cpu", dtype: str = "float32", compile_backend: str | None = None):
    """A no-argument callable: HubertModel forward (no grad, autocast bfloat16 when dtype says so)."""
    import torch

    model = _compiled(torch_hubert(cfg, device, train=False), compile_backend)
    xt = torch.from_numpy(x).to(device)

    def run():
        with torch.no_grad(), _autocast(device, dtype):
            return model(xt).last_hidden_state

    return run


def torch_distill_step(t_cfg, s_cfg, x, mask, target_layers=(4, 8, 12), device: str = "cpu",
                       dtype: str = "float32", compile_backend: str | None = None):
    """A no-argument callable: one DistilHuBERT step in PyTorch (teacher fwd, student fwd/bwd, s3prl heads, AdamW).

    The heads are s3prl's expand-last prediction heads; L1 + cosine loss in float32; gradient clipping to norm 5.
    With dtype bfloat16, teacher and student run under autocast (float32 weights), as kdjax's compute dtype.
    """
    import torch

    teacher = torch_hubert(t_cfg, device, train=False)
    student = torch_hubert(s_cfg, device, train=True, seed=1)
    for p in teacher.parameters():
        p.requires_grad_(False)
    n, d_s, d_t = len(target_layers), s_cfg.hidden_size, t_cfg.hidden_size
    expand = torch.nn.Linear(d_s, d_s * n).to(device)
    split_w = torch.nn.Parameter(torch.empty(n, d_s, d_t, device=device).uniform_(-d_s ** -0.5, d_s ** -0.5))
    split_b = torch.nn.Parameter(torch.empty(n, d_t, device=device).uniform_(-d_s ** -0.5, d_s ** -0.5))
    params = list(student.parameters()) + list(expand.parameters()) + [split_w, split_b]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-6)
    xt, mt = torch.from_numpy(x).to(device), torch.from_numpy(mask).long().to(device)

    def targets(xt, mt):
        with torch.no_grad():
            hs = teacher(xt, attention_mask=mt, output_hidden_states=True).hidden_states
            return torch.stack([hs[i] for i in target_layers], 1).float()  # B x N x T x D

    def loss_fn(xt, mt, target):
        h = student(xt, attention_mask=mt).last_hidden_state
        b, t, _ = h.shape
        z = torch.nn.functional.gelu(expand(h)).reshape(b, t, n, 1, d_s)
        pred = (torch.einsum("btnim,nmo->btnio", z, split_w.to(z.dtype)).squeeze(3) + split_b).permute(0, 2, 1, 3)
        pred = pred.float()
        rec = (pred - target).abs().mean()
        sim = -torch.nn.functional.logsigmoid(torch.nn.functional.cosine_similarity(pred, target, dim=-1)).mean()
        return rec + sim

    targets_c, loss_c = _compiled(targets, compile_backend), _compiled(loss_fn, compile_backend)

    def run():
        with _autocast(device, dtype):
            target = targets_c(xt, mt)
            loss = loss_c(xt, mt, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return loss

    return run


def _torch_xvector(d_in: int, hidden: int = 512, widths=(512, 512, 512, 512, 1500), embed_dim: int = 512):
    """SUPERB x-vector layers in PyTorch: projector Linear, 5 TDNN (Conv1d, ReLU, BatchNorm1d), embedding Linear."""
    from torch import nn

    dims = (hidden, *widths)
    tdnn = nn.Sequential(*[nn.Sequential(nn.Conv1d(dims[i], dims[i + 1], k, dilation=dl), nn.ReLU(),
                                         nn.BatchNorm1d(dims[i + 1], eps=1e-5))
                           for i, (k, dl) in enumerate(zip((5, 3, 3, 1, 1), (1, 2, 3, 1, 1)))])
    return nn.ModuleDict(dict(projector=nn.Linear(d_in, hidden), tdnn=tdnn, embedding=nn.Linear(2 * widths[-1],
                                                                                                   embed_dim)))


def torch_sv_step(cfg, x, speakers, num_speakers: int, device: str = "cpu", dtype: str = "float32",
                  compile_backend: str | None = None, width: int = 512, embed_dim: int = 512):
    """A no-argument callable: SV fine-tuning on a frozen HubertModel (weighted layer sum, x-vector, AAM, AdamW)."""
    import math

    import torch

    encoder = torch_hubert(cfg, device, train=False)
    for p in encoder.parameters():
        p.requires_grad_(False)
    layers = cfg.num_hidden_layers + 1
    widths = (width,) * 4 + (int(width * 1500 / 512),)  # as kdjax's SVDownstream: SUPERB's 1500 at width 512
    head = _torch_xvector(cfg.hidden_size, width, widths, embed_dim).to(device).train()
    mix = torch.nn.Parameter(torch.zeros(layers, device=device))
    classes = torch.nn.Parameter(torch.randn(embed_dim, num_speakers, device=device)
                                 * (2.0 / (embed_dim + num_speakers)) ** 0.5)
    params = list(head.parameters()) + [mix, classes]
    opt = torch.optim.AdamW(params, lr=1e-4)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(speakers).long().to(device)
    scale, margin = 30.0, 0.2

    def hidden_states(xt):
        with torch.no_grad():
            return torch.stack(encoder(xt, output_hidden_states=True).hidden_states)  # L x B x T x D

    def loss_fn(hs, yt):
        feats = torch.einsum("l,lbtd->btd", torch.softmax(mix, 0).to(hs.dtype), hs)
        h = head["tdnn"](head["projector"](feats).transpose(1, 2))  # B x C x T'
        emb = head["embedding"](torch.cat([h.mean(-1), (h.var(-1, unbiased=False) + 1e-5).sqrt()], -1)).float()
        cos = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(classes, dim=0)
        cos = cos.clamp(-1, 1)
        phi = cos * math.cos(margin) - (1 - cos * cos).clamp(1e-7, 1).sqrt() * math.sin(margin)
        phi = torch.where(cos > math.cos(math.pi - margin), phi, cos - math.sin(math.pi - margin) * margin)
        onehot = torch.nn.functional.one_hot(yt, num_speakers).bool()
        return torch.nn.functional.cross_entropy(scale * torch.where(onehot, phi, cos), yt)

    hidden_c, loss_c = _compiled(hidden_states, compile_backend), _compiled(loss_fn, compile_backend)

    def run():
        with _autocast(device, dtype):
            loss = loss_c(hidden_c(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return run
