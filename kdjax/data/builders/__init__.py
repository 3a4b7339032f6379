"""kdjax's TFDS builders, one a file; importing this package registers them with tfds."""
from kdjax.data.builders.synthetic_speech import SyntheticSpeech

BUILDERS = {"synthetic_speech": SyntheticSpeech}

__all__ = ["BUILDERS", "SyntheticSpeech"]
