"""The `kdjax` console script: thin wrappers over the library (demo, prepare, train, report, convert, cache-features, export)."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from kdjax import demo

    demo.run_demo(args.workdir, full=args.full, size=args.size, pretrain=args.pretrain)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from kdjax.data import prepare

    return prepare.run(args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                       skip_bad_examples=args.skip_bad_examples, num_workers=args.num_workers)


def _report(args: argparse.Namespace) -> int:
    from kdjax.eval.report import report_main

    return report_main(args.workdirs, args.out_dir)


def _convert(args: argparse.Namespace) -> int:
    import kdjax

    model = kdjax.from_pretrained(args.src)
    kdjax.save_pretrained(model, args.dst, dtype=args.dtype)
    print(f"wrote {args.dst}")
    return 0


def _cache_features(args: argparse.Namespace) -> int:
    from kdjax.finetune.cache import cli

    return cli.run(args)


def _export(args: argparse.Namespace) -> int:
    from kdjax.export import cli

    return cli.run(args)


def _train(args: argparse.Namespace) -> int:
    from kdjax import main as kdjax_main

    return kdjax_main.run_from_cli(args.config, args.workdir, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `kdjax` command."""
    parser = argparse.ArgumentParser(prog="kdjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the paper end to end on the synthetic corpus")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--full", action="store_true", help="run the whole grid, not the default subset")
    p.add_argument("--size", default="default", choices=["default", "tiny"], help="tiny: the CI smoke test")
    p.add_argument("--pretrain", action="store_true",
                   help="pre-train the teacher (kdjax/pretrain/tiny_hubert_config.py) instead of using the shipped one")
    p.set_defaults(fn=_demo)

    p = sub.add_parser("prepare", help="prepare a dataset (DATASET[/CONFIG]) as ArrayRecord")
    p.add_argument("dataset", help="e.g. synthetic_speech/kws, speech_commands, voxceleb1, librispeech")
    p.add_argument("--data_dir", default=None, help="TFDS data dir (default: ~/tensorflow_datasets or $TFDS_DATA_DIR)")
    p.add_argument("--manual_dir", default=None, help="folder holding manually downloaded archives or extracted data")
    p.add_argument("--skip_bad_examples", action="store_true", help="skip (and count) bad clips instead of failing")
    p.add_argument("--num_workers", type=int, default=None, help="generation processes (default: all cores)")
    p.set_defaults(fn=_prepare)

    p = sub.add_parser("report", help="collect results.json of runs into a table (Markdown, JSON) and plots")
    p.add_argument("workdirs", nargs="+", help="run workdirs (each holding results.json)")
    p.add_argument("--out_dir", default=None, help="where report.md/json and PNGs go (default: <parent>/report)")
    p.set_defaults(fn=_report)

    p = sub.add_parser("convert", help="load an HF checkpoint with kdjax and write it back in HF format")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="dtype of the written tensors")
    p.set_defaults(fn=_convert)

    from kdjax.finetune.cache.cli import add_arguments as cache_arguments

    p = sub.add_parser("cache-features", help="fill a frozen-feature cache ahead of a frozen run (docs/cache.md)")
    cache_arguments(p)
    p.set_defaults(fn=_cache_features)

    from kdjax.export.cli import add_arguments as export_arguments

    p = sub.add_parser("export", help="export an encoder or a KWS/SV model to ONNX or LiteRT, float32 or int8")
    export_arguments(p)
    p.set_defaults(fn=_export)

    p = sub.add_parser("train", help="run a config (same as python -m kdjax.main)")
    p.add_argument("--config", required=True, help="configs/x.py[:variant]")
    p.add_argument("--workdir", required=True)
    p.add_argument("overrides", nargs="*", help="--config.field=value overrides")
    p.set_defaults(fn=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kdjax` console script (kdjax errors: one line, exit 2; KDJAX_VERBOSE=1: traceback)."""
    from kdjax.errors import reported

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    if argv is not None:  # called from Python (tests, notebooks): errors propagate as exceptions
        return int(args.fn(args) or 0)
    with reported():
        return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
