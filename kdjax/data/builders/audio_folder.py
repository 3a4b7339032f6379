"""audio_folder: a user's own folder of wav/flac clips described by a CSV manifest.

manual_dir holds `manifest.csv` with a header and columns `path,label,speaker` (optional `split`, default "train";
paths relative to manual_dir) and optionally `labels.txt` (one label a line: the label set; otherwise the sorted
labels of the manifest). Speaker names are mapped to indices in metadata["speakers"]; an empty speaker is -1.
"""
from __future__ import annotations

import csv
import os

import tensorflow_datasets as tfds

from kdjax.data import audio
from kdjax.data.builders import base
from kdjax.errors import DatasetError

REQUIRED = ("path", "label", "speaker")


def read_manifest(folder: str) -> tuple[list[dict], list[str]]:
    """Rows (with their manifest line number) and the label set of an audio folder."""
    path = os.path.join(folder, "manifest.csv")
    if not os.path.exists(path):
        raise DatasetError(f"audio_folder: {path} does not exist (columns: path,label,speaker[,split])")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}:1: manifest header {reader.fieldnames} lacks columns {missing}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not row["path"]:
                raise DatasetError(f"{path}:{lineno}: empty path")
            rows.append({**row, "line": lineno, "split": row.get("split") or "train"})
    labels_path = os.path.join(folder, "labels.txt")
    if os.path.exists(labels_path):
        with open(labels_path) as f:
            labels = [line.strip() for line in f if line.strip()]
    else:
        labels = sorted({r["label"] for r in rows})
    return rows, labels


class AudioFolder(base.Builder):
    """Any folder of wav/flac clips with a CSV manifest (path, label, speaker[, split])."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put manifest.csv (path,label,speaker[,split]) and the clips in manual_dir."

    def _spec(self):
        if not self.manual_dir:
            raise DatasetError("audio_folder: pass --manual_dir (the folder holding manifest.csv)")
        rows, labels = read_manifest(self.manual_dir)
        speakers = sorted({r["speaker"] for r in rows if r["speaker"]})
        meta = {"speakers": speakers, "manifest": "manifest.csv"}
        return base.features(labels), ("audio", "label"), meta

    def _split_generators(self, dl_manager):
        rows, labels = read_manifest(self.manual_dir)
        self._labels = {name: i for i, name in enumerate(labels)}
        self._speakers = {name: i for i, name in enumerate(self.info.metadata["speakers"])}
        splits: dict[str, list[dict]] = {}
        for row in rows:
            splits.setdefault(row["split"], []).append(row)
        return {split: self._generate_examples(split, rs) for split, rs in splits.items()}

    def _generate_examples(self, split: str, rows: list[dict]):
        yield from self.counted(split, self.guarded(rows, self._example, split))

    def _example(self, row: dict) -> tuple[str, dict]:
        file = os.path.join(self.manual_dir, row["path"])
        if row["label"] not in self._labels:
            err = DatasetError(f"{file} (manifest.csv line {row['line']}): label {row['label']!r} is not in the "
                               f"label set {sorted(self._labels)}")
            err.reason = "unknown_label"
            raise err
        clip = audio.load_clip(file)
        return row["path"], {"audio": clip, "label": self._labels[row["label"]], "id": row["path"],
                             "speaker": self._speakers.get(row["speaker"], -1)}
