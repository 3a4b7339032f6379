"""The one exception module of kdjax: every error names the file, key or setting and what was expected."""


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
