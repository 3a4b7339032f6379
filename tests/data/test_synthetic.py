"""The synthetic_speech builder: splits, labels, speakers, metadata, CLI summary."""
import numpy as np

from kdjax import cli
from kdjax.data import pipeline


def test_kws_tiny(tiny_data_dir):
    names = pipeline.label_names("synthetic_speech/kws_tiny", tiny_data_dir)
    assert len(names) == 12
    speakers = {}
    for split in ("train", "validation", "test"):
        src = pipeline.load_source("synthetic_speech/kws_tiny", split, tiny_data_dir)
        exs = [src[i] for i in range(len(src))]
        assert all(e["audio"].dtype == np.int16 and e["audio"].shape == (16_000,) for e in exs)
        speakers[split] = {int(e["speaker"]) for e in exs}
        assert {int(e["label"]) for e in exs} == set(range(12))  # every class in every split
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["validation"]
    meta = pipeline.metadata("synthetic_speech/kws_tiny", tiny_data_dir)
    assert meta["config"]["task"] == "kws" and meta["stats"]["train"]["examples"] == len(
        pipeline.load_source("synthetic_speech/kws_tiny", "train", tiny_data_dir))
    assert meta["skipped"] == {"train": {}, "validation": {}, "test": {}}


def test_sv_and_unlabeled_durations(tiny_data_dir):
    src = pipeline.load_source("synthetic_speech/sv_tiny", "train", tiny_data_dir)
    lengths = [src[i]["audio"].shape[0] for i in range(len(src))]
    assert len(src) == 18 and 16_000 <= min(lengths) and max(lengths) <= 32_000
    src = pipeline.load_source("synthetic_speech/unlabeled_tiny", "train", tiny_data_dir)
    assert "label" not in src[0] and max(src[i]["audio"].shape[0] for i in range(len(src))) <= 48_000
    assert np.abs(src[0]["audio"]).max() > 1000  # speech, not silence


def test_cli_prepare_is_idempotent_and_summarises(tiny_data_dir, capsys):
    assert cli.main(["prepare", "synthetic_speech/kws_tiny", "--data_dir", tiny_data_dir]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "speakers" in out and " h " in out


def test_cli_unknown_config(tmp_path, capsys):
    assert cli.main(["prepare", "synthetic_speech/huge", "--data_dir", str(tmp_path)]) == 1
    assert "no config 'huge'" in capsys.readouterr().err


def test_parallel_generation_matches_serial(tiny_data_dir, tmp_path):
    from kdjax.data import prepare

    assert prepare.run("synthetic_speech/kws_tiny", data_dir=str(tmp_path), num_workers=2) == 0
    for split in ("train", "test"):
        a = pipeline.load_source("synthetic_speech/kws_tiny", split, str(tmp_path))
        b = pipeline.load_source("synthetic_speech/kws_tiny", split, tiny_data_dir)
        rows = lambda s: sorted((e["id"], int(e["label"]), int(e["speaker"])) for e in (s[i] for i in range(len(s))))  # noqa: E731
        assert rows(a) == rows(b)


def test_kws_evaluation_splits_are_class_balanced_and_sv_has_validation_speakers():
    import collections
    import dataclasses

    from kdjax.data import synth
    from kdjax.data.builders import synthetic_speech as ss

    cfg = next(c for c in ss._configs() if c.name == "kws")
    cfg = dataclasses.replace(cfg, num_speakers=60, validation_per_class=7, test_per_class=11)
    jobs = ss._kws_jobs(cfg, synth.make_speakers(cfg.num_speakers, cfg.seed, cfg.difficulty))
    for split, per_class in (("validation", 7), ("test", 11)):
        counts = collections.Counter(j.label for j in jobs[split])
        assert counts == {label: per_class for label in range(12)}, (split, counts)
        per_speaker = collections.Counter(j.speaker_index for j in jobs[split]).values()
        assert max(per_speaker) - min(per_speaker) <= 12  # spread over the split's speakers, not piled on one
    train = collections.Counter(j.label for j in jobs["train"])
    assert train[10] == 4 * train[0]  # training keeps SUPERB's unknown-heavy mix (4 unknown clips per keyword)
    assert len({j.key for s in jobs.values() for j in s}) == sum(len(s) for s in jobs.values())
    speakers = {s: {j.speaker_index for j in jobs[s]} for s in jobs}
    assert not speakers["train"] & (speakers["test"] | speakers["validation"])

    cfg = next(c for c in ss._configs() if c.name == "sv")
    jobs = ss._sv_jobs(cfg, synth.make_speakers(cfg.num_speakers, cfg.seed, cfg.difficulty))
    n_train = cfg.num_speakers - cfg.test_speakers - cfg.validation_speakers
    assert {j.speaker_index for j in jobs["train"]} == set(range(n_train))  # labels 0..n_train-1
    assert len({j.speaker_index for j in jobs["validation"]}) == cfg.validation_speakers == 30
    assert len({j.speaker_index for j in jobs["test"]}) == cfg.test_speakers >= 100 and cfg.num_trials >= 20_000


def test_sv_tiny_has_validation_trials(tiny_data_dir):
    trials = pipeline.load_trials("synthetic_speech/sv_tiny", tiny_data_dir, trial_list="validation")
    meta = pipeline.metadata("synthetic_speech/sv_tiny", tiny_data_dir)
    assert meta["trials"] == {"test": "test", "validation": "validation"} and meta["num_train_speakers"] == 6
    assert len(trials) == 12 and {t for t, _, _ in trials} == {0, 1}


def test_channel_eq_and_noise_colour_at_lengths_with_large_prime_factors():
    """The EQ and the noise colour are applied at a fast FFT length and cut back: on a 23,459-sample clip (a prime
    length) a tone at an EQ centre gets that band's gain, and pink / brown noise fall ~3 / ~6 dB per octave."""
    from kdjax.data import synth
    from kdjax.data.audio import SAMPLE_RATE

    n = 23_459
    t = np.arange(n) / SAMPLE_RATE
    gains = np.zeros(len(synth._EQ_CENTRES))
    gains[3] = 9.0
    tone = np.sin(2 * np.pi * synth._EQ_CENTRES[3] * t).astype(np.float32)
    out = synth._apply_eq(tone, gains)
    assert out.shape == (n,) and out.dtype == np.float32
    core = slice(n // 4, 3 * n // 4)  # away from the edges, where the cut-back filter rings
    np.testing.assert_allclose(np.std(out[core]) / np.std(tone[core]), 10 ** (9.0 / 20), rtol=0.02)
    for colour, slope_db in ((1, -3.0), (2, -6.0)):
        seed = next(s for s in range(100) if np.random.default_rng(s).integers(3) == colour)  # _noise's first draw
        x = synth._noise(n, np.random.default_rng(seed))
        assert x.shape == (n,) and abs(float(np.sqrt(np.mean(x ** 2))) - 1.0) < 1e-3
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        band = lambda lo: power[(f >= lo) & (f < 2 * lo)].mean()  # noqa: E731
        octaves = [10 * np.log10(band(lo * 2) / band(lo)) for lo in (250, 500, 1000, 2000)]
        assert abs(np.mean(octaves) - slope_db) < 1.0, (colour, octaves)
