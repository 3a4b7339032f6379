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
    """(TrainState, teacher params, un-jitted train_step(state, batch, teacher)) of kdjax's distillation step
    (kdjax.train.step's skeleton around the task's loss) with random teacher, student and heads."""
    import jax
    import ml_collections
    from flax import nnx

    from kdjax.distill.losses import distill_loss, make_heads
    from kdjax.distill.student import build_student
    from kdjax.distill.task import conv_groups
    from kdjax.distill.teacher import Teacher, fingerprint
    from kdjax.models.encoder import Encoder
    from kdjax.train import optim
    from kdjax.train.state import TrainState
    from kdjax.train.step import make_train_step

    t_def, t_params = nnx.split(Encoder(t_cfg, rngs=nnx.Rngs(0)), nnx.Param)
    teacher = Teacher("random", t_cfg, t_def, t_params, fingerprint({}))
    student = build_student(s_cfg, None, "random", nnx.Rngs(1))
    heads = make_heads(loss_cfg, s_cfg, t_cfg, rngs=nnx.Rngs(2))
    cfg = ml_collections.ConfigDict(optim.default_config())
    cfg.groups = conv_groups(feature_grad_mult)
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
