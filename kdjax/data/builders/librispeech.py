"""librispeech: LibriSpeech subsets with speaker ids and transcripts (manual_dir only).

manual_dir holds the official archives (train-clean-100.tar.gz, dev-clean.tar.gz, ...) or the extracted
`LibriSpeech/<subset>/` folders; every subset found becomes a split named with underscores (train_clean_100,
dev_clean, test_other, ...). FLAC is decoded with soundfile. Utterance ids are LibriSpeech's "SPK-CHAPTER-NNNN".
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from kdjax.data import audio
from kdjax.data.builders import base
from kdjax.errors import DatasetError

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
           "test-other")


def _find_subsets(root: str, dl_manager) -> dict[str, str]:
    """subset -> folder, extracting archives that have no extracted folder."""
    found = {}
    for base_dir in (root, os.path.join(root, "LibriSpeech")):
        for s in SUBSETS:
            if os.path.isdir(os.path.join(base_dir, s)):
                found.setdefault(s, os.path.join(base_dir, s))
    for s in SUBSETS:
        tar = os.path.join(root, f"{s}.tar.gz")
        if s not in found and os.path.isfile(tar):
            out = base.extract_tar(tar, dl_manager)
            found[s] = os.path.join(out, "LibriSpeech", s)
    return found


class Librispeech(base.Builder):
    """LibriSpeech: every subset found in manual_dir, with speaker index, utterance id and transcript."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "LibriSpeech tar.gz archives from openslr.org/12 or their extracted folders."

    def _spec(self):
        return base.features(text=True), None, {"speakers": [], "subsets": []}

    def _split_generators(self, dl_manager):
        root = base.manual_path(dl_manager, "librispeech", "LibriSpeech *.tar.gz archives or LibriSpeech/<subset>/")
        subsets = _find_subsets(root, dl_manager)
        if not subsets:
            raise DatasetError(f"librispeech: no subset ({', '.join(SUBSETS)}) as .tar.gz or folder in {root}")
        utts = {s: self._list(folder) for s, folder in subsets.items()}
        speakers = sorted({u[0].split("-")[0] for us in utts.values() for u in us}, key=lambda s: (len(s), s))  # numeric order
        self._speaker = {s: i for i, s in enumerate(speakers)}
        self.info.metadata.update(speakers=speakers, subsets=sorted(subsets))
        return {s.replace("-", "_"): self._generate_examples(s.replace("-", "_"), us) for s, us in utts.items()}

    @staticmethod
    def _list(folder: str) -> list[tuple[str, str, str]]:
        """(utterance id, flac path, transcript) from the *.trans.txt files of a subset folder."""
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                if not f.endswith(".trans.txt"):
                    continue
                trans = os.path.join(dirpath, f)
                with open(trans) as fh:
                    for lineno, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        uid, _, text = line.strip().partition(" ")
                        if uid.count("-") != 2:
                            raise DatasetError(f"{trans}:{lineno}: expected 'SPK-CHAPTER-NNNN TEXT'")
                        out.append((uid, os.path.join(dirpath, f"{uid}.flac"), text))
        return out

    def _clip(self, utt: tuple[str, str, str]) -> tuple[str, dict]:
        uid, path, text = utt
        return uid, {"audio": audio.load_clip(path), "id": uid, "text": text,
                     "speaker": self._speaker[uid.split("-")[0]]}

    def _generate_examples(self, split: str, utts: list[tuple[str, str, str]]):
        yield from self.counted(split, self.guarded(utts, self._clip, split))
