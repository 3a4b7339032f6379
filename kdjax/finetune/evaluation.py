"""Test-time evaluation of a fine-tuned model: KWS accuracy and confusion matrix, SV trial scores (EER, minDCF).

Runs once at the end of a fine-tuning run on the exported (best) state, on one device of each host, over whole test
splits; validation during training is the task's eval_step (jitted and reduced by the loop).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from kdjax.data import pipeline
from kdjax.data.audio import SAMPLE_RATE
from kdjax.eval import metrics as eval_metrics


def kws_test(logits_fn: Callable, cfg: Any, max_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], labels [N]) over the KWS test split; logits_fn(batch) -> logits of a padded batch."""
    source = pipeline.load_source(cfg.kws_dataset, "test", cfg.data_dir)
    logits, labels = [], []
    for batch in pipeline.eval_batches(source, batch_size=int(cfg.eval_batch_size), max_samples=max_samples,
                                       pad_to=max_samples):
        out = np.asarray(logits_fn(batch))
        logits.append(out[batch["valid"]])
        labels.append(batch["label"][batch["valid"]])
    return np.concatenate(logits), np.concatenate(labels)


def sv_test(embed_fn: Callable, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, target labels) of the SV trial list; embed_fn(batch) -> embeddings of a padded batch."""
    source = pipeline.load_source(cfg.sv_dataset, "test", cfg.data_dir)
    ids = pipeline.utterance_ids(source)
    rows = []
    for batch in pipeline.eval_batches(source, batch_size=int(cfg.eval_batch_size),
                                       max_samples=int(cfg.sv_eval_max_seconds * SAMPLE_RATE), pad_to=SAMPLE_RATE):
        emb = np.asarray(embed_fn(batch))
        rows.append((batch["index"][batch["valid"]], emb[batch["valid"]]))
    embeddings = np.zeros((len(source), rows[0][1].shape[1]), np.float32)
    for index, emb in rows:
        embeddings[index] = emb
    trials = pipeline.load_trials(cfg.sv_dataset, cfg.data_dir)
    position = {utt: i for i, utt in enumerate(ids)}
    table = np.asarray([(t, position[a], position[b]) for t, a, b in trials], np.int64)
    return eval_metrics.cosine_scores(embeddings, table)


def test_metrics(streams: tuple[str, ...], logits_fn: Callable, embed_fn: Callable, cfg: Any, kws_samples: int,
                 label_names: list[str] | None) -> dict[str, Any]:
    """Everything a fine-tuning run reports about its test split(s): metrics plus what `kdjax report` plots."""
    out: dict[str, Any] = {"metrics": {}}
    if "kws" in streams:
        logits, labels = kws_test(jax.jit(logits_fn), cfg, kws_samples)
        out["metrics"]["kws/test/accuracy"] = eval_metrics.accuracy(logits, labels)
        out["confusion_matrix"] = eval_metrics.confusion_matrix(labels, logits, len(label_names)).tolist()
        out["class_names"] = label_names
    if "sv" in streams:
        scores, labels = sv_test(jax.jit(embed_fn), cfg)
        out["metrics"].update({f"sv/test/{k}": v for k, v in eval_metrics.sv_metrics(scores, labels).items()})
        out["sv_scores"] = {"scores": scores.tolist(), "labels": labels.tolist()}
    return out
