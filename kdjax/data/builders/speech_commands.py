"""speech_commands: Google Speech Commands v0.01 / v0.02 with the 12-class SUPERB mapping.

The ten keywords keep their label, every other word is `_unknown_`. Two layouts (builder configs):

- "v1" / "v2" (SUPERB's, s3prl downstream/speech_commands): train and validation come from the training archive
  (validation_list.txt is validation, testing_list.txt is left out, everything else is train); each
  `_background_noise_` file is one whole `_silence_` example in train and in validation (s3prl draws a random 1 s crop
  of it every time it samples the item: the pipeline's random crop does that); test is the separate
  `speech_commands_test_set_v0.0N` archive, labelled by its folders (`_silence_`, `_unknown_` and the ten words).
- "v1_lists" / "v2_lists" (kdjax's earlier layout): test is the training archive's testing_list.txt, and `_silence_`
  clips are fixed 1 s windows of the noise files, window i going to validation (i % 10 == 8), test (9) or train.

Sources: the official tarballs downloaded by the TFDS download manager, or (offline) in manual_dir the tarballs or
their extracted folders: the training archive is the folder holding validation_list.txt, the test archive the folder
holding `_silence_/` and `_unknown_/` (each the folder itself or one level below).
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
TEST_URL = "http://download.tensorflow.org/data/speech_commands_test_set_v0.0{v}.tar.gz"
NOISE = "_background_noise_"
SILENCE, UNKNOWN = "_silence_", "_unknown_"


@dataclasses.dataclass(eq=False)
class SCConfig(tfds.core.BuilderConfig):
    """Which release (1: v0.01, 2: v0.02) and which layout (test archive + whole noise files, or lists + windows)."""

    release: int = 1
    test_archive: bool = True


def _candidates(path: str) -> list[str]:
    return [path] + [os.path.join(path, d) for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]


def find_root(path: str) -> str | None:
    """The training archive's folder (path itself or one below it): the one holding validation_list.txt."""
    return next((c for c in _candidates(path) if os.path.isfile(os.path.join(c, "validation_list.txt"))), None)


def find_test_root(path: str) -> str | None:
    """The test archive's folder (path itself or one below it): the one holding `_silence_/` and `_unknown_/`."""
    return next((c for c in _candidates(path) if all(os.path.isdir(os.path.join(c, d)) for d in (SILENCE, UNKNOWN))
                 and not os.path.isfile(os.path.join(c, "validation_list.txt"))), None)


def speaker_of(name: str) -> str | None:
    """'0c40e715_nohash_0.wav' or 'dog_0c40e715_nohash_0.wav' -> '0c40e715'; None for clips without a speaker."""
    head, sep, _ = name.partition("_nohash_")
    return head.rsplit("_", 1)[-1] if sep else None


def label_of(word: str) -> int:
    """SUPERB's 12 classes: the ten keywords, `_silence_`, and `_unknown_` for every other folder."""
    return KWS_LABELS.index(word) if word in KWS_LABELS[:10] or word == SILENCE else KWS_LABELS.index(UNKNOWN)


