"""What every kdjax builder shares: ArrayRecord output, the feature set, and counting (or raising on) bad clips."""
from __future__ import annotations

import collections
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as _tfds_shuffle

from kdjax.errors import AudioError, DatasetError
from kdjax.data.audio import SAMPLE_RATE

log = logging.getLogger("kdjax.data")

# TFDS shuffles a split in memory up to this many serialised bytes and past it spills to buckets written with
# tf.io.gfile, which needs TensorFlow (kdjax does not install it): raise the in-memory limit from TFDS's 1 GB (about
# 1 h of audio as serialised int16) so that corpora of several hours prepare without TensorFlow.
_tfds_shuffle.MAX_MEM_BUFFER_SIZE = max(_tfds_shuffle.MAX_MEM_BUFFER_SIZE, 12 << 30)


def features(labels: list[str] | None = None, text: bool = False) -> tfds.features.FeaturesDict:
    """int16 16 kHz audio (tfds.features.Audio would import TensorFlow), speaker index, utterance id, label."""
    spec: dict[str, Any] = {
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "speaker": tfds.features.Scalar(dtype=np.int32, doc="index into metadata['speakers']; -1: none"),
        "id": tfds.features.Text(),
    }
    if labels is not None:
        spec["label"] = tfds.features.ClassLabel(names=labels)
    if text:
        spec["text"] = tfds.features.Text()
    return tfds.features.FeaturesDict(spec)


class Builder(tfds.core.GeneratorBasedBuilder):
    """GeneratorBasedBuilder writing ArrayRecord, with `skip_bad_examples` and a worker count."""

    url_infos: dict = {}  # no checksums file next to the code (tfds would look for one in the package folder)

    def __init__(self, *, skip_bad_examples: bool = False, num_workers: int | None = None,
                 manual_dir: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("file_format", "array_record")
        self.manual_dir = manual_dir  # builders whose features depend on the data (audio_folder) read it early
        self.skip_bad_examples = skip_bad_examples
        self.num_workers = num_workers or os.cpu_count() or 1
        self.skipped: collections.Counter[str] = collections.Counter()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs wants a package folder with metadata files.
        feats, keys, metadata = self._spec()
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=feats,
                                     supervised_keys=keys, metadata=tfds.core.MetadataDict(metadata))

    def _spec(self) -> tuple[tfds.features.FeaturesDict, tuple[str, str] | None, dict]:
        raise NotImplementedError

    def guarded(self, items: Iterable[Any], make: Callable[[Any], tuple[str, dict] | None],
                split: str) -> Iterator[tuple[str, dict]]:
        """Yield make(item) for each item; bad clips raise, or with skip_bad_examples are skipped and counted."""
        counts: collections.Counter[str] = collections.Counter()
        for item in items:
            try:
                out = make(item)
            except (AudioError, DatasetError) as e:
                self.skip_or_raise(e, counts)
                continue
            if out is not None:
                yield out
        self.record_skips(split, counts)

    def counted(self, split: str, examples: Iterable[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
        """Pass examples through, recording examples / hours / speakers of the split in the metadata."""
        n, samples, speakers = 0, 0, set()
        for key, ex in examples:
            n += 1
            samples += int(ex["audio"].shape[0])
            speakers.add(int(ex.get("speaker", -1)))
            yield key, ex
        stats = dict(self.info.metadata.get("stats", {}))
        stats[split] = {"examples": n, "hours": round(samples / SAMPLE_RATE / 3600, 4), "speakers": len(speakers - {-1})}
        self.info.metadata["stats"] = stats

    def skip_or_raise(self, err: Exception, counts: collections.Counter) -> None:
        """Re-raise a bad-example error, or (skip_bad_examples) count it under its reason and log it."""
        if not self.skip_bad_examples:
            raise err
        reason = getattr(err, "reason", type(err).__name__)
        counts[reason] += 1
        log.warning("skipping bad example (%s): %s", reason, err)

    def record_skips(self, split: str, counts: collections.Counter) -> None:
        """Log per-reason skip counts of a split and keep them in the dataset metadata."""
        skipped = dict(self.info.metadata.get("skipped", {}))
        skipped[split] = dict(collections.Counter(skipped.get(split, {})) + counts)
        self.info.metadata["skipped"] = skipped
        self.skipped.update(counts)
        if counts:
            log.warning("%s/%s: skipped %d bad examples: %s", self.name, split, sum(counts.values()), dict(counts))


def manual_path(dl_manager: tfds.download.DownloadManager, dataset: str, what: str) -> str:
    """The manual_dir (must exist), or a DatasetError saying what to put there."""
    path = dl_manager._manual_dir  # the public property asserts instead of raising a useful error
    if not path or not os.path.isdir(os.fspath(path)):
        raise DatasetError(f"{dataset}: --manual_dir {path or '(not set)'} is not a folder; it must hold {what}")
    return os.fspath(path)


def extract_tar(archive: str, dl_manager: tfds.download.DownloadManager) -> str:
    """Extract a tar(.gz) once into the download manager's extract dir (TFDS's extractor imports TensorFlow)."""
    import shutil
    import tarfile
    import tempfile

    root = os.fspath(dl_manager._extract_dir)
    dest = os.path.join(root, os.path.basename(archive).split(".tar")[0])
    if os.path.isdir(dest):
        return dest
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=".incomplete-")  # renamed only when complete
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from e
    os.rename(tmp, dest)
    return dest
