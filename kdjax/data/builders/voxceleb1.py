"""voxceleb1: VoxCeleb1 speaker identification training data and verification trials (manual_dir only).

manual_dir holds the wav archives `vox1_dev_wav.zip` / `vox1_test_wav.zip` (read in place, not extracted) or their
extracted `wav/` folders (anywhere up to two levels down) and trial lists: `veri_test2.txt` ("O", VoxCeleb1-O
cleaned, 37,611 trials), optional `list_test_all2.txt` ("E"), `list_test_hard2.txt` ("H"), and s3prl's lists from
downstream/sv_voxceleb1/: `voxceleb1_test_v2.txt` ("superb", the list SUPERB scores: 37,720 trials over 4,715
utterances of the 40 test speakers) and `dev_meta_data/dev_meta_data.txt` ("dev": 20,000 trials among 40 training
speakers, s3prl's dev list, for checkpoint choice without the test set). Split "test" holds the speakers of the
config's main list, split "train" all other speakers (numbered first, so training classes are
0..num_train_speakers-1). Utterance ids are "idXXXXX/VIDEO/NNNNN.wav" as in the lists.

Configs: "default" stores the audio as it is (trial list "O" first, needs veri_test2.txt); "superb" applies s3prl's
SoX chain at prepare time (`gain -3.0`, `silence 1 0.1 0.1% -1 0.1 0.1%`, sv_voxceleb1/dataset.py EFFECTS; needs
the sox package and binary) and lists "superb" (voxceleb1_test_v2.txt, required) first.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import zipfile

import tensorflow_datasets as tfds

from kdjax.data import audio, trials
from kdjax.data.builders import base
from kdjax.errors import DatasetError

TRIAL_FILES = {"O": "veri_test2.txt", "E": "list_test_all2.txt", "H": "list_test_hard2.txt",
               "superb": "voxceleb1_test_v2.txt", "dev": "dev_meta_data.txt"}


@dataclasses.dataclass(eq=False)
class VoxConfig(tfds.core.BuilderConfig):
    """Prepare-time preprocessing (s3prl's SoX chain) and the trial list that must be present (listed first)."""

    gain_db: float = 0.0
    trim_silence: bool = False
    main_trials: str = "O"


def _utt_id(path: str) -> str | None:
    """'.../wav/id10001/1zcIwhmdeo4/00001.wav' -> 'id10001/1zcIwhmdeo4/00001.wav'."""
    parts = path.replace(os.sep, "/").split("/")
    if len(parts) >= 3 and parts[-1].endswith(".wav") and parts[-3].startswith("id"):
        return "/".join(parts[-3:])
    return None


def index_sources(root: str) -> dict[str, tuple[str, str | None]]:
    """utterance id -> (file or zip path, member name in the zip or None), from zips and extracted folders."""
    found: dict[str, tuple[str, str | None]] = {}
    for name in sorted(os.listdir(root)):
        if name.endswith(".zip"):
            with zipfile.ZipFile(os.path.join(root, name)) as z:
                for member in z.namelist():
                    uid = _utt_id(member)
                    if uid:
                        found.setdefault(uid, (os.path.join(root, name), member))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            uid = _utt_id(os.path.join(dirpath, f))
            if uid:
                found.setdefault(uid, (os.path.join(dirpath, f), None))
    return found


class Voxceleb1(base.Builder):
    """VoxCeleb1: speaker-id training split and verification trials (O, and E/H when present)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "configs default / superb; the voxceleb1_test_v2.txt trial list"}
    BUILDER_CONFIGS = [
        VoxConfig(name="default", version=VERSION, description="audio as distributed"),
        VoxConfig(name="superb", version=VERSION, gain_db=-3.0, trim_silence=True, main_trials="superb",
                  description="s3prl's gain -3 dB and silence trimming; voxceleb1_test_v2.txt trials"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("vox1_dev_wav.zip, vox1_test_wav.zip (or extracted wav/), veri_test2.txt; for "
                                    "the superb config also voxceleb1_test_v2.txt.")

    def _spec(self):
        cfg = self.builder_config
        return base.features(), None, {"speakers": [], "num_train_speakers": 0, "trials": {},
                                       "preprocessing": {"gain_db": cfg.gain_db, "trim_silence": cfg.trim_silence}}

    def _split_generators(self, dl_manager):
        root = base.manual_path(dl_manager, "voxceleb1", "vox1_{dev,test}_wav.zip (or wav/) and veri_test2.txt")
        cfg = self.builder_config
        veri = os.path.join(root, TRIAL_FILES[cfg.main_trials])
        if not os.path.isfile(veri):
            raise DatasetError(f"voxceleb1/{cfg.name}: {veri} is missing (the {cfg.main_trials} trial list)")
        sources = index_sources(root)
        if not sources:
            raise DatasetError(f"voxceleb1: no idXXXXX/VIDEO/NNNNN.wav files or zips in {root}")
        test_spk = trials.speakers(trials.parse(veri))
        all_spk = {u.split("/")[0] for u in sources}
        speakers = sorted(all_spk - test_spk) + sorted(test_spk)
        self._speaker = {s: i for i, s in enumerate(speakers)}
        self._sources = sources
        self._zips: dict[str, zipfile.ZipFile] = {}
        self.info.metadata.update(speakers=speakers, num_train_speakers=len(all_spk - test_spk))
        split_of = {u: ("test" if u.split("/")[0] in test_spk else "train") for u in sources}
        self._write_trials(root, split_of)
        ids = {s: [u for u in sorted(sources) if split_of[u] == s] for s in ("train", "test")}
        return {split: self._generate_examples(split, us) for split, us in ids.items() if us}

    def _write_trials(self, root: str, split_of: dict[str, str]) -> None:
        os.makedirs(os.fspath(self.data_path / "trials"), exist_ok=True)  # inside TFDS's incomplete dir
        lists = {}
        main = self.builder_config.main_trials
        for name, fname in sorted(TRIAL_FILES.items(), key=lambda kv: kv[0] != main):  # the main list first
            path = os.path.join(root, fname)
            if not os.path.isfile(path):
                continue
            parsed = trials.parse(path)
            trials.check_ids(parsed, split_of, path)
            splits = sorted({split_of[u] for _, a, b in parsed for u in (a, b)}, reverse=True)
            lists[name] = "+".join(splits)  # -E/-H span dev and test speakers: "train+test"
            shutil.copyfile(path, os.fspath(self.data_path / "trials" / f"{name}.txt"))
        self.info.metadata["trials"] = lists

    def _clip(self, uid: str) -> tuple[str, dict]:
        path, member = self._sources[uid]
        if member is None:
            x = audio.load_clip(path)
        else:
            if path not in self._zips:  # keep archives open: re-reading a 150k-entry directory per clip is slow
                self._zips[path] = zipfile.ZipFile(path)
            x = audio.load_clip(self._zips[path].read(member), name=f"{path}:{member}")
        cfg = self.builder_config
        if cfg.gain_db or cfg.trim_silence:  # s3prl applies these on load, before its 2 s filter and crops
            name = path if member is None else f"{path}:{member}"
            y = audio.sox_effects(audio.to_float(x), gain_db=cfg.gain_db, trim_silence=cfg.trim_silence, name=name)
            x = audio.to_int16(audio.check(y, name))
        return uid, {"audio": x, "id": uid, "speaker": self._speaker[uid.split("/")[0]]}

    def _generate_examples(self, split: str, uids: list[str]):
        yield from self.counted(split, self.guarded(uids, self._clip, split))
