"""The frozen teacher of distillation and one-stage fine-tuning: loaded once, never trained, never checkpointed.

    teacher = Teacher.load("runs/teacher_hf", dtype="bfloat16")
    targets = teacher.targets(teacher_params, input_values, attention_mask, (4, 8, 12))   # inside the jitted step

The loop places `teacher.params` on the devices once (replicated) and passes them to every step as an argument that is
neither donated nor part of the TrainState, so checkpoints hold the student, heads, optimizer and iterator states only.
`fingerprint` (sha256 of the weights and config) is recorded in the workdir: resuming with other weights fails.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from kdjax.distill.losses import teacher_targets
from kdjax.models.config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen encoder: its path, config, graphdef, host params (numpy) and fingerprint."""

    path: str
    config: EncoderConfig
    graphdef: Any
    params: Any
    fingerprint: str

    @classmethod
    def load(cls, path: str, **config_overrides: Any) -> "Teacher":
        """Load an HF checkpoint folder shape-first (no random weights are drawn and thrown away)."""
        from kdjax.models.hf import load_state

        config, graphdef, params = load_state(path, **config_overrides)
        return cls(str(path), config, graphdef, params, fingerprint(params, config))

    @property
    def num_params(self) -> int:
        """Number of scalars in the teacher's params."""
        return int(sum(x.size for x in jax.tree.leaves(self.params)))

    def module(self, params: Any = None) -> nnx.Module:
        """The encoder module with `params` (default: the host params)."""
        return nnx.merge(self.graphdef, self.params if params is None else params)

    def targets(self, params: Any, input_values: jax.Array, attention_mask: jax.Array | None,
                layers: Sequence[int]) -> jax.Array:
        """The teacher's hidden states of `layers`, [N, B, T, D] float32, no gradient (see losses.teacher_targets)."""
        return teacher_targets(self.module(params), input_values, attention_mask, layers)

    def record(self) -> dict[str, str]:
        """What a workdir records about its teacher."""
        return {"path": self.path, "fingerprint": self.fingerprint}


def fingerprint(params: Any, config: EncoderConfig | None = None) -> str:
    """sha256 of every parameter (path, dtype, shape, bytes, in tree order) and, if given, the architecture."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        h.update(array.tobytes())
    if config is not None:
        h.update(json.dumps(config.to_hf(), sort_keys=True).encode())
    return h.hexdigest()[:16]
