"""kdjax's TFDS builders, one a file; importing this package registers them with tfds."""
from kdjax.data.builders.audio_folder import AudioFolder
from kdjax.data.builders.synthetic_speech import SyntheticSpeech

BUILDERS = {"synthetic_speech": SyntheticSpeech, "audio_folder": AudioFolder}

__all__ = ["BUILDERS", "AudioFolder", "SyntheticSpeech"]
