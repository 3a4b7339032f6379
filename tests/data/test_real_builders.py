"""speech_commands, voxceleb1 and librispeech on small fake copies of the real layouts (no downloads)."""
import os
import tarfile
import zipfile

import numpy as np
import pytest

from kdjax.data import pipeline, prepare
from kdjax.errors import DatasetError

from .conftest import write_wav


def _tar(src_dir, tar_path, arc_prefix=""):
    with tarfile.open(tar_path, "w:gz") as t:
        for name in sorted(os.listdir(src_dir)):
            t.add(os.path.join(src_dir, name), arcname=os.path.join(arc_prefix, name))


def _speech_commands(root):
    for word, spk in [("yes", "aaaa1111"), ("no", "aaaa1111"), ("bed", "bbbb2222"), ("yes", "cccc3333"),
                      ("left", "dddd4444")]:
        write_wav(os.path.join(root, word, f"{spk}_nohash_0.wav"), seconds=1.0, seed=len(word))
    write_wav(os.path.join(root, "_background_noise_", "white.wav"), seconds=10.5)
    open(os.path.join(root, "validation_list.txt"), "w").write("yes/cccc3333_nohash_0.wav\n")
    open(os.path.join(root, "testing_list.txt"), "w").write("left/dddd4444_nohash_0.wav\n")


@pytest.mark.parametrize("packed", [False, True])
def test_speech_commands(tmp_path, packed):
    src = str(tmp_path / "sc")
    _speech_commands(src)
    manual = src
    if packed:  # the official tarball has no top folder
        manual = str(tmp_path / "manual")
        os.makedirs(manual)
        _tar(src, os.path.join(manual, "speech_commands_v0.01.tar.gz"))
    data_dir = str(tmp_path / "tfds")
    assert prepare.run("speech_commands/v1_lists", data_dir=data_dir, manual_dir=manual, num_workers=1) == 0
    names = pipeline.label_names("speech_commands/v1_lists", data_dir)
    got = {}
    for split in ("train", "validation", "test"):
        s = pipeline.load_source("speech_commands/v1_lists", split, data_dir)
        got[split] = sorted((names[s[i]["label"]], int(s[i]["speaker"])) for i in range(len(s)))
    assert got["train"] == sorted([("yes", 0), ("no", 0), ("_unknown_", 1)] + [("_silence_", -1)] * 8)
    assert got["validation"] == [("_silence_", -1), ("yes", 2)]
    assert got["test"] == [("_silence_", -1), ("left", 3)]


def _vox(tmp_path):
    manual = tmp_path / "vox"
    dev = tmp_path / "devsrc"
    for spk in ("id10001", "id10002"):
        for n in (1, 2):
            write_wav(str(dev / "wav" / spk / "vidA" / f"0000{n}.wav"), seconds=0.5, seed=n)
    os.makedirs(manual)
    with zipfile.ZipFile(manual / "vox1_dev_wav.zip", "w") as z:
        for dirpath, _, files in os.walk(dev):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, dev))
    for spk in ("id10270", "id10271"):
        for n in (1, 2):
            write_wav(str(manual / "vox1_test_wav" / "wav" / spk / "vidB" / f"0000{n}.wav"), seconds=0.5, seed=n)
    (manual / "veri_test2.txt").write_text(
        "1 id10270/vidB/00001.wav id10270/vidB/00002.wav\n0 id10270/vidB/00001.wav id10271/vidB/00001.wav\n")
    (manual / "list_test_all2.txt").write_text("0 id10001/vidA/00001.wav id10271/vidB/00002.wav\n")
    return str(manual)


def test_voxceleb1(tmp_path):
    manual, data_dir = _vox(tmp_path), str(tmp_path / "tfds")
    assert prepare.run("voxceleb1", data_dir=data_dir, manual_dir=manual, num_workers=1) == 0
    meta = pipeline.metadata("voxceleb1", data_dir)
    assert meta["num_train_speakers"] == 2 and meta["speakers"][:2] == ["id10001", "id10002"]
    train = pipeline.load_source("voxceleb1", "train", data_dir)
    assert sorted(int(train[i]["speaker"]) for i in range(len(train))) == [0, 0, 1, 1]
    assert len(pipeline.load_trials("voxceleb1", data_dir)) == 2  # O by default
    assert pipeline.load_trials("voxceleb1", data_dir, "E") == [(0, "id10001/vidA/00001.wav",
                                                                 "id10271/vidB/00002.wav")]
    assert meta["trials"]["E"] == "train+test"
    assert len(pipeline.load_source("voxceleb1", "train+test", data_dir)) == 8


def test_voxceleb1_trial_errors(tmp_path):
    manual = _vox(tmp_path)
    with open(os.path.join(manual, "veri_test2.txt"), "a") as f:
        f.write("1 id10270/vidB/00001.wav id10270/vidB/00009.wav\n")
    with pytest.raises(DatasetError, match=r"veri_test2.txt:3: utterance id 'id10270/vidB/00009.wav'"):
        prepare.make_builder("voxceleb1", data_dir=str(tmp_path / "t"), manual_dir=manual).download_and_prepare(
            download_config=_dl(manual))
    with open(os.path.join(manual, "veri_test2.txt"), "a") as f:
        f.write("yes a\n")
    with pytest.raises(DatasetError, match=r"veri_test2.txt:4"):
        prepare.make_builder("voxceleb1", data_dir=str(tmp_path / "t"), manual_dir=manual).download_and_prepare(
            download_config=_dl(manual))


def _dl(manual):
    import tensorflow_datasets as tfds

    return tfds.download.DownloadConfig(manual_dir=manual)


def test_librispeech(tmp_path):
    manual = tmp_path / "ls"
    for subset, spk in (("dev-clean", "84"), ("test-clean", "1089")):
        folder = tmp_path / "src" / "LibriSpeech" / subset / spk / "121"
        lines = []
        for n in range(2):
            uid = f"{spk}-121-000{n}"
            write_wav(str(folder / f"{uid}.flac"), seconds=0.5, seed=n, subtype="PCM_16", fmt="FLAC")
            lines.append(f"{uid} HELLO WORLD {n}\n")
        (folder / f"{spk}-121.trans.txt").write_text("".join(lines))
    os.makedirs(manual / "LibriSpeech")
    os.rename(tmp_path / "src" / "LibriSpeech" / "dev-clean", manual / "LibriSpeech" / "dev-clean")  # extracted
    _tar(str(tmp_path / "src"), str(manual / "test-clean.tar.gz"))  # archive: LibriSpeech/test-clean/...
    data_dir = str(tmp_path / "tfds")
    assert prepare.run("librispeech", data_dir=data_dir, manual_dir=str(manual), num_workers=1) == 0
    src = pipeline.load_source("librispeech", "test_clean", data_dir)
    ex = sorted((src[i] for i in range(len(src))), key=lambda e: e["id"])[1]
    assert ex["id"] == b"1089-121-0001" and ex["text"] == b"HELLO WORLD 1" and ex["audio"].dtype == np.int16
    assert pipeline.metadata("librispeech", data_dir)["speakers"] == ["84", "1089"]
    assert len(pipeline.load_source("librispeech", "dev_clean", data_dir)) == 2


def test_missing_manual_dir(tmp_path):
    assert prepare.run("voxceleb1", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nope")) == 1
