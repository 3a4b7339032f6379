"""Memory knobs leave the distillation update unchanged: remat (recompute activations in the backward pass) and
gradient accumulation (config.optim.accum_steps, optax.MultiSteps)."""
import jax
import numpy as np
import pytest

from kdjax.distill.task import Distillation
from tests.hf_utils import batch, save_tiny

from . import helpers

TOL = 1e-5
# both sides of every comparison compile the same way; -O0 halves the XLA:CPU compile time of the step
FAST = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("teacher"), "hubert_base_like", seed=3, conv_stride=(5, 4, 4))


def _task(teacher, data_dir, *, remat=False, accum=1, dropout=0.1):
    config = helpers.config(teacher, data_dir, 8)
    config.distill.student.remat = remat
    config.optim.accum_steps = accum
    config.optim.lr = 1e-3
    s = config.distill.student
    s.hidden_dropout = s.attention_dropout = s.activation_dropout = dropout
    task = Distillation(config)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    teacher = task.teacher().params
    compiled = {}

    def step(state, batch):
        rows = batch["input_values"].shape[0]
        if rows not in compiled:
            compiled[rows] = jax.jit(task.train_step).lower(state, batch, teacher).compile(compiler_options=FAST)
        return compiled[rows](state, batch, teacher)

    return task, state, step


def _params(state):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}


def _batch(rows, length=1600, seed=0):
    x, mask = batch(seed=seed, lengths=(length,) * rows)
    return {"input_values": x, "attention_mask": mask}


def test_remat_gives_the_same_params_after_two_steps(teacher, tiny_data_dir):
    """With dropout on: remat recomputes the forward pass with the same keys, so the masks are the same too."""
    out = {}
    for remat in (False, True):
        task, state, step = _task(teacher, tiny_data_dir, remat=remat)
        assert task.student_config.remat == remat
        for i in range(2):
            state, metrics = step(state, _batch(4, seed=i))
        out[remat] = (_params(state), float(metrics["loss"]))
    assert helpers.max_diff(out[False][0], out[True][0]) < TOL
    assert abs(out[False][1] - out[True][1]) < TOL


def test_accumulating_two_half_batches_equals_one_full_batch(teacher, tiny_data_dir):
    """accum_steps=2 over rows [0:2] then [2:4] == one step over rows [0:4].

    The loss is a mean over valid frames, so every row has the same length (equal frame counts make the mean of the
    two micro-batch means the full-batch mean); dropout is off because its masks are drawn per step and per row.
    """
    full = _batch(4)
    task, state, step = _task(teacher, tiny_data_dir, dropout=0.0)
    one, _ = step(state, full)
    task2, state2, step2 = _task(teacher, tiny_data_dir, accum=2, dropout=0.0)
    before = _params(state2)
    half, _ = step2(state2, {k: v[:2] for k, v in full.items()})
    assert helpers.max_diff(_params(half), before) == 0.0  # the first micro-batch only accumulates
    two, _ = step2(half, {k: v[2:] for k, v in full.items()})
    assert int(two.step) == 2 and int(one.step) == 1
    diff = helpers.max_diff(_params(two), _params(one))
    assert diff < TOL, diff
    assert helpers.max_diff(_params(two), before) > 1e-4  # and the update did happen