class SpeechCommands(base.Builder):
    """Speech Commands (v0.01, v0.02), 12 SUPERB classes; SUPERB's test archive or the testing list."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"2.0.0": "v1/v2: test = the official test archive, whole noise files as _silence_ (SUPERB); "
                              "the 1.0.0 layout is v1_lists/v2_lists"}
    BUILDER_CONFIGS = [
        SCConfig(name="v1", version=VERSION, release=1, test_archive=True, description="v0.01, SUPERB KS"),
        SCConfig(name="v2", version=VERSION, release=2, test_archive=True, description="v0.02, official test set"),
        SCConfig(name="v1_lists", version=VERSION, release=1, test_archive=False,
                 description="v0.01, testing_list.txt and noise windows"),
        SCConfig(name="v2_lists", version=VERSION, release=2, test_archive=False,
                 description="v0.02, testing_list.txt and noise windows"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Optional: speech_commands_v0.0N.tar.gz and speech_commands_test_set_v0.0N.tar.gz "
                                    "(or their extracted folders).")

    def _spec(self):
        return base.features(KWS_LABELS), ("audio", "label"), {"speakers": [], "source": "", "test_source": ""}

    def _find(self, dl_manager, tar: str, url: str, finder) -> str:
        """The folder of one archive: in manual_dir (folder or tarball) or downloaded and extracted."""
        if self.manual_dir:
            root = base.manual_path(dl_manager, "speech_commands", f"{tar} or its extracted folder")
            found = finder(root)
            if found:
                return found
            if os.path.isfile(os.path.join(root, tar)):
                found = finder(base.extract_tar(os.path.join(root, tar), dl_manager))
                if found:
                    return found
                raise DatasetError(f"speech_commands: {os.path.join(root, tar)} does not have the expected layout")
            raise DatasetError(f"speech_commands: {root} holds neither {tar} nor its extracted folder")
        found = finder(base.extract_tar(os.fspath(dl_manager.download(url)), dl_manager))
        if not found:
            raise DatasetError(f"speech_commands: the archive from {url} does not have the expected layout")
        return found

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = self._find(dl_manager, f"speech_commands_v0.0{cfg.release}.tar.gz", URL.format(v=cfg.release),
                          find_root)
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
                    clips[lists.get(rel, "train")].append(os.path.join(root, rel))
        self._noise_dir = os.path.join(root, NOISE)
        self.info.metadata["source"] = os.path.basename(root)
        if cfg.test_archive:  # s3prl discards testing_list.txt and scores the test archive instead
            test_root = self._find(dl_manager, f"speech_commands_test_set_v0.0{cfg.release}.tar.gz",
                                   TEST_URL.format(v=cfg.release), find_test_root)
            clips["test"] = [os.path.join(test_root, w, n) for w in sorted(os.listdir(test_root))
                             if os.path.isdir(os.path.join(test_root, w))
                             for n in sorted(os.listdir(os.path.join(test_root, w))) if n.endswith(".wav")]
            self.info.metadata["test_source"] = os.path.basename(os.path.normpath(test_root))
        speakers = sorted({s for paths in clips.values() for p in paths if (s := speaker_of(os.path.basename(p)))})
        self.info.metadata["speakers"] = speakers
        self._speaker = {s: i for i, s in enumerate(speakers)}
        return {split: self._generate_examples(split, paths) for split, paths in clips.items()}

    def _clip(self, path: str) -> tuple[str, dict]:
        word, name = path.replace(os.sep, "/").split("/")[-2:]
        rel = f"{word}/{name}"
        spk = speaker_of(name)
        x = audio.load_clip(path)
        return rel, {"audio": x, "label": label_of(word), "id": rel, "speaker": self._speaker[spk] if spk else -1}

    def _noise_files(self) -> list[str]:
        d = self._noise_dir
        return sorted(f for f in os.listdir(d) if f.endswith(".wav")) if os.path.isdir(d) else []

    def _whole_noise(self, split: str):
        """s3prl's `_silence_` items: every noise file, whole, in train and in validation (cropped when sampled)."""
        if split == "test":
            return
        yield from self.guarded(self._noise_files(), self._noise_clip, split)

    def _noise_clip(self, fname: str) -> tuple[str, dict]:
        cid = f"{NOISE}/{fname}"
        x = audio.load_clip(os.path.join(self._noise_dir, fname))
        return cid, {"audio": x, "label": KWS_LABELS.index(SILENCE), "id": cid, "speaker": -1}

    def _noise_windows(self, split: str):
        """1-s windows of the background-noise files; window i goes to validation (i%10==8), test (9) or train."""
        want = {"validation": (8,), "test": (9,), "train": tuple(range(8))}[split]
        counts: collections.Counter[str] = collections.Counter()
        for fname in self._noise_files():
            try:
                x = audio.load_clip(os.path.join(self._noise_dir, fname))
            except AudioError as e:
                self.skip_or_raise(e, counts)
                continue
            for i in range(x.shape[0] // 16_000):
                if i % 10 in want:
                    cid = f"{NOISE}/{fname}#{i}"
                    yield cid, {"audio": x[i * 16_000:(i + 1) * 16_000], "label": KWS_LABELS.index(SILENCE),
                                "id": cid, "speaker": -1}
        self.record_skips(split, counts)

    def _generate_examples(self, split: str, paths: list[str]):
        yield from self.counted(split, self._both(split, paths))

    def _both(self, split: str, paths: list[str]):
        yield from self.guarded(paths, self._clip, split)
        if self.builder_config.test_archive:
            yield from self._whole_noise(split)
        else:
            yield from self._noise_windows(split)
