"""Config files on the command line: `configs/x.py[:variant args]` plus `--config.a.b=value` overrides, checked.

    config, workdir = parse(["kdjax", "--config=configs/x.py:runlocal", "--workdir=DIR", "--config.optim.lr=1e-4"])

An override of a field the config does not have is a ConfigError naming the field and the fields that exist there.
"""
from __future__ import annotations

import re
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from kdjax.errors import ConfigError

_OVERRIDE = re.compile(r"^--?config\.([^=\s]+)")


def _define(fv: flags.FlagValues, argv: Sequence[str] | None) -> None:
    config_flags.DEFINE_config_file("config", None, "experiment config file, configs/x.py[:variant args]",
                                    flag_values=fv, lock_config=True, sys_argv=list(argv) if argv else None)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, event files, results.json)", flag_values=fv)


def _load(config_path: str) -> ml_collections.ConfigDict:
    fv = flags.FlagValues()
    argv = ["kdjax", f"--config={config_path}"]
    _define(fv, argv)
    try:
        fv(argv)
    except Exception as e:  # noqa: BLE001 - absl/ml_collections raise several types for a bad file
        raise ConfigError(f"cannot load config {config_path}: {e}") from e
    return fv.config


def check_overrides(config_path: str, argv: Sequence[str]) -> None:
    """Raise ConfigError naming the first `--config.a.b=...` override whose field the config does not have."""
    overrides = [a for a in argv if _OVERRIDE.match(a)]
    if not overrides:
        return
    config = _load(config_path)
    for arg in overrides:
        path = _OVERRIDE.match(arg).group(1)
        node, walked = config, []
        for part in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = "config" + "".join(f".{w}" for w in walked)
                fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else "(not a ConfigDict)"
                raise ConfigError(f"unknown config field {path!r} in override {arg!r} for {config_path}: "
                                  f"{where} has no field {part!r}; its fields: {fields}")
            node, walked = node[part], walked + [part]


def _config_path(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str]:
    """(config, workdir) from a full argv (argv[0] is the program), overrides applied and checked."""
    argv = list(argv)
    path = _config_path(argv)
    if path is None:
        raise ConfigError("missing --config=configs/x.py[:args]")
    check_overrides(path, argv)
    fv = flags.FlagValues()
    _define(fv, argv)
    try:
        fv(argv)
    except flags.Error as e:
        raise ConfigError(f"bad command line for {path}: {e}") from e
    if not fv.workdir:
        raise ConfigError("missing --workdir=DIR")
    return fv.config, fv.workdir
