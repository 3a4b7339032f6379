"""`kdjax cache-features`: fill a feature cache ahead of time for every split a frozen fine-tuning run reads."""
from __future__ import annotations

import argparse
import logging
import sys

from kdjax.errors import KdjaxError
from kdjax.finetune.cache.spec import SAMPLE_RATE, CacheSpec

KWS_SPLITS = ("train", "validation", "test")
SV_SPLITS = ("train", "test")  # the trial lists' utterances are the test split


def run_specs(mode: str, encoder: str, *, kws_dataset: str = "synthetic_speech/kws",
              sv_dataset: str = "synthetic_speech/sv", kws_seconds: float = 1.0, sv_seconds: float = 3.0,
              sv_eval_max_seconds: float = 8.0, sv_train_max_seconds: float = 0.0, layers: str = "all",
              dtype: str = "float32", data_dir: str | None = None, batch_size: int = 8,
              splits: tuple[str, ...] | None = None) -> list[CacheSpec]:
    """The CacheSpecs of a frozen run of `mode` ("kws", "sv", "multitask"), with the uncached run's cut lengths.

    KWS: pooled, cropped/padded to kws_seconds like the uncached batches. SV train: whole utterances, each padded to a
    multiple of sv_seconds (a clip no longer than the crop is then encoded exactly as the uncached path encodes it);
    SV test: centre-cropped to sv_eval_max_seconds like the uncached evaluation, padded to whole seconds.
    sv_train_max_seconds > 0 keeps only the centre of longer training utterances (less disk and encoder memory for
    corpora with minute-long utterances; crops then come from that window).
    """
    common = dict(encoder=encoder, layers=layers, dtype=dtype, data_dir=data_dir, batch_size=batch_size)
    out = []
    if mode in ("kws", "multitask"):
        out += [CacheSpec(dataset=kws_dataset, split=s, kind="pooled", max_samples=int(kws_seconds * SAMPLE_RATE),
                          pad_to=int(kws_seconds * SAMPLE_RATE), **common) for s in splits or KWS_SPLITS]
    if mode in ("sv", "multitask"):
        for s in splits or SV_SPLITS:
            train = s == "train"
            out.append(CacheSpec(dataset=sv_dataset, split=s, kind="frames",
                                 max_samples=int((sv_train_max_seconds if train else sv_eval_max_seconds)
                                                 * SAMPLE_RATE),
                                 pad_to=int((sv_seconds if train else 1.0) * SAMPLE_RATE), **common))
    if not out:
        raise KdjaxError(f"cache-features --mode={mode!r}: expected 'kws', 'sv' or 'multitask'")
    return out


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `kdjax cache-features` (the lead registers it as a sub-command of kdjax.cli)."""
    p = argparse.ArgumentParser(prog="kdjax cache-features", description=__doc__)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the cache-features arguments to a (sub)parser."""
    p.add_argument("--encoder", required=True, help="HF checkpoint folder of the frozen encoder")
    p.add_argument("--cache_dir", required=True, help="where caches live (one folder per fingerprint; share it)")
    p.add_argument("--mode", default="kws", choices=["kws", "sv", "multitask"], help="which run's splits to cache")
    p.add_argument("--splits", default=None, help="comma list (default: kws train,validation,test; sv train,test)")
    p.add_argument("--kws_dataset", default="synthetic_speech/kws")
    p.add_argument("--sv_dataset", default="synthetic_speech/sv")
    p.add_argument("--kws_seconds", type=float, default=1.0, help="KWS crop/pad length (config.finetune.kws_seconds)")
    p.add_argument("--sv_seconds", type=float, default=3.0, help="SV training crop (config.finetune.sv_seconds)")
    p.add_argument("--sv_eval_max_seconds", type=float, default=8.0, help="SV test centre-crop length")
    p.add_argument("--sv_train_max_seconds", type=float, default=0.0,
                   help="SV training utterances: keep the centre this long (0: whole utterances)")
    p.add_argument("--layers", default="all", help="'all' hidden states or indices, e.g. 0,4,8")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="storage dtype")
    p.add_argument("--data_dir", default=None, help="TFDS data dir of the prepared datasets")
    p.add_argument("--batch_size", type=int, default=8, help="encoder batch of the cache pass")
    p.add_argument("--no_progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Build every cache the arguments name; returns a process exit code (errors printed, not raised)."""
    from kdjax.finetune.cache.build import build_cache
    from kdjax.models import hf

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        specs = run_specs(args.mode, args.encoder, kws_dataset=args.kws_dataset, sv_dataset=args.sv_dataset,
                          kws_seconds=args.kws_seconds, sv_seconds=args.sv_seconds,
                          sv_eval_max_seconds=args.sv_eval_max_seconds,
                          sv_train_max_seconds=args.sv_train_max_seconds, layers=args.layers, dtype=args.dtype,
                          data_dir=args.data_dir, batch_size=args.batch_size,
                          splits=tuple(args.splits.split(",")) if args.splits else None)
        encoder = hf.from_pretrained(specs[0].encoder)  # loaded once for every split
        for spec in specs:
            path = build_cache(spec, args.cache_dir, encoder, progress=not args.no_progress)
            print(f"{spec.dataset}/{spec.split} ({spec.kind}): {path}")
        return 0
    except KdjaxError as e:
        print(f"kdjax cache-features: error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: `kdjax cache-features --encoder DIR --cache_dir DIR [--mode kws|sv|multitask] ...`."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
