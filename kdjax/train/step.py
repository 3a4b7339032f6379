"""The gradient-apply skeleton every task's training step uses (one place for the step's order of operations).

    train_step = make_train_step(task.loss, task.optimizer)   # the loop jits it: (state, batch, teacher)
    state, metrics = train_step(state, batch, teacher_params)

A task's `loss(params, state, batch, teacher) -> (loss, (metrics, extra))` is differentiated w.r.t. params; then the
optax update (kdjax.train.optim's chain: per-group freezing and gradient scaling, clipping, accumulation), params
updated, `extra` replaced (e.g. BatchNorm statistics), step + 1. `grad_norm` (the same for every task) is the global
norm of the gradient after freezing and scaling, before clipping.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from kdjax.train.optim import Optimizer
from kdjax.train.state import TrainState

LossFn = Callable[[Any, TrainState, Any, Any], tuple[jax.Array, tuple[dict[str, jax.Array], Any]]]


def grad_norm(grads: Any) -> jax.Array:
    """Global L2 norm of a gradient pytree."""
    return optax.tree.norm(grads)


def apply_gradients(state: TrainState, grads: Any, opt: Optimizer, *, extra: Any = None,
                    metrics: dict[str, jax.Array] | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from raw gradients; returns the next state and metrics with grad_norm and lr added."""
    updates, opt_state = opt.tx.update(grads, state.opt_state, state.params)  # group scaling, clipping, accumulation
    params = optax.apply_updates(state.params, updates)
    metrics = {**(metrics or {}), "grad_norm": grad_norm(opt.prepare(grads)), "lr": opt.lr(state.step)}
    new_extra = state.extra if extra is None else extra
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=new_extra), metrics


def make_train_step(loss_fn: LossFn, opt: Optimizer) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
    """A pure `train_step(state, batch, teacher) -> (state, metrics)` around a task's loss function."""

    def train_step(state: TrainState, batch: Any, teacher: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch,
                                                                                     teacher)
        return apply_gradients(state, grads, opt, extra=extra, metrics={"loss": loss, **metrics})

    return train_step
