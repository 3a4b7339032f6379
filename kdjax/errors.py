"""The one exception module of kdjax: every error names the file, key or setting and what was expected."""
import contextlib
import os
import sys


class KdjaxError(Exception):
    """Base class of all kdjax errors."""


class ConfigError(KdjaxError, ValueError):
    """A configuration field has a value kdjax cannot use."""


class CheckpointError(KdjaxError):
    """A checkpoint (Hugging Face or kdjax) cannot be read, written or mapped."""


class AudioError(KdjaxError, ValueError):
    """An audio file or array is unusable (corrupt, empty, non-finite, too short, bad sample rate)."""


class DatasetError(KdjaxError):
    """A dataset, manifest, label set or trial list is malformed or incomplete."""


@contextlib.contextmanager
def reported(prog: str = "kdjax"):
    """Entry points: a KdjaxError becomes one line on stderr and exit code 2 (KDJAX_VERBOSE=1: the traceback)."""
    try:
        yield
    except KdjaxError as e:
        if os.environ.get("KDJAX_VERBOSE", "") not in ("", "0"):
            raise
        sys.stderr.write(f"{prog}: {type(e).__name__}: {e}\n")
        sys.exit(2)
