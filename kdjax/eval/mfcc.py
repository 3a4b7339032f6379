"""Classic references that need no encoder: MFCC statistics + logistic regression (KWS) and mean-MFCC cosine scoring
(SV). The demo puts them in its table so that an encoder's rows can be judged against what no deep learning gets.

Both write a results.json in the fine-tuning runs' format (role "reference"), so `kdjax report` treats them as rows.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from kdjax.data import pipeline
from kdjax.data.audio import SAMPLE_RATE
from kdjax.pretrain.features import dct_matrix, mel_filterbank

WINDOW, HOP, N_FFT, N_MELS, N_MFCC = 400, 160, 512, 40, 20  # 25 ms windows every 10 ms


def mfcc(audio: np.ndarray) -> np.ndarray:
    """[frames, 20] MFCCs of int16 or float audio (Hamming windows, 40 HTK-mel bands, orthonormal DCT)."""
    x = audio.astype(np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0)
    x = np.pad(x, (0, max(0, WINDOW - x.size)))
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP] * np.hamming(WINDOW).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, N_FFT)) ** 2
    return np.log(power @ mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS) + 1e-8) @ dct_matrix(N_MELS, N_MFCC)


def clip_statistics(audio: np.ndarray) -> np.ndarray:
    """Mean and std of the MFCCs and std of their first differences: a fixed-size vector per clip."""
    m = mfcc(audio)
    return np.concatenate([m.mean(0), m.std(0), np.diff(m, axis=0).std(0) if len(m) > 1 else np.zeros(N_MFCC)])


def _split_features(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    source = pipeline.load_source(dataset, split, data_dir)
    examples = [source[i] for i in range(len(source))]
    return (np.stack([clip_statistics(e["audio"]) for e in examples]).astype(np.float32),
            np.asarray([int(e["label"]) for e in examples]))


def _logistic_regression(x: np.ndarray, y: np.ndarray, classes: int, *, l2: float = 1e-3, steps: int = 500):
    """Softmax regression trained full-batch with Adam (standardised inputs); returns a predict function."""
    import jax
    import jax.numpy as jnp
    import optax

    mean, std = x.mean(0), x.std(0) + 1e-6
    z, labels = jnp.asarray((x - mean) / std), jnp.asarray(y)
    params = {"w": jnp.zeros((x.shape[1], classes)), "b": jnp.zeros(classes)}
    tx = optax.adam(0.05)

    def loss(p):
        logits = z @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    return lambda feats: np.argmax(((feats - mean) / std) @ w + b, axis=-1)


def kws_reference(dataset: str, data_dir: str | None) -> dict[str, Any]:
    """Test accuracy, confusion matrix and per-clip predictions of MFCC statistics + logistic regression."""
    from kdjax.eval.metrics import confusion_matrix

    names = pipeline.label_names(dataset, data_dir)
    xtr, ytr = _split_features(dataset, "train", data_dir)
    xte, yte = _split_features(dataset, "test", data_dir)
    pred = _logistic_regression(xtr, ytr, len(names))(xte)
    return {"metrics": {"kws/test/accuracy": float(np.mean(pred == yte))},
            "confusion_matrix": confusion_matrix(yte, pred, len(names)).tolist(), "class_names": names,
            "kws_predictions": {"predictions": pred.tolist(), "labels": yte.tolist()}}


def sv_reference(dataset: str, data_dir: str | None) -> dict[str, Any]:
    """EER, minDCF and trial scores of cosine scoring between mean-MFCC vectors of each utterance's louder half of
    frames (speech, not the noise around it; c0 dropped, the test set's mean removed)."""
    from kdjax.data import trials as trials_lib
    from kdjax.data.sampling import example_values
    from kdjax.eval.metrics import cosine_scores, sv_metrics

    split = pipeline.metadata(dataset, data_dir)["trials"]["test"]
    source = pipeline.load_source(dataset, split, data_dir)
    emb = []
    for i in range(len(source)):
        m = mfcc(source[i]["audio"])
        emb.append(m[m[:, 0] >= np.median(m[:, 0]), 1:].mean(0))
    emb = np.stack(emb)
    emb -= emb.mean(0)
    ids = pipeline.utterance_ids(source)
    rows = trials_lib.to_indices(pipeline.load_trials(dataset, data_dir, trial_list="test"),
                                 {u: i for i, u in enumerate(ids)}, "test")
    scores, labels = cosine_scores(emb, rows)
    speakers = example_values(source, "speaker")[rows[:, 1:]]
    return {"metrics": {f"sv/test/{k}": v for k, v in sv_metrics(scores, labels).items()},
            "sv_scores": {"scores": scores.tolist(), "labels": labels.tolist(), "speakers": speakers.tolist()}}


def write_reference(workdir: str, mode: str, dataset: str, data_dir: str | None) -> str:
    """Compute the `mode` ("kws" | "sv") reference and write WORKDIR/results.json (atomically); returns workdir."""
    out = kws_reference(dataset, data_dir) if mode == "kws" else sv_reference(dataset, data_dir)
    out.update(name=os.path.basename(os.path.normpath(workdir)), task=mode,
               model={"name": "MFCC", "role": "reference", "params": 0})
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"export": out}, f)
    os.replace(path + ".tmp", path)
    return workdir
