"""speech_commands: Google Speech Commands v0.01 / v0.02 with the 12-class SUPERB mapping.

The ten keywords keep their label, every other word is `_unknown_`, and `_silence_` clips are 1-s windows cut from
`_background_noise_`. Validation and test follow the official validation_list.txt / testing_list.txt. Source: the
official tarball, downloaded by the TFDS download manager, or (offline) the tarball or its extracted folder in
manual_dir.
"""
from __future__ import annotations

import collections
import dataclasses
import os

import tensorflow_datasets as tfds

from kdjax.data import audio
from kdjax.data.builders import base
from kdjax.data.builders.synthetic_speech import KWS_LABELS
from kdjax.errors import AudioError, DatasetError

URL = "http://download.tensorflow.org/data/speech_commands_v0.0{v}.tar.gz"
NOISE = "_background_noise_"


@dataclasses.dataclass(eq=False)
class SCConfig(tfds.core.BuilderConfig):
    """Which release (1: v0.01, 2: v0.02)."""

    release: int = 1


def find_root(path: str) -> str | None:
    """The folder (path itself or one below it) that holds validation_list.txt."""
    for cand in [path] + [os.path.join(path, d) for d in sorted(os.listdir(path))]:
        if os.path.isfile(os.path.join(cand, "validation_list.txt")):
            return cand
    return None


class SpeechCommands(base.Builder):
    """Speech Commands (v0.01, v0.02), 12 SUPERB classes, official splits."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SCConfig(name="v1", version=VERSION, release=1, description="v0.01 (SUPERB KS)"),
                       SCConfig(name="v2", version=VERSION, release=2, description="v0.02")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Optional: speech_commands_v0.0N.tar.gz or its extracted folder."

    def _spec(self):
        return base.features(KWS_LABELS), ("audio", "label"), {"speakers": [], "source": ""}

    def _source(self, dl_manager) -> str:
        release = self.builder_config.release
        tar = f"speech_commands_v0.0{release}.tar.gz"
        if self.manual_dir:
            root = base.manual_path(dl_manager, "speech_commands", f"{tar} or its extracted folder")
            found = find_root(root)
            if found:
                return found
            if os.path.isfile(os.path.join(root, tar)):
                return find_root(base.extract_tar(os.path.join(root, tar), dl_manager))
            raise DatasetError(f"speech_commands: {root} holds neither {tar} nor an extracted folder with "
                               f"validation_list.txt")
        return find_root(base.extract_tar(os.fspath(dl_manager.download(URL.format(v=release))), dl_manager))

    def _split_generators(self, dl_manager):
        root = self._source(dl_manager)
        self.info.metadata["source"] = os.path.basename(root)
        lists = {}
        for split, fname in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
            with open(os.path.join(root, fname)) as f:
                lists.update({line.strip(): split for line in f if line.strip()})
        clips: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
        for word in sorted(os.listdir(root)):
            if word == NOISE or not os.path.isdir(os.path.join(root, word)):
                continue
            for name in sorted(os.listdir(os.path.join(root, word))):
                if name.endswith(".wav"):
                    rel = f"{word}/{name}"
                    clips[lists.get(rel, "train")].append(rel)
        speakers = sorted({rel.split("/")[1].split("_nohash_")[0] for rs in clips.values() for rel in rs})
        self.info.metadata["speakers"] = speakers
        self._speaker = {s: i for i, s in enumerate(speakers)}
        self._root = root
        return {split: self._generate_examples(split, rels) for split, rels in clips.items()}

    def _clip(self, rel: str) -> tuple[str, dict]:
        word, name = rel.split("/")
        label = KWS_LABELS.index(word) if word in KWS_LABELS[:10] else KWS_LABELS.index("_unknown_")
        x = audio.load_clip(os.path.join(self._root, rel))
        return rel, {"audio": x, "label": label, "id": rel, "speaker": self._speaker[name.split("_nohash_")[0]]}

    def _silence(self, split: str):
        """1-s windows of the background-noise files; window i goes to validation (i%10==8), test (9) or train."""
        noise_dir = os.path.join(self._root, NOISE)
        files = sorted(f for f in os.listdir(noise_dir) if f.endswith(".wav")) if os.path.isdir(noise_dir) else []
        want = {"validation": (8,), "test": (9,), "train": tuple(range(8))}[split]
        counts: collections.Counter[str] = collections.Counter()
        for fname in files:
            try:
                x = audio.load_clip(os.path.join(noise_dir, fname))
            except AudioError as e:
                self.skip_or_raise(e, counts)
                continue
            for i in range(x.shape[0] // 16_000):
                if i % 10 in want:
                    cid = f"{NOISE}/{fname}#{i}"
                    yield cid, {"audio": x[i * 16_000:(i + 1) * 16_000], "label": KWS_LABELS.index("_silence_"),
                                "id": cid, "speaker": -1}
        self.record_skips(split, counts)

    def _generate_examples(self, split: str, rels: list[str]):
        yield from self.counted(split, self._both(split, rels))

    def _both(self, split: str, rels: list[str]):
        yield from self.guarded(rels, self._clip, split)
        yield from self._silence(split)
