"""Difficulty check of a prepared corpus with two classic baselines (no neural nets).

KWS: per-clip MFCC statistics (mean, std of MFCC and deltas) + logistic regression, accuracy on the test split.
SV: mean-MFCC embeddings scored by cosine similarity on the trial list, equal error rate.
Targets for synthetic_speech: KWS accuracy <= 90% and EER >= 5% (not trivial), far above chance (8.3% / 50%).

    python benchmarks/corpus_difficulty.py --data_dir DIR [--kws synthetic_speech/kws] [--sv synthetic_speech/sv]
"""
from __future__ import annotations

import argparse

import numpy as np

from kdjax.data import pipeline


def _mel_filters(n_fft: int = 512, n_mels: int = 40, rate: int = 16_000) -> np.ndarray:
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(20.0), mel(rate / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / rate)
    fb = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        lo, c, hi = edges[i:i + 3]
        fb[i] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0.0, None)
    return fb


_FB = _mel_filters()
_DCT = np.cos(np.pi / 40 * (np.arange(40)[None, :] + 0.5) * np.arange(20)[:, None])


def mfcc(x: np.ndarray) -> np.ndarray:
    """[frames, 20] MFCCs (25 ms Hamming frames, 10 ms hop, 40 mel bands)."""
    x = x.astype(np.float32) / 32768.0
    n = 1 + max(0, (x.size - 400) // 160)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (0, 400)), 400)[::160][:n] * np.hamming(400)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    return np.log(power @ _FB.T + 1e-8) @ _DCT.T


def _stats(x: np.ndarray) -> np.ndarray:
    m = mfcc(x)
    d = np.diff(m, axis=0)
    return np.concatenate([m.mean(0), m.std(0), d.std(0)])


def kws_accuracy(name: str, data_dir: str | None, return_correct: bool = False):
    """Test accuracy of MFCC statistics + logistic regression (and, with return_correct, the per-clip 0/1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def xy(split):
        src = pipeline.load_source(name, split, data_dir)
        exs = [src[i] for i in range(len(src))]
        return np.stack([_stats(e["audio"]) for e in exs]), np.array([e["label"] for e in exs])

    (xtr, ytr), (xte, yte) = xy("train"), xy("test")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(xtr, ytr)
    correct = clf.predict(xte) == yte
    return (float(correct.mean()), correct) if return_correct else float(correct.mean())


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate of scores (higher = same speaker) against 0/1 labels."""
    order = np.argsort(-scores)
    lab = labels[order]
    tpr = np.cumsum(lab) / lab.sum()
    fpr = np.cumsum(1 - lab) / (1 - lab).sum()
    i = np.argmin(np.abs((1 - tpr) - fpr))
    return float(((1 - tpr[i]) + fpr[i]) / 2)


def sv_scores(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of cosine scoring between mean-MFCC embeddings of the louder frames (test-set mean removed)
    on the test trial list."""
    trials = pipeline.load_trials(name, data_dir)
    src = pipeline.load_source(name, pipeline.metadata(name, data_dir)["trials"]["test"], data_dir)
    emb = {}
    for i in range(len(src)):
        ex = src[i]
        m = mfcc(ex["audio"])
        emb[ex["id"].decode()] = m[m[:, 0] >= np.median(m[:, 0]), 1:].mean(0)  # louder half: speech, not noise
    mean = np.mean(list(emb.values()), axis=0)
    unit = {k: (v - mean) / np.linalg.norm(v - mean) for k, v in emb.items()}
    scores = np.array([unit[a] @ unit[b] for _, a, b in trials])
    return scores, np.array([t for t, _, _ in trials])


def sv_eer(name: str, data_dir: str | None) -> float:
    """EER of the mean-MFCC cosine baseline (sv_scores)."""
    return eer(*sv_scores(name, data_dir))


def main() -> None:
    """Print the KWS accuracy and SV EER of the classic baselines."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--kws", default="synthetic_speech/kws")
    p.add_argument("--sv", default="synthetic_speech/sv")
    args = p.parse_args()
    if args.kws:
        print(f"KWS {args.kws}: MFCC-stats + logistic regression accuracy {kws_accuracy(args.kws, args.data_dir):.3f}"
              f" (chance {1 / len(pipeline.label_names(args.kws, args.data_dir)):.3f}; target <= 0.90)")
    if args.sv:
        print(f"SV {args.sv}: mean-MFCC cosine EER {sv_eer(args.sv, args.data_dir):.3f} (chance 0.5; target >= 0.05)")


if __name__ == "__main__":
    main()
