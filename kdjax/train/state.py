"""The train state every task returns from `init`: a pytree the loop shards, donates, checkpoints and restores."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """step (int32 scalar), params (trainable pytree, e.g. nnx.State), opt_state (optax), rng (raw uint32 key),
    extra (anything else the task must carry and checkpoint: batch stats, EMA params, frozen teacher, ...).

    The rng is the run's base key and never changes; a step draws its randomness with `step_key()`, so a resumed
    run draws exactly what an uninterrupted one does.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extra: Any = None

    @classmethod
    def create(cls, params: Any, opt_state: Any, rng: jax.Array, extra: Any = None) -> "TrainState":
        """A state at step 0."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng, extra=extra)

    def step_key(self, *names: int) -> jax.Array:
        """The key of the current step (fold_in(rng, step)), optionally folded further with integers."""
        key = jax.random.fold_in(self.rng, self.step)
        for n in names:
            key = jax.random.fold_in(key, n)
        return key


def param_count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(getattr(x, "size", 0) for x in jax.tree.leaves(tree)))
