"""speech_commands/v1 (SUPERB's layout) on fake copies of both official archives: the training archive
(speech_commands_v0.01: word folders, _background_noise_, validation_list.txt, testing_list.txt) and the test archive
(speech_commands_test_set_v0.01: the ten words, _unknown_ and _silence_ folders), as tarballs without a top folder or
as extracted folders."""
import os
import tarfile

import pytest

from kdjax.data import pipeline, prepare
from kdjax.data.builders import speech_commands as sc
from kdjax.errors import DatasetError

from .conftest import write_wav

TRAIN = {  # word folder -> speakers; hashes as the real names (8 hex digits)
    "yes": ["0a7c2a8d", "0b09edd3", "0c40e715"], "no": ["0a7c2a8d", "1a5b9ca4"], "bed": ["0b09edd3", "2c6d7e8f"],
    "dog": ["3d4e5f60"],
}
VALIDATION = ["yes/0c40e715_nohash_0.wav", "bed/2c6d7e8f_nohash_0.wav"]
TESTING = ["no/1a5b9ca4_nohash_0.wav"]
NOISE = {"white_noise.wav": 3.0, "running_tap.wav": 2.5}
TEST = {"yes": ["f0f0f0f0_nohash_0.wav"], "left": ["e1e1e1e1_nohash_1.wav"],
        "_unknown_": ["dog_d2d2d2d2_nohash_0.wav", "wow_c3c3c3c3_nohash_0.wav"],
        "_silence_": ["doing_the_dishes_1.wav"]}


def _train_archive(root):
    for word, speakers in TRAIN.items():
        for n, spk in enumerate(speakers):
            write_wav(os.path.join(root, word, f"{spk}_nohash_0.wav"), seconds=1.0, seed=n)
    for name, seconds in NOISE.items():
        write_wav(os.path.join(root, "_background_noise_", name), seconds=seconds, seed=7)
    open(os.path.join(root, "_background_noise_", "README.md"), "w").write("noise\n")
    open(os.path.join(root, "validation_list.txt"), "w").write("\n".join(VALIDATION) + "\n")
    open(os.path.join(root, "testing_list.txt"), "w").write("\n".join(TESTING) + "\n")
    open(os.path.join(root, "LICENSE"), "w").write("CC BY 4.0\n")


def _test_archive(root):
    for word, names in TEST.items():
        for n, name in enumerate(names):
            write_wav(os.path.join(root, word, name), seconds=1.0, seed=10 + n)
    open(os.path.join(root, "LICENSE"), "w").write("CC BY 4.0\n")


def _tar(src, path):
    with tarfile.open(path, "w:gz") as t:  # the official tarballs have no top folder
        for name in sorted(os.listdir(src)):
            t.add(os.path.join(src, name), arcname=name)


@pytest.mark.parametrize("packed", [False, True])
def test_superb_layout_splits_counts_labels(tmp_path, packed):
    manual = tmp_path / "manual"
    if packed:
        _train_archive(str(tmp_path / "a"))
        _test_archive(str(tmp_path / "b"))
        os.makedirs(manual)
        _tar(str(tmp_path / "a"), str(manual / "speech_commands_v0.01.tar.gz"))
        _tar(str(tmp_path / "b"), str(manual / "speech_commands_test_set_v0.01.tar.gz"))
    else:
        _train_archive(str(manual / "speech_commands_v0.01"))
        _test_archive(str(manual / "speech_commands_test_set_v0.01"))
    data_dir = str(tmp_path / "tfds")
    assert prepare.run("speech_commands/v1", data_dir=data_dir, manual_dir=str(manual), num_workers=1) == 0
    names = pipeline.label_names("speech_commands/v1", data_dir)
    got = {}
    for split in ("train", "validation", "test"):
        s = pipeline.load_source("speech_commands/v1", split, data_dir)
        got[split] = {pipeline.utterance_ids(s)[i]: (names[s[i]["label"]], s[i]["audio"].shape[0])
                      for i in range(len(s))}
    noise = {f"_background_noise_/{n}": ("_silence_", int(sec * 16000)) for n, sec in NOISE.items()}
    listed = set(VALIDATION) | set(TESTING)
    train_clips = {f"{w}/{s}_nohash_0.wav" for w, spk in TRAIN.items() for s in spk} - listed
    label = {"yes": "yes", "no": "no", "bed": "_unknown_", "dog": "_unknown_"}
    assert got["train"] == {**{c: (label[c.split("/")[0]], 16000) for c in train_clips}, **noise}
    assert got["validation"] == {**{c: (label[c.split("/")[0]], 16000) for c in VALIDATION}, **noise}
    assert got["test"] == {f"{w}/{n}": (w, 16000) for w, ns in TEST.items() for n in ns}  # the test archive only
    meta = pipeline.metadata("speech_commands/v1", data_dir)
    assert meta["stats"]["test"]["examples"] == 5 and meta["stats"]["train"]["examples"] == len(train_clips) + 2
    assert "d2d2d2d2" in meta["speakers"] and "1a5b9ca4" not in meta["speakers"]  # testing_list clips left out
    test = pipeline.load_source("speech_commands/v1", "test", data_dir)
    assert sorted(int(test[i]["speaker"]) for i in range(len(test)))[0] == -1  # _silence_ has no speaker


def test_missing_test_archive_is_named(tmp_path):
    _train_archive(str(tmp_path / "m" / "speech_commands_v0.01"))
    with pytest.raises(DatasetError, match="speech_commands_test_set_v0.01.tar.gz"):
        prepare.make_builder("speech_commands/v1", data_dir=str(tmp_path / "t"),
                             manual_dir=str(tmp_path / "m")).download_and_prepare(
            download_config=__import__("tensorflow_datasets").download.DownloadConfig(manual_dir=str(tmp_path / "m")))


def test_names():
    assert sc.speaker_of("dog_d2d2d2d2_nohash_3.wav") == sc.speaker_of("d2d2d2d2_nohash_0.wav") == "d2d2d2d2"
    assert sc.speaker_of("doing_the_dishes_1.wav") is None
    assert [sc.label_of(w) for w in ("yes", "_silence_", "_unknown_", "marvin")] == [0, 11, 10, 10]
