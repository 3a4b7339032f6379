"""synthetic_speech: espeak-ng speech from synthetic speakers for KWS, SV and unlabeled pretraining (no download).

Configs: kws, sv, unlabeled (demo-sized) and kws_tiny, sv_tiny, unlabeled_tiny (for tests). See docs/datasets.md.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import multiprocessing
import os
import time
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from kdjax.data import synth
from kdjax.data.audio import SAMPLE_RATE
from kdjax.data.builders import base

KWS_LABELS = list(synth.KEYWORDS) + ["_unknown_", "_silence_"]
SECOND = SAMPLE_RATE  # samples


@dataclasses.dataclass(eq=False)
class SynthConfig(tfds.core.BuilderConfig):
    """Size and difficulty knobs of one synthetic corpus (recorded in the dataset metadata)."""

    task: str = "kws"
    seed: int = 0
    num_speakers: int = 300
    # kws: per speaker, each keyword `keyword_reps` times, plus unknown words and noise-only clips
    keyword_reps: int = 1
    unknown_per_speaker: int = 4
    silence_per_speaker: int = 1
    validation_pct: float = 10.0
    test_pct: float = 10.0
    # sv: held-out speakers for the trials, utterances per speaker, trial count
    test_speakers: int = 50
    utts_per_speaker: int = 8
    num_trials: int = 4000
    seconds: tuple[float, float] = (1.0, 4.0)
    difficulty: synth.Difficulty = dataclasses.field(default_factory=synth.Difficulty)


def _configs() -> list[SynthConfig]:
    v = tfds.core.Version("1.0.0")
    return [
        SynthConfig(name="kws", version=v, description="12-class SUPERB-style keyword spotting", task="kws"),
        SynthConfig(name="sv", version=v, description="speaker-labelled utterances and a verification trial list",
                    task="sv", utts_per_speaker=8, seconds=(1.0, 4.0)),
        SynthConfig(name="unlabeled", version=v, description="multi-word utterances for distillation/pretraining",
                    task="unlabeled", utts_per_speaker=6, seconds=(1.0, 6.0), test_pct=0.0),
        SynthConfig(name="kws_tiny", version=v, description="tiny kws for tests", task="kws", num_speakers=12,
                    unknown_per_speaker=1, validation_pct=25.0, test_pct=25.0),
        SynthConfig(name="sv_tiny", version=v, description="tiny sv for tests", task="sv", num_speakers=10,
                    test_speakers=4, utts_per_speaker=3, num_trials=24, seconds=(1.0, 2.0)),
        SynthConfig(name="unlabeled_tiny", version=v, description="tiny unlabeled for tests", task="unlabeled",
                    num_speakers=6, utts_per_speaker=2, seconds=(1.0, 3.0), validation_pct=34.0, test_pct=0.0),
    ]


class SyntheticSpeech(base.Builder):
    """Synthetic espeak-ng speech from several hundred synthetic speakers (kdjax's embedded default corpus)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = _configs()

    def _spec(self):
        cfg: SynthConfig = self.builder_config
        speakers = synth.make_speakers(cfg.num_speakers, cfg.seed, cfg.difficulty)
        meta = {"config": _jsonable(dataclasses.asdict(cfg)), "speakers": [s.name for s in speakers]}
        if cfg.task == "kws":
            return base.features(KWS_LABELS), ("audio", "label"), meta
        if cfg.task == "sv":
            meta["num_train_speakers"] = cfg.num_speakers - cfg.test_speakers
            meta["trials"] = {"test": "test"}  # trial list name -> split its utterances come from
        return base.features(), None, meta

    def _split_generators(self, dl_manager):
        cfg: SynthConfig = self.builder_config
        speakers = synth.make_speakers(cfg.num_speakers, cfg.seed, cfg.difficulty)
        jobs = {"kws": _kws_jobs, "sv": _sv_jobs, "unlabeled": _unlabeled_jobs}[cfg.task](cfg, speakers)
        if cfg.task == "sv":
            self._write_trials(cfg, jobs["test"])
        return {split: self._generate_examples(split, js) for split, js in jobs.items()}

    def _generate_examples(self, split: str, jobs: list[synth.Job]) -> Iterator[tuple[str, dict]]:
        start = time.time()
        render = functools.partial(synth.render, difficulty=self.builder_config.difficulty)
        bar = tqdm.tqdm(total=len(jobs), desc=f"synthesising {self.builder_config.name}/{split}", unit="clip")
        workers = min(self.num_workers, max(1, len(jobs) // 16))
        if workers <= 1:
            yield from self.counted(split, _progress(map(render, jobs), bar))
        else:
            # spawn: forking a process that has imported jax (threads) can deadlock.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                yield from self.counted(split, _progress(pool.imap(render, jobs, chunksize=8), bar))
        bar.close()
        times = dict(self.info.metadata.get("generation_seconds", {}))
        times[split] = round(time.time() - start, 1)
        self.info.metadata["generation_seconds"] = times
        self.record_skips(split, collections.Counter())  # synthesis has no bad inputs; record the zero

    def _write_trials(self, cfg: SynthConfig, jobs: list[synth.Job]) -> None:
        rng = np.random.default_rng([cfg.seed, 99])
        by_spk: dict[int, list[str]] = {}
        for j in jobs:
            by_spk.setdefault(j.speaker_index, []).append(j.key)
        spks = sorted(by_spk)
        lines = []
        for t in range(cfg.num_trials):
            target = t % 2 == 0
            a = spks[rng.integers(len(spks))]
            b = a if target else spks[(spks.index(a) + 1 + rng.integers(len(spks) - 1)) % len(spks)]
            ua, ub = (rng.choice(by_spk[a], 2, replace=False) if target else
                      (rng.choice(by_spk[a]), rng.choice(by_spk[b])))
            lines.append(f"{int(target)} {ua} {ub}\n")
        os.makedirs(os.fspath(self.data_path / "trials"), exist_ok=True)  # inside TFDS's incomplete dir
        with open(os.fspath(self.data_path / "trials" / "test.txt"), "w") as f:
            f.writelines(lines)


def _progress(results, bar) -> Iterator[tuple[str, dict]]:
    for r in results:
        bar.update(1)
        yield r


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k not in ("version", "supported_versions", "tags")}
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)


def _kws_jobs(cfg: SynthConfig, speakers: list[synth.Speaker]) -> dict[str, list[synth.Job]]:
    splits: dict[str, list[synth.Job]] = {"train": [], "validation": [], "test": []}
    for si, spk in enumerate(speakers):
        rng = np.random.default_rng([cfg.seed, 2, si])
        items = [(w, k) for k, w in enumerate(synth.KEYWORDS) for _ in range(cfg.keyword_reps)]
        items += [(synth.UNKNOWN_WORDS[rng.integers(len(synth.UNKNOWN_WORDS))], 10)
                  for _ in range(cfg.unknown_per_speaker)]
        items += [("", 11)] * cfg.silence_per_speaker
        split = synth.speaker_split(spk.name, cfg.validation_pct, cfg.test_pct)
        for n, (text, label) in enumerate(items):
            key = f"{spk.name}_{KWS_LABELS[label]}_{n:03d}"
            splits[split].append(synth.Job(key, spk, si, text, SECOND, label, (cfg.seed, 3, si, n)))
    return splits


def _sentence(rng: np.random.Generator, seconds: float) -> str:
    words = max(2, int(round(seconds * 2.6)))  # espeak at 130-200 wpm says ~2.5 words/s
    return " ".join(synth.VOCAB[i] for i in rng.integers(len(synth.VOCAB), size=words))


def _utterances(cfg: SynthConfig, spk: synth.Speaker, si: int, tag: int) -> list[synth.Job]:
    rng = np.random.default_rng([cfg.seed, tag, si])
    jobs = []
    for n in range(cfg.utts_per_speaker):
        seconds = float(rng.uniform(*cfg.seconds))
        # the window length fixes the clip duration; speech longer than it is cut at the end
        jobs.append(synth.Job(f"{spk.name}/{n:03d}", spk, si, _sentence(rng, seconds * 0.8),
                              int(seconds * SECOND), -1, (cfg.seed, tag + 1, si, n)))
    return jobs


def _sv_jobs(cfg: SynthConfig, speakers: list[synth.Speaker]) -> dict[str, list[synth.Job]]:
    n_train = cfg.num_speakers - cfg.test_speakers
    out: dict[str, list[synth.Job]] = {"train": [], "test": []}
    for si, spk in enumerate(speakers):
        out["train" if si < n_train else "test"].extend(_utterances(cfg, spk, si, 4))
    return out


def _unlabeled_jobs(cfg: SynthConfig, speakers: list[synth.Speaker]) -> dict[str, list[synth.Job]]:
    out: dict[str, list[synth.Job]] = {"train": [], "validation": []}
    for si, spk in enumerate(speakers):
        split = synth.speaker_split(spk.name, cfg.validation_pct, 0.0)
        out[split].extend(_utterances(cfg, spk, si, 6))
    return out
