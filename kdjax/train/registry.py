"""config.task -> task factory, resolved lazily so a run imports only its own task's module.

A task author adds one line to TASKS ("name": "module:factory", the factory called as factory(config) -> Task),
or sets config.task to "package.module:factory" directly.
"""
from __future__ import annotations

import importlib
from typing import Any

from kdjax.errors import ConfigError

TASKS: dict[str, str] = {
    "pretrain_hubert": "kdjax.pretrain.task:HubertPretraining",
    "finetune": "kdjax.finetune.task:FineTune",
    "distill": "kdjax.distill.task:Distillation",
}


def resolve(name: str) -> Any:
    """The factory registered as `name` (or named "module:factory")."""
    target = TASKS.get(name, name if ":" in name else None)
    if target is None:
        raise ConfigError(f"unknown task config.task={name!r}; known tasks: {sorted(TASKS)} "
                          "(or give 'package.module:factory')")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"config.task={name!r} names {target}, whose module cannot be imported: {e}") from e
    if not hasattr(module, attr):
        raise ConfigError(f"config.task={name!r} names {target}, but {module_name} has no {attr!r}")
    return getattr(module, attr)


def make_task(config: Any) -> Any:
    """Build the task object of `config.task`."""
    if "task" not in config or not config.task:
        raise ConfigError("config.task is not set; known tasks: " + ", ".join(sorted(TASKS)))
    return resolve(str(config.task))(config)
