"""Speaker-verification trial lists: the one parser and the checks (builders, pipeline and metrics use these).

A trial list has one trial a line, "LABEL UTT_A UTT_B", LABEL 1 for a target (same speaker) trial and 0 otherwise
(VoxCeleb's veri_test2.txt, s3prl's voxceleb1_test_v2.txt). Errors name the file (or "trial list") and the line.

    trials = parse("veri_test2.txt")                 # [(1, "id10270/x6uYqmx31kE/00001.wav", "id10270/..."), ...]
    check_ids(trials, set(utterance_ids), "veri_test2.txt")
    table = to_indices(trials, {utt: row for row, utt in enumerate(ids)})   # int64 [N, 3] for metrics.cosine_scores
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from kdjax.errors import DatasetError

Trial = tuple[int, str, str]


def parse(source: str | os.PathLike | Iterable[str]) -> list[Trial]:
    """Read a trial list (a path or an iterable of lines) into [(is_target, utt_a, utt_b), ...]."""
    where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "trial list"
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source) as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise DatasetError(f"cannot read trial list {where}: {e}") from e
    else:
        lines = list(source)
    trials = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise DatasetError(f"{where}:{lineno}: expected 'LABEL UTT_A UTT_B' with LABEL 0 or 1, "
                               f"got {line.strip()!r}")
        trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise DatasetError(f"{where}: trial list is empty")
    return trials


def speakers(trials: Iterable[Trial]) -> set[str]:
    """The speakers ("idXXXXX", the first path part of each utterance id) that a trial list uses."""
    return {u.split("/")[0] for _, a, b in trials for u in (a, b)}


def check_ids(trials: list[Trial], ids: set[str] | Mapping[str, int], where: str) -> None:
    """Raise DatasetError naming the first utterance id (and its trial) that is not in `ids`."""
    for n, (_, a, b) in enumerate(trials, 1):
        for utt in (a, b):
            if utt not in ids:
                raise DatasetError(f"{where}:{n}: utterance id {utt!r} (trial {n}) is not in the dataset")


def to_indices(trials: list[Trial], index: Mapping[str, int], where: str = "trial list") -> np.ndarray:
    """int64 [N, 3] (is_target, row_a, row_b) for trials over embeddings whose rows `index` maps utterance ids to."""
    check_ids(trials, index, where)
    return np.asarray([(t, index[a], index[b]) for t, a, b in trials], np.int64).reshape(-1, 3)


def check_index_table(table: np.ndarray, num_embeddings: int) -> np.ndarray:
    """Validate an [N, 3] (is_target, row_a, row_b) table against `num_embeddings` rows; errors name the bad row."""
    t = np.asarray(table)
    if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] == 0:
        raise DatasetError(f"trials: expected a non-empty [N, 3] array (is_target, index_a, index_b), got {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        if not np.all(np.equal(np.mod(t, 1), 0)):
            row = int(np.flatnonzero(np.any(np.mod(t, 1) != 0, axis=1))[0])
            raise DatasetError(f"trials row {row}: non-integer entries {t[row].tolist()}")
        t = t.astype(np.int64)
    bad = np.flatnonzero((t[:, 0] != 0) & (t[:, 0] != 1))
    if bad.size:
        raise DatasetError(f"trials row {bad[0]}: is_target must be 0 or 1, got {t[bad[0], 0]}")
    bad = np.flatnonzero(np.any((t[:, 1:] < 0) | (t[:, 1:] >= num_embeddings), axis=1))
    if bad.size:
        raise DatasetError(f"trials row {bad[0]}: index in {t[bad[0], 1:].tolist()} outside the "
                           f"{num_embeddings} embeddings")
    return t
