"""Unknown config fields are rejected here, for every task: a misspelt field must never be silently ignored."""
from __future__ import annotations

import ml_collections

from kdjax.errors import ConfigError


def check_fields(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, where: str = "config") -> None:
    """Raise ConfigError naming the first field of `config` that `defaults` lacks, and the known ones.

    An empty ConfigDict in `defaults` (e.g. optim.groups, finetune.encoder_overrides) holds free-form entries.
    """
    for key in config.keys():
        if key not in defaults:
            raise ConfigError(f"unknown config field {where}.{key}; known fields of {where}: {sorted(defaults.keys())}")
        value, reference = config[key], defaults[key]
        if isinstance(reference, ml_collections.ConfigDict) and len(reference) and isinstance(
                value, ml_collections.ConfigDict):
            check_fields(value, reference, f"{where}.{key}")

