"""The teacher lives outside the train state: checkpoints hold no teacher tensor, and resuming with another teacher
fails naming both fingerprints."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdjax.distill.teacher import Teacher
from kdjax.errors import CheckpointError
from kdjax.train.loop import train_and_evaluate
from tests.distill.test_task import _config
from tests.hf_utils import save_tiny


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return [str(save_tiny(root / name, "hubert_base_like", seed=seed, conv_stride=(5, 4, 4)))
            for name, seed in (("a", 3), ("b", 4))]


def test_checkpoint_holds_no_teacher_and_another_teacher_cannot_resume(teachers, tiny_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config("runlocal,steps=2", teachers[0], tiny_data_dir)
    config.checkpoint.async_save = False
    results = train_and_evaluate(config, workdir)
    step_dir = os.path.join(workdir, "checkpoints", "2", "state")
    tree = ocp.StandardCheckpointer().metadata(step_dir)
    tree = getattr(tree, "item_metadata", tree)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths and not any("teacher" in p for p in paths), paths
    assert {p.split("'")[3] for p in paths if p.startswith("['params']")} == {"student", "heads"}
    # by size: the saved arrays are the student and heads, their two Adam moments and a few scalars (step, rng,
    # Adam's count); a teacher would add num_params * 4 bytes
    teacher = Teacher.load(teachers[0])
    saved = sum(int(np.prod(m.shape)) * np.dtype(m.dtype).itemsize for m in jax.tree.leaves(tree))
    trained = results["param_count"] * 4 * 3
    assert trained <= saved < trained + 1024 < trained + teacher.num_params * 4, (saved, trained, teacher.num_params)
    assert results["teacher"] == {"path": teachers[0], "fingerprint": teacher.fingerprint}

    other = Teacher.load(teachers[1]).fingerprint
    assert other != teacher.fingerprint
    config = _config("runlocal,steps=4", teachers[1], tiny_data_dir)
    with pytest.raises(CheckpointError, match=rf"{teacher.fingerprint}.*{teachers[1]}.*{other}"):
        train_and_evaluate(config, workdir)


def test_teacher_loads_shape_first_and_equals_from_pretrained(teachers):
    import kdjax
    from flax import nnx

    teacher = Teacher.load(teachers[0])
    ref = nnx.state(kdjax.from_pretrained(teachers[0]), nnx.Param)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(teacher.params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert Teacher.load(teachers[0]).fingerprint == teacher.fingerprint  # deterministic
