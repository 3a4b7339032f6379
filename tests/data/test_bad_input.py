"""Bad input at prepare time (audio_folder): a clear error per case, or skip-and-count; no half-written datasets."""
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from kdjax.data import pipeline, prepare
from kdjax.errors import AudioError, DatasetError

from .conftest import write_wav


def _folder(root, bad_name=None, bad_label="a"):
    """Three good clips plus (optionally) one bad row; returns the folder."""
    rows = []
    for i in range(3):
        write_wav(os.path.join(root, f"good{i}.wav"), seed=i)
        rows.append(f"good{i}.wav,{'ab'[i % 2]},s{i}")
    if bad_name:
        rows.append(f"{bad_name},{bad_label},s9")
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("a\nb\n")
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("path,label,speaker\n" + "\n".join(rows) + "\n")
    return root


def _make_bad(root, case):
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "bad.wav")
    if case == "unknown_label":
        write_wav(path)
    elif case == "corrupt_file":
        open(path, "wb").write(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(100))
    elif case == "truncated_file":
        write_wav(path, seconds=1.0)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif case == "empty_file":
        open(path, "wb").close()
    elif case == "non_finite":
        x = np.zeros(8000, np.float32)
        x[100] = np.nan
        sf.write(path, x, 16_000, subtype="FLOAT")
    elif case == "bad_sample_rate":
        write_wav(path, seconds=1.0, rate=1000)
    elif case == "too_short":
        write_wav(path, seconds=0.01)  # 160 samples
    elif case == "missing_file":
        pass
    return "bad.wav"


CASES = ["corrupt_file", "truncated_file", "empty_file", "non_finite", "bad_sample_rate", "too_short",
         "missing_file", "unknown_label"]


@pytest.mark.parametrize("case", CASES)
def test_bad_example_raises_then_skips(tmp_path, case, caplog):
    root = _folder(str(tmp_path / "src"), _make_bad(str(tmp_path / "src"), case),
                   bad_label="zebra" if case == "unknown_label" else "a")
    data_dir = str(tmp_path / "tfds")
    builder = prepare.make_builder("audio_folder", data_dir=data_dir, manual_dir=root)
    with pytest.raises((AudioError, DatasetError)) as e:
        builder.download_and_prepare()
    assert "bad.wav" in str(e.value) and getattr(e.value, "reason", None) == case
    with pytest.raises(DatasetError, match="not prepared"):  # the failed run left nothing that loads
        pipeline.load_source("audio_folder", "train", data_dir)
    with caplog.at_level(logging.WARNING, logger="kdjax.data"):
        assert prepare.run("audio_folder", data_dir=data_dir, manual_dir=root, skip_bad_examples=True) == 0
    assert pipeline.metadata("audio_folder", data_dir)["skipped"]["train"] == {case: 1}
    assert len(pipeline.load_source("audio_folder", "train", data_dir)) == 3
    assert case in caplog.text


def test_prepare_run_reports_error(tmp_path, capsys):
    root = _folder(str(tmp_path / "src"), _make_bad(str(tmp_path / "src"), "empty_file"))
    assert prepare.run("audio_folder", data_dir=str(tmp_path / "tfds"), manual_dir=root) == 1
    assert "bad.wav" in capsys.readouterr().err


def test_manifest_errors(tmp_path):
    root = str(tmp_path)
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("path,label\nx.wav,a\n")
    with pytest.raises(DatasetError, match="manifest.csv:1.*speaker"):
        prepare.make_builder("audio_folder", data_dir=str(tmp_path / "t"), manual_dir=root).info


def test_kill_during_prepare_leaves_nothing_loadable(tmp_path):
    data_dir = str(tmp_path)
    code = f"""
import os, signal
from kdjax.data import prepare, synth
real, n = synth.render, [0]
def render(job, difficulty):
    n[0] += 1
    if n[0] == 60:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(job, difficulty)
synth.render = render
prepare.run("synthetic_speech/kws_tiny", data_dir={data_dir!r}, num_workers=1)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert out.returncode == -signal.SIGKILL
    leftovers = os.listdir(os.path.join(data_dir, "synthetic_speech", "kws_tiny"))
    assert leftovers and all(d.startswith("incomplete") for d in leftovers)  # TFDS's temp dir, never renamed
    with pytest.raises(DatasetError, match="not prepared"):
        pipeline.load_source("synthetic_speech/kws_tiny", "train", data_dir)
    assert prepare.run("synthetic_speech/kws_tiny", data_dir=data_dir, num_workers=1) == 0
    assert len(pipeline.load_source("synthetic_speech/kws_tiny", "test", data_dir)) > 0
