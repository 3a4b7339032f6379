"""voxceleb1/superb: s3prl's SoX chain (gain -3 dB, silence trimming) at prepare time and the voxceleb1_test_v2.txt
trial list SUPERB scores. Needs the sox package and binary (the `sox` extra; apt-get install sox)."""
import os
import shutil
import zipfile

import numpy as np
import pytest
import soundfile as sf

from kdjax.data import audio, pipeline, prepare
from kdjax.errors import DatasetError

NO_SOX = shutil.which("sox") is None or not __import__("importlib").util.find_spec("sox")
pytestmark = pytest.mark.skipif(NO_SOX, reason="needs the sox binary and package (kdjax[sox]; apt-get install sox)")
GAIN = 10 ** (-3 / 20)


def _clip(path, seed):
    """0.5 s of digital silence, 0.6 s of tone, 0.3 s of silence, 0.6 s of tone: SoX keeps the 1.2 s of tone."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    tone = lambda: 0.5 * np.sin(2 * np.pi * rng.uniform(200, 400) * np.arange(9600) / 16000)
    sf.write(path, np.concatenate([np.zeros(8000), tone(), np.zeros(4800), tone()]).astype(np.float32), 16000,
             subtype="PCM_16")


def test_sox_effects_gain_and_trim():
    x = np.concatenate([np.zeros(8000), 0.5 * np.ones(3200) * np.sign(np.sin(np.arange(3200))), np.zeros(8000)])
    y = audio.sox_effects(x.astype(np.float32), gain_db=-3.0, trim_silence=True)
    assert 3200 <= y.shape[0] < 3700 and np.abs(y).max() == pytest.approx(0.5 * GAIN, rel=1e-3)
    np.testing.assert_allclose(audio.sox_effects(x, gain_db=-3.0), x * GAIN, atol=1e-4)  # gain only: no trimming


def test_superb_config_trims_and_scores_voxceleb1_test_v2(tmp_path):
    manual = tmp_path / "vox"
    for spk in ("id10001", "id10002"):
        _clip(str(tmp_path / "dev" / "wav" / spk / "vidA" / "00001.wav"), seed=int(spk[-1]))
    os.makedirs(manual)
    with zipfile.ZipFile(manual / "vox1_dev_wav.zip", "w") as z:
        for spk in ("id10001", "id10002"):
            z.write(tmp_path / "dev" / "wav" / spk / "vidA" / "00001.wav", f"wav/{spk}/vidA/00001.wav")
    for spk in ("id10270", "id10271"):
        for n in (1, 2):
            _clip(str(manual / "vox1_test_wav" / "wav" / spk / "vidB" / f"0000{n}.wav"), seed=n)
    v2 = "1 id10270/vidB/00001.wav id10270/vidB/00002.wav\n0 id10270/vidB/00001.wav id10271/vidB/00002.wav\n"
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(DatasetError, match="voxceleb1_test_v2.txt is missing"):
        prepare.make_builder("voxceleb1/superb", data_dir=data_dir, manual_dir=str(manual)).download_and_prepare(
            download_config=__import__("tensorflow_datasets").download.DownloadConfig(manual_dir=str(manual)))
    (manual / "voxceleb1_test_v2.txt").write_text(v2)
    (manual / "dev_meta_data.txt").write_text("0 id10001/vidA/00001.wav id10002/vidA/00001.wav\n")
    assert prepare.run("voxceleb1/superb", data_dir=data_dir, manual_dir=str(manual), num_workers=1) == 0
    meta = pipeline.metadata("voxceleb1/superb", data_dir)
    assert list(meta["trials"]) == ["superb", "dev"] and meta["preprocessing"]["gain_db"] == -3.0
    assert meta["trials"]["dev"] == "train"  # s3prl's dev list is over training speakers
    assert pipeline.load_trials("voxceleb1/superb", data_dir) == [(int(l[0]), *l.split()[1:]) for l in
                                                                  v2.splitlines()]
    for split in ("train", "test"):
        src = pipeline.load_source("voxceleb1/superb", split, data_dir)
        for i in range(len(src)):
            x = audio.to_float(src[i]["audio"])
            assert 19200 <= x.shape[0] < 20500, x.shape  # 2 s in, the 1.2 s of tone (and a few ms) out
            assert np.abs(x).max() == pytest.approx(0.5 * GAIN, rel=2e-3)
