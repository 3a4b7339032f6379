"""`kdjax export SRC DST --format onnx|tflite --quantize none|dynamic-int8|static-int8 --task encoder|kws|sv`."""
from __future__ import annotations

import argparse
import sys

from kdjax.errors import KdjaxError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export command's arguments."""
    parser.add_argument("src", help="a Hugging Face folder (config.json + model.safetensors) or a kdjax fine-tuning "
                                    "workdir (results.json + checkpoints/)")
    parser.add_argument("dst", help="the file to write (.onnx or .tflite)")
    parser.add_argument("--format", default=None, choices=("onnx", "tflite"),
                        help="default: from DST's suffix")
    parser.add_argument("--quantize", default="none", choices=("none", "dynamic-int8", "static-int8"))
    parser.add_argument("--task", default="encoder", choices=("encoder", "kws", "sv"),
                        help="encoder: hidden states of --layers; kws: audio -> logits; sv: audio -> embedding")
    parser.add_argument("--layers", default=None,
                        help="comma-separated hidden-state indices for --task encoder (0 = transformer input, "
                             "N = last layer); default all")
    parser.add_argument("--fixed-shape", default=None, metavar="BATCHxSAMPLES",
                        help="a fixed input shape, e.g. 1x16000, instead of a dynamic batch and length (LiteRT runs "
                             "fixed shapes much faster)")
    parser.add_argument("--calibration", default=None, metavar="DATASET:SPLIT",
                        help="static-int8: clips of this prepared data set split, e.g. synthetic_speech/kws:train")
    parser.add_argument("--calibration-clips", type=int, default=32)
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir of --calibration")


def run(args: argparse.Namespace) -> int:
    """Run the export; errors are printed as one line and give exit status 2."""
    from kdjax.export import api, graphs

    try:
        fmt = args.format or {".onnx": "onnx", ".tflite": "tflite"}.get(args.dst[args.dst.rfind("."):])
        if fmt is None:
            raise api.ConfigError(f"export: cannot tell the format of {args.dst!r}: give --format onnx|tflite "
                                  "or a .onnx / .tflite file name")
        layers = None
        if args.layers:
            try:
                layers = [int(x) for x in args.layers.split(",")]
            except ValueError:
                raise api.ConfigError(f"export: --layers {args.layers!r} is invalid: expected comma-separated "
                                      "integers, e.g. 4,8") from None
        fixed_shape = None
        if args.fixed_shape:
            try:
                fixed_shape = tuple(int(v) for v in args.fixed_shape.lower().split("x"))
                assert len(fixed_shape) == 2
            except (ValueError, AssertionError):
                raise api.ConfigError(f"export: --fixed-shape {args.fixed_shape!r} is invalid: expected "
                                      "BATCHxSAMPLES, e.g. 1x16000") from None
        calibration = None
        backend = api.backend_for(fmt)
        api.check_supported(backend, args.quantize, fixed_shape)  # before loading calibration clips
        if args.quantize == "static-int8":
            if not args.calibration or ":" not in args.calibration:
                raise api.ConfigError("export: --quantize static-int8 needs --calibration DATASET:SPLIT "
                                      "(e.g. synthetic_speech/kws:train)")
            dataset, split = args.calibration.rsplit(":", 1)
            from kdjax.export import source

            model = source.load(args.src)
            multiple, seconds = model[0].config.frame_stride, 1.0
            if fixed_shape:  # calibration clips of exactly the graph's length
                from kdjax.data.audio import SAMPLE_RATE

                multiple, seconds = fixed_shape[1], fixed_shape[1] / SAMPLE_RATE
            calibration = api.calibration_inputs(dataset, split, args.calibration_clips, data_dir=args.data_dir,
                                                 multiple=multiple, seconds=seconds)
            src = model
        else:
            src = args.src
        out = api.export(src, args.dst, fmt=fmt, quantize=args.quantize, task=args.task, layers=layers,
                         calibration=calibration, fixed_shape=fixed_shape)
    except KdjaxError as e:
        print(f"kdjax export: error: {e}", file=sys.stderr)
        return 2
    size = out.stat().st_size / 2**20
    shape = ("[batch, samples], samples a multiple of the frame stride" if fixed_shape is None
             else f"of shape {list(fixed_shape)}")
    print(f"wrote {out} ({size:.2f} MB, {fmt}, {args.quantize}, task {args.task}); inputs {list(graphs.INPUT_NAMES)} "
          f"float32 / int32 {shape}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m kdjax.export ...`."""
    parser = argparse.ArgumentParser(prog="kdjax export", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
