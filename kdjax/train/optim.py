"""Optimizers from config (optax). Defaults follow the s3prl distiller runner.

AdamW lr 2e-4, betas (0.9, 0.98), eps 1e-6, weight decay 1e-6, gradient clipping to global norm 5, learning rate
warmed up linearly from 0 over the first 7% of the updates then decayed linearly to 0 at the last one.

    opt = make_optimizer(config.optim, total_steps=config.total_steps, param_labels=task_label_fn)
    opt_state = opt.tx.init(params); updates, opt_state = opt.tx.update(grads, opt_state, params)
    opt.lr(step)   # the learning rate of the default group at loop step `step`

Parameter groups: `param_labels(params) -> pytree of str` labels every leaf (`encoder_labels` is the one labelling of
kdjax's encoder tasks: "feature_encoder" for the conv stack, "encoder", "heads"); each label is configured under
`config.optim.groups.<label>` with `lr` (defaults to optim.lr, same warm-up/decay shape), `frozen` (True: the update
is exactly zero, no weight decay, and the params stay bit-identical) and `grad_scale` (s3prl's GradMultiply: the
group's gradient is multiplied before clipping; 0 means frozen). This is kdjax's one mechanism for conv-stack
gradients (distillation's feature_grad_mult, fine-tuning's frozen conv stack and frozen encoder): `Optimizer.prepare`
zeroes frozen gradients and scales the others before the global norm is taken, and a zeroed gradient lets XLA drop
the backward pass that would compute it.

Weight-decay groups: `no_decay=("bias",)` applies no weight decay to params whose path (e.g.
"encoder/layers/0/attention/q_proj/bias") contains one of the strings, weight_decay to the rest (s3prl's
get_grouped_parameters: 0.01 on the rest, 0 on names containing "bias", "LayerNorm.bias" or "LayerNorm.weight").

Gradient accumulation: `accum_steps=k` wraps everything in optax.MultiSteps: the loop step still consumes one
batch, params change every k steps with the mean gradient, and the schedule counts updates (total_steps // k).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

from kdjax.errors import ConfigError


class Fields(dict):
    """A dict with attribute access: default_config() where ml_collections is absent (the accelerator images), since
    make_optimizer reads its config only through attributes and .get."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


def default_config() -> Any:
    """The optimizer fields every config carries under `config.optim` (an ml_collections.ConfigDict)."""
    fields = dict(name="adamw", lr=2e-4, schedule="linear", warmup_frac=0.07, warmup_steps=-1, b1=0.9, b2=0.98,
                  eps=1e-6, weight_decay=1e-6, no_decay=(), clip_norm=5.0, accum_steps=1)
    try:
        import ml_collections
    except ImportError:
        return Fields(fields, groups={})
    return ml_collections.ConfigDict(dict(fields, groups=ml_collections.ConfigDict()))


def make_schedule(cfg: Any, total_updates: int, lr: float | None = None) -> optax.Schedule:
    """Learning rate per optimizer update: linear warm-up from 0, then linear/cosine decay to 0 or constant."""
    lr = float(cfg.lr if lr is None else lr)
    total = max(int(total_updates), 1)
    warm = int(cfg.warmup_steps) if int(cfg.warmup_steps) >= 0 else int(round(float(cfg.warmup_frac) * total))
    warm = min(warm, total)
    if cfg.schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, max(total - warm, 1))
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, max(total - warm, 1))
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ConfigError(f"config.optim.schedule={cfg.schedule!r}; expected 'linear', 'cosine' or 'constant'")
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def param_path(path: tuple) -> str:
    """'encoder/layers/0/attention/q_proj/bias' for a pytree key path (the name the no_decay patterns match)."""
    parts = []
    for k in path:
        k = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(k))
    return "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)  # nnx.State leaves end in "value"


def decay_mask(no_decay: tuple[str, ...]) -> Callable[[Any], Any] | None:
    """A weight-decay mask: False for params whose path contains any of `no_decay` (s3prl's rule: any "bias")."""
    patterns = tuple(str(p) for p in (no_decay or ()))
    if not patterns:
        return None

    def mask(params: Any) -> Any:
        import jax

        return jax.tree_util.tree_map_with_path(lambda path, _: not any(p in param_path(path) for p in patterns),
                                                params)

    return mask


