"""Evaluation of fine-tuned models: the data each protocol scores and the metrics made from it.

KWS: accuracy and confusion matrix over the test split (padded batches of eval_batch_size; with the SUPERB options,
the -3 dB gain and no waveform normalisation). SV: embeddings of the utterances a trial list names, cosine scores,
EER and minDCF. `sv_eval` chooses the batches: "padded" (kdjax's default: batches of eval_batch_size padded to their
longest utterance, centre-cropped at sv_eval_max_seconds) or "equal_length" (SUPERB: no row is padded, so a
GroupNorm feature encoder sees each utterance alone, as s3prl's one-at-a-time evaluation does).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax
import numpy as np

from kdjax.data import pipeline, sampling, trials
from kdjax.data.audio import SAMPLE_RATE
from kdjax.eval import metrics as eval_metrics


def preprocessing(cfg: Any) -> dict[str, Any]:
    """The waveform options of every batch a run makes: normalisation and gain."""
    return {"normalize": bool(cfg.normalize), "gain_db": float(cfg.gain_db)}


def trial_list(cfg: Any, purpose: str) -> tuple[str, str]:
    """(trial list name, split it indexes) for "test" (cfg.sv_trials, "" = the dataset's first) or "validation"
    (cfg.sv_dev_trials)."""
    lists = dict(pipeline.metadata(cfg.sv_dataset, cfg.data_dir).get("trials", {}))
    name = (cfg.sv_trials or next(iter(lists), "")) if purpose == "test" else cfg.sv_dev_trials
    if name not in lists:
        from kdjax.errors import ConfigError

        field = "sv_trials" if purpose == "test" else "sv_dev_trials"
        raise ConfigError(f"config.finetune.{field}={name!r}: {cfg.sv_dataset} has the trial lists {sorted(lists)}")
    return name, lists[name]


def sv_batches(cfg: Any, split: str, *, in_loop: bool) -> Iterator[dict[str, np.ndarray]]:
    """Batches of every utterance of `split` for embedding (see the module docstring for sv_eval)."""
    source = pipeline.load_source(cfg.sv_dataset, split, cfg.data_dir)
    pre = preprocessing(cfg)
    max_samples = int(cfg.sv_eval_max_seconds * SAMPLE_RATE) or None
    if cfg.sv_eval == "equal_length":  # the same batches on every process (rows/ outputs are keyed by index)
        return sampling.equal_length_batches(source, batch_size=int(cfg.sv_eval_batch_size),
                                             round_to=int(cfg.sv_eval_round_to), **pre)
    if in_loop:
        return pipeline.process_eval_batches(source, global_batch_size=int(cfg.eval_batch_size),
                                             max_samples=max_samples or 30 * SAMPLE_RATE, **pre)
    return pipeline.eval_batches(source, batch_size=int(cfg.eval_batch_size), max_samples=max_samples,
                                 pad_to=SAMPLE_RATE, **pre)


@functools.lru_cache(maxsize=16)
def _trial_rows(dataset: str, data_dir: str, split: str, list_name: str) -> tuple[int, np.ndarray]:
    """(utterances in the split, trial rows as example indices): read once per process, not at every evaluation (it
    reads every utterance's id: 0.4 s of each of the demo's SV validation passes)."""
    ids = pipeline.utterance_ids(pipeline.load_source(dataset, split, data_dir))
    parsed = pipeline.load_trials(dataset, data_dir, trial_list=list_name)
    rows = trials.to_indices(parsed, {utt: i for i, utt in enumerate(ids)}, list_name)
    rows.setflags(write=False)
    return len(ids), rows


def sv_scores(cfg: Any, split: str, list_name: str, index: np.ndarray, embeddings: np.ndarray,
              valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, target labels) of a trial list from per-row embeddings (rows keyed by example index)."""
    count, rows = _trial_rows(cfg.sv_dataset, cfg.data_dir, split, list_name)
    table = np.zeros((count, embeddings.shape[1]), np.float32)
    table[index[valid]] = embeddings[valid]
    return eval_metrics.cosine_scores(table, rows)


def trial_speakers(cfg: Any, split: str, list_name: str) -> np.ndarray:
    """[N, 2] speaker index of both sides of every trial (for the speaker-level bootstrap of kdjax.eval.intervals)."""
    source = pipeline.load_source(cfg.sv_dataset, split, cfg.data_dir)
    ids = pipeline.utterance_ids(source)
    rows = trials.to_indices(pipeline.load_trials(cfg.sv_dataset, cfg.data_dir, trial_list=list_name),
                             {utt: i for i, utt in enumerate(ids)}, list_name)
    return sampling.example_values(source, "speaker")[rows[:, 1:]]


def kws_test(logits_fn: Callable, cfg: Any, max_samples: int, caches: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], labels [N]) over the KWS test split; logits_fn(batch) -> logits of a padded batch."""
    if caches is not None:
        from kdjax.finetune import cached

        return cached.kws_test(logits_fn, caches, int(cfg.eval_batch_size))
    source = pipeline.load_source(cfg.kws_dataset, "test", cfg.data_dir)
    logits, labels = [], []
    for batch in pipeline.eval_batches(source, batch_size=int(cfg.eval_batch_size), max_samples=max_samples,
                                       pad_to=max_samples, **preprocessing(cfg)):
        out = np.asarray(logits_fn(batch))
        logits.append(out[batch["valid"]])
        labels.append(batch["label"][batch["valid"]])
    return np.concatenate(logits), np.concatenate(labels)


def sv_test(embed_fn: Callable, cfg: Any, caches: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cosine scores, target labels, [N, 2] speaker index of both sides) of the test trial list; embed_fn(batch) ->
    embeddings. The speakers come from the scored batches, not from reading the split again (2 s for the demo's 800
    test utterances)."""
    name, split = trial_list(cfg, "test")
    # the cached test split is the one the trial lists index (kdjax.finetune.cache.run_specs)
    batches = (caches.test_batches("sv", int(cfg.eval_batch_size)) if caches is not None else
               sv_batches(cfg, split, in_loop=False))
    rows = [(b["index"], np.asarray(embed_fn(b)), b["valid"], b["speaker"]) for b in batches]
    index, emb, valid, speaker = (np.concatenate(x) for x in zip(*rows))
    count, trial_rows = _trial_rows(cfg.sv_dataset, cfg.data_dir, split, name)
    speakers = np.full(count, -1, np.int64)
    speakers[index[valid]] = speaker[valid]
    return (*sv_scores(cfg, split, name, index, emb, valid), speakers[trial_rows[:, 1:]])


def test_metrics(streams: tuple[str, ...], logits_fn: Callable, embed_fn: Callable, cfg: Any, kws_samples: int,
                 label_names: list[str] | None, caches: Any = None) -> dict[str, Any]:
    """Everything a fine-tuning run reports about its test split(s): metrics plus what `kdjax report` plots."""
    out: dict[str, Any] = {"metrics": {}}
    if "kws" in streams:
        logits, labels = kws_test(jax.jit(logits_fn), cfg, kws_samples, caches)
        out["metrics"]["kws/test/accuracy"] = eval_metrics.accuracy(logits, labels)
        out["confusion_matrix"] = eval_metrics.confusion_matrix(labels, logits, len(label_names)).tolist()
        out["class_names"] = label_names
        out["kws_predictions"] = {"predictions": np.argmax(logits, -1).tolist(), "labels": labels.tolist()}
    if "sv" in streams:
        scores, labels, speakers = sv_test(jax.jit(embed_fn), cfg, caches)
        out["metrics"].update({f"sv/test/{k}": v for k, v in eval_metrics.sv_metrics(scores, labels).items()})
        out["sv_scores"] = {"scores": scores.tolist(), "labels": labels.tolist(), "speakers": speakers.tolist()}
    return out
