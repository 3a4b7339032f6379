"""kdjax's TFDS builders, one a file; importing this package registers them with tfds."""
from kdjax.data.builders.audio_folder import AudioFolder
from kdjax.data.builders.librispeech import Librispeech
from kdjax.data.builders.speech_commands import SpeechCommands
from kdjax.data.builders.synthetic_speech import SyntheticSpeech
from kdjax.data.builders.voxceleb1 import Voxceleb1

BUILDERS = {"synthetic_speech": SyntheticSpeech, "speech_commands": SpeechCommands, "voxceleb1": Voxceleb1,
            "librispeech": Librispeech, "audio_folder": AudioFolder}

__all__ = ["BUILDERS", "AudioFolder", "Librispeech", "SpeechCommands", "SyntheticSpeech", "Voxceleb1"]
