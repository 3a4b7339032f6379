"""Mesh, parameter sharding rules and global batches: the pmap pattern (replicated params, sharded batch) with jit.

    maybe_initialize_distributed(config)        # jax.distributed.initialize() when launched multi-process
    mesh = make_mesh(config.mesh)               # axes ("data", "fsdp") over every device of every process
    shardings = state_sharding(abstract_state, mesh, fsdp_min_size=2**14)
    batch = to_global(host_batch, mesh)         # host-local numpy rows -> one global jax.Array a leaf

The batch is split along its first axis over all devices (mesh axes ("data", "fsdp"); with fsdp=1 that is the
`data` axis alone). Params and optimizer state are replicated, or with fsdp>1 each large array is split on its
largest dimension divisible by the fsdp size (ZeRO-3 style; XLA inserts the all-gathers).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from kdjax.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(config: Any = None) -> bool:
    """Call jax.distributed.initialize() when KDJAX_DISTRIBUTED=1 or config.distributed; True when it did."""
    wanted = os.environ.get("KDJAX_DISTRIBUTED", "0") == "1" or bool(getattr(config, "distributed", False))
    if not wanted or jax.distributed.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if os.environ.get("KDJAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["KDJAX_COORDINATOR_ADDRESS"]
    if os.environ.get("KDJAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["KDJAX_NUM_PROCESSES"])
    if os.environ.get("KDJAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["KDJAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)  # otherwise from the cluster (TPU metadata, SLURM, ...)
    return True


def make_mesh(mesh_config: Any = None, devices: list | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: every device of every process, or the first
    `config.mesh.devices` of a single process); fsdp size from config."""
    count = int(getattr(mesh_config, "devices", 0) or 0) if mesh_config is not None else 0
    if devices is None and count > 0:  # a subset of this process's devices (single-process runs)
        if jax.process_count() > 1 or count > jax.device_count():
            raise ConfigError(f"config.mesh.devices={count}: expected 0 (all devices) or at most "
                              f"{jax.device_count()} in a single-process run")
        devices = jax.devices()[:count]
    devices = list(jax.devices() if devices is None else devices)
    fsdp = int(getattr(mesh_config, "fsdp", 1) or 1) if mesh_config is not None else 1
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(f"config.mesh.fsdp={fsdp} must be >= 1 and divide the device count {len(devices)}")
    shape = (len(devices) // fsdp, fsdp)
    return jax.make_mesh(shape, BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """The fully replicated sharding over `mesh`."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over all mesh devices (axes "data" then "fsdp")."""
    return NamedSharding(mesh, P(BATCH_AXES))


def param_spec(shape: tuple[int, ...], fsdp: int, fsdp_min_size: int = 2**14) -> P:
    """Replicated, or with fsdp>1 and a large enough array, split on its largest dim divisible by fsdp."""
    if fsdp <= 1 or not shape or int(np.prod(shape)) < fsdp_min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
    for d in dims:
        if shape[d] % fsdp == 0:
            return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
    return P()


def state_sharding(abstract_state: Any, mesh: Mesh, fsdp_min_size: int = 2**14) -> Any:
    """A NamedSharding for every leaf of a (possibly abstract) train state, by `param_spec`."""
    fsdp = mesh.shape["fsdp"]

    def one(x):
        return NamedSharding(mesh, param_spec(tuple(getattr(x, "shape", ())), fsdp, fsdp_min_size))

    return jax.tree.map(one, abstract_state)


def to_global(host_batch: Any, mesh: Mesh) -> Any:
    """Host-local rows (a pytree of numpy arrays) -> global jax.Arrays split along axis 0 over the mesh."""
    sharding = batch_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ConfigError("every leaf of a batch needs a leading batch axis; got a scalar")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, host_batch)
