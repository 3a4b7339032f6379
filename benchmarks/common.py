"""Pieces the benchmark scripts share: a median timer and a randomly initialised distillation step."""
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
    """(TrainState, un-jitted train_step) of the distillation step with random teacher, student and heads."""
    import jax
    import ml_collections
    from flax import nnx

    from kdjax.distill.losses import make_heads
    from kdjax.distill.student import build_student
    from kdjax.distill.task import make_train_step
    from kdjax.models.encoder import Encoder
    from kdjax.train import optim
    from kdjax.train.state import TrainState

    teacher = Encoder(t_cfg, rngs=nnx.Rngs(0))
    student = build_student(s_cfg, None, "random", nnx.Rngs(1))
    heads = make_heads(loss_cfg, s_cfg, t_cfg, rngs=nnx.Rngs(2))
    opt = optim.make_optimizer(ml_collections.ConfigDict(optim.default_config()), total_steps=1000)
    t_def, t_params = nnx.split(teacher, nnx.Param)
    s_def, s_params = nnx.split(student, nnx.Param)
    h_def, h_params = nnx.split(heads, nnx.Param)
    params = {"student": s_params, "heads": h_params}
    state = TrainState.create(params, opt.tx.init(params), jax.random.PRNGKey(0), extra={"teacher": t_params})
    return state, make_train_step(s_def, h_def, t_def, loss_cfg, opt.tx, feature_grad_mult=feature_grad_mult)
