"""What a workdir knows about the run that owns it: a lock (one live run per workdir) and the run's teacher.

The lock is an exclusive `flock` on <workdir>/.kdjax.lock held by process 0 for the life of the run; the kernel
releases it when that process dies, however it dies (SIGKILL included), so a lock left by a killed run is simply
taken over, while a second run started next to a live one (a forgotten job, the zombie of a preempted one) is
refused with the owner's host and pid. The other processes of a multi-process run share process 0's lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from kdjax.errors import CheckpointError, ConfigError

LOCK = ".kdjax.lock"
TEACHER = "teacher.json"


class WorkdirLock:
    """Hold the workdir's lock (context manager); `enabled=False` (processes > 0) makes it inert."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK)
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise ConfigError(f"workdir {os.path.dirname(self.path)} is in use by another live run (host "
                              f"{owner.get('host', '?')}, pid {owner.get('pid', '?')}, since {owner.get('since', '?')}"
                              f"); stop it or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def check_teacher(workdir: str, record: dict[str, str] | None, resuming: bool, write: bool) -> None:
    """Record the run's teacher in <workdir>/teacher.json, or, when resuming, check it is the same one."""
    path = os.path.join(workdir, TEACHER)
    if record is None:
        return
    if resuming and os.path.exists(path):
        saved = json.loads(open(path).read())
        if saved.get("fingerprint") != record["fingerprint"]:
            raise CheckpointError(f"{workdir} was trained with teacher {saved.get('path')!r} (fingerprint "
                                  f"{saved.get('fingerprint')}), but this run's teacher {record['path']!r} has "
                                  f"fingerprint {record['fingerprint']}: resume with the same teacher weights, or "
                                  "start a new workdir")
        return
    if write:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, path)
