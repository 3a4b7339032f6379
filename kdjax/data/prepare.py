"""`kdjax prepare DATASET[/CONFIG]`: build a dataset as ArrayRecord and print a summary."""
from __future__ import annotations

import logging
import os
import sys
import time

from kdjax.errors import KdjaxError

log = logging.getLogger("kdjax.data")


def make_builder(dataset: str, *, data_dir: str | None = None, manual_dir: str | None = None,
                 skip_bad_examples: bool = False, num_workers: int | None = None):
    """The kdjax builder for "name[/config]" (a tfds builder object, nothing generated yet)."""
    from kdjax.data import builders
    from kdjax.errors import DatasetError

    name, _, config = dataset.partition("/")
    cls = builders.BUILDERS.get(name)
    if cls is None:
        raise DatasetError(f"unknown dataset {name!r}; kdjax builds {sorted(builders.BUILDERS)}")
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if config and config not in configs:
        raise DatasetError(f"{name} has no config {config!r}; configs: {configs}")
    kwargs = {"config": config} if config else {}
    return cls(data_dir=data_dir, manual_dir=manual_dir, skip_bad_examples=skip_bad_examples,
               num_workers=num_workers, **kwargs)


def summary(builder) -> str:
    """Examples, hours of audio and speakers per split (from the metadata written at generation)."""
    stats = builder.info.metadata.get("stats", {})
    lines = [f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''} at {builder.data_path}"]
    for split, info in builder.info.splits.items():
        s = stats.get(split, {})
        lines.append(f"  {split:<20} {info.num_examples:>8} examples  {s.get('hours', float('nan')):8.3f} h  "
                     f"{s.get('speakers', '?'):>6} speakers")
    skipped = builder.info.metadata.get("skipped", {})
    total = sum(sum(c.values()) for c in skipped.values())
    lines.append(f"  skipped bad examples: {total}" + (f" {skipped}" if total else ""))
    return "\n".join(lines)


def run(dataset: str, *, data_dir: str | None = None, manual_dir: str | None = None,
        skip_bad_examples: bool = False, num_workers: int | None = None) -> int:
    """Prepare `dataset` ("name[/config]"); returns a process exit code (errors are printed, not raised)."""
    import tensorflow_datasets as tfds

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manual_dir = os.path.abspath(manual_dir) if manual_dir else None
        builder = make_builder(dataset, data_dir=data_dir, manual_dir=manual_dir,
                               skip_bad_examples=skip_bad_examples, num_workers=num_workers)
        start = time.time()
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir))
        print(summary(builder))
        print(f"  done in {time.time() - start:.1f} s")
        return 0
    except KdjaxError as e:
        print(f"kdjax prepare {dataset}: error: {e}", file=sys.stderr)
        return 1