def _base(cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask(tuple(cfg.get("no_decay", ()) or ())))
    if cfg.name == "adam":
        return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.name == "sgd":
        return optax.sgd(schedule)
    raise ConfigError(f"config.optim.name={cfg.name!r}; expected 'adamw', 'adam' or 'sgd'")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation plus the schedule of its default group (for logging)."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    accum_steps: int
    param_labels: Callable[[Any], Any] | None = None
    grad_scales: tuple[tuple[str, float], ...] = ()  # (label, scale); 0.0 = frozen

    def prepare(self, grads: Any) -> Any:
        """Frozen groups' gradients replaced by zeros (so their backward pass is dead code), others scaled; `tx`
        starts with the same step, so this is for what the optimizer sees (e.g. its gradient norm)."""
        scales = dict(self.grad_scales)
        if not scales:
            return grads
        labels = self.param_labels(grads)

        def one(label, g):
            scale = scales.get(label, 1.0)
            return jax.numpy.zeros_like(g) if scale == 0.0 else (g if scale == 1.0 else g * scale)

        return jax.tree.map(one, labels, grads)

    def lr(self, step: Any) -> Any:
        """Learning rate of the default group at loop step `step` (counts updates under accumulation)."""
        return self.schedule(step // self.accum_steps)


def make_optimizer(cfg: Any, total_steps: int, param_labels: Callable[[Any], Any] | None = None,
                   labels: list[str] | None = None) -> Optimizer:
    """The optimizer of `config.optim` over `total_steps` loop steps; see the module docstring for groups."""
    accum = int(cfg.get("accum_steps", 1) or 1)
    if accum < 1:
        raise ConfigError(f"config.optim.accum_steps={accum} must be >= 1")
    total_updates = max(int(total_steps) // accum, 1)
    schedule = make_schedule(cfg, total_updates)
    clip = [optax.clip_by_global_norm(float(cfg.clip_norm))] if cfg.clip_norm and cfg.clip_norm > 0 else []
    groups = dict(cfg.get("groups", {}) or {})
    scales: list[tuple[str, float]] = []
    if param_labels is None:
        if groups:
            raise ConfigError(f"config.optim.groups {sorted(groups)} is set but this task labels no param groups")
        tx = optax.chain(*clip, _base(cfg, schedule))
    else:
        names = sorted(set(labels)) if labels else sorted(groups)
        if not names:
            raise ConfigError("a param_labels function needs its labels (labels=[...]) or config.optim.groups")
        unknown = set(groups) - set(names)
        if unknown:
            raise ConfigError(f"config.optim.groups has {sorted(unknown)}, which no param carries; labels: {names}")
        inner = {}
        for n in names:
            g = dict(groups.get(n, {}))
            bad = set(g) - {"lr", "frozen", "grad_scale"}
            if bad:
                raise ConfigError(f"config.optim.groups.{n} has unknown fields {sorted(bad)}; expected lr, frozen, "
                                  "grad_scale")
            scale = 0.0 if bool(g.get("frozen", False)) else float(g.get("grad_scale", 1.0))
            if scale < 0:
                raise ConfigError(f"config.optim.groups.{n}.grad_scale={scale} must be >= 0")
            if scale != 1.0:
                scales.append((n, scale))
            inner[n] = optax.set_to_zero() if scale == 0.0 else _base(cfg, make_schedule(cfg, total_updates,
                                                                                       g.get("lr")))
        prepare = Optimizer(optax.identity(), schedule, accum, param_labels, tuple(scales)).prepare
        by_group = [optax.stateless(lambda g, _=None: prepare(g))] if scales else []
        tx = optax.chain(*by_group, *clip, optax.multi_transform(inner, param_labels))
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return Optimizer(tx=tx, schedule=schedule, accum_steps=accum, param_labels=param_labels,
                     grad_scales=tuple(scales))


ENCODER_GROUPS = ["feature_encoder", "encoder", "heads"]


def path_names(path: tuple) -> list[str]:
    """The keys of a pytree path (DictKey, GetAttrKey or plain entries) as strings."""
    return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def encoder_label(path: tuple) -> str:
    """The group of a parameter of an encoder task: the conv stack of params["student"|"encoder"] is
    "feature_encoder", the rest of that encoder "encoder", everything else (heads, layer weights) "heads"."""
    names = path_names(path)
    if names and names[0] in ("student", "encoder"):
        return "feature_encoder" if len(names) > 1 and names[1] == "feature_encoder" else "encoder"
    return "heads"


def encoder_labels(params: Any) -> Any:
    """`encoder_label` of every leaf of a params pytree (for make_optimizer's param_labels)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: encoder_label(path), params)
