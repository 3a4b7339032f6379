"""Where the model to export comes from: an HF folder (the encoder alone) or a kdjax fine-tuning run (encoder + heads).

All knowledge of a fine-tuning run's layout is in `load_finetune_run`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from kdjax.errors import CheckpointError


def is_finetune_run(path: str | os.PathLike) -> bool:
    """True for a kdjax fine-tuning workdir (results.json + checkpoints/)."""
    p = Path(path)
    return (p / "results.json").is_file() and (p / "checkpoints").is_dir()


def load(path: str | os.PathLike):
    """(encoder, kws head or None, sv head or None) from an HF folder or a kdjax fine-tuning run."""
    p = Path(path)
    if is_finetune_run(p):
        return load_finetune_run(p)
    if (p / "config.json").is_file():
        from kdjax.models import hf

        return hf.from_pretrained(p), None, None
    raise CheckpointError(f"export: {p} is neither a Hugging Face folder (config.json + model.safetensors) nor a "
                          "kdjax fine-tuning run (results.json + checkpoints/)")


def load_finetune_run(workdir: str | os.PathLike):
    """(encoder, KWSDownstream or None, SVDownstream or None) of a fine-tuning run, at the step it exported (results.json
    ["best"]["step"], else the latest).

    Relies on: results.json["config"] (the run's ConfigDict as a dict, with config.task == "finetune"), the finetune
    task rebuilt from it (its `init`, `eval_graphdef` and data set metadata under config.finetune.data_dir), and
    checkpoints/ written by kdjax.train.checkpoint.Checkpointer holding a TrainState whose params + extra["stats"]
    merge into a FineTuneModel.
    """

    import jax
    import ml_collections
    from flax import nnx

    from kdjax.train import registry
    from kdjax.train.checkpoint import Checkpointer

    workdir = Path(workdir)
    results = json.loads((workdir / "results.json").read_text())
    if results.get("preempted"):
        raise CheckpointError(f"{workdir / 'results.json'}: the run was stopped before it finished (preempted); resume "
                              "it (run the same command again) before exporting it")
    if "config" not in results:
        raise CheckpointError(f"{workdir / 'results.json'} has no 'config': expected a kdjax run's results")
    config = ml_collections.ConfigDict(results["config"])
    if config.get("task") != "finetune":
        raise CheckpointError(f"{workdir}: config.task={config.get('task')!r}: expected a 'finetune' run")
    task = registry.make_task(config)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    ckpt = Checkpointer(str(workdir / "checkpoints"), save_every=0, keep=10**6)  # read only: no retention
    try:
        step = (results.get("best") or {}).get("step") or ckpt.latest_step()
        restored = ckpt.restore(abstract, step) if step is not None else None
    finally:
        ckpt.close()
    if restored is None:
        raise CheckpointError(f"{workdir / 'checkpoints'} holds no finished checkpoint")
    state, _ = restored
    model = nnx.merge(task.eval_graphdef, state.params, state.extra["stats"])
    model.eval()
    if model.encoder is None:  # a cached run trained heads only: its frozen encoder is the folder it was cached from
        from kdjax.models import hf

        return hf.from_pretrained(task.encoder_dir, **task.encoder_overrides), model.kws, model.sv
    return model.encoder, model.kws, model.sv
