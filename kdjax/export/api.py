"""`export(src, dst, ...)`: one call from a source (HF folder, fine-tuning run, or modules) to an ONNX / LiteRT file;
`measure(...)`: a quick int8 export and timing for a report."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from kdjax.errors import ConfigError
from kdjax.export import graphs

FORMATS = ("onnx", "tflite")
QUANTIZE = ("none", "dynamic-int8", "static-int8")


def backend_for(fmt: str):
    """The module (onnx_format or litert_format) that writes `fmt`; ConfigError if its packages are missing."""
    if fmt not in FORMATS:
        raise ConfigError(f"export: --format {fmt!r} is invalid: expected one of {FORMATS}")
    try:
        if fmt == "onnx":
            from kdjax.export import onnx_format as backend
            import jax2onnx, onnxruntime  # noqa: F401,E401
        else:
            from kdjax.export import litert_format as backend
            import ai_edge_litert, litert_converter  # noqa: F401,E401
    except ImportError as e:
        raise ConfigError(f"export --format {fmt}: {e.name} is not installed: pip install 'kdjax[export]'") from e
    return backend


def calibration_inputs(dataset: str, split: str, num_clips: int, *, data_dir: str | None = None,
                       multiple: int = 320, seconds: float = 1.0) -> list[dict[str, np.ndarray]]:
    """`num_clips` clips (batch 1, cropped to `seconds`) of a prepared data set split, as graph inputs."""
    from kdjax.data import pipeline

    source = pipeline.load_source(dataset, split, data_dir)
    if num_clips < 1:
        raise ConfigError(f"export: --calibration-clips {num_clips} is invalid: expected >= 1")
    n = min(num_clips, len(source))
    out = []
    for batch in pipeline.eval_batches(source, batch_size=1, max_samples=int(seconds * 16000),
                                       indices=range(n)):
        audio, mask = graphs.pad_to_multiple(batch["input_values"], batch["attention_mask"], multiple)
        out.append({graphs.INPUT_NAMES[0]: audio, graphs.INPUT_NAMES[1]: mask})
    return out


def check_supported(backend, quantize: str, fixed_shape: tuple[int, int] | None) -> None:
    """Raise the backend's reason when it cannot do `quantize` for this shape (LiteRT static int8 needs a fixed one)."""
    refusal = getattr(backend, "refusal", None)
    reason = refusal(quantize, fixed_shape) if refusal else None
    if reason:
        raise ConfigError(reason)


def export(src: Any, dst: str | os.PathLike, *, fmt: str = "onnx", quantize: str = "none", task: str = "encoder",
           layers: Sequence[int] | None = None, calibration: Iterable[dict[str, np.ndarray]] | None = None,
           fixed_shape: tuple[int, int] | None = None) -> Path:
    """Export `src` (a path, or an (encoder, kws, sv) tuple) to `dst`; static-int8 needs `calibration` inputs."""
    from kdjax.export import source

    backend = backend_for(fmt)
    if quantize not in QUANTIZE:
        raise ConfigError(f"export: --quantize {quantize!r} is invalid: expected one of {QUANTIZE}")
    check_supported(backend, quantize, fixed_shape)
    if quantize == "static-int8" and calibration is None:
        raise ConfigError("export: --quantize static-int8 needs calibration clips: give --calibration DATASET:SPLIT")
    encoder, kws, sv = source.load(src) if isinstance(src, (str, os.PathLike)) else src
    graph = graphs.build(encoder, task, kws=kws, sv=sv, layers=layers, fixed_shape=fixed_shape)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if quantize == "none":
        return backend.convert(graph, dst)
    from kdjax.models import featconv

    with tempfile.TemporaryDirectory() as tmp:
        # Dynamic int8 traces the conv stack as matmuls: int8 runtimes run matmuls fastest (their integer
        # convolutions are slower than float ones), and those matmuls then quantize like the transformer's
        # (docs/export.md). Static int8 keeps the convs: its calibrated ranges would also quantize the matmul sums of
        # the first layer's GroupNorm, which then broke (relative error up to 1.2 on a tiny random model).
        with featconv.forward("matmul" if quantize == "dynamic-int8" else "native"):
            floating = backend.convert(graph, Path(tmp) / f"float.{fmt}")
        if quantize == "dynamic-int8":
            return backend.quantize_dynamic(floating, dst)
        return backend.quantize_static(floating, dst, calibration)


def runner(path: str | os.PathLike, threads: int = 1):
    """A callable (audio, attention_mask) -> output for an exported .onnx or .tflite file."""
    suffix = Path(path).suffix
    fmt = {".onnx": "onnx", ".tflite": "tflite"}.get(suffix)
    if fmt is None:
        raise ConfigError(f"{path}: expected a .onnx or .tflite file")
    return backend_for(fmt).Runner(path, threads=threads)


def time_per_second(run, seconds: float = 1.0, repeats: int = 10, multiple: int = 320) -> float:
    """Median milliseconds of one call on `seconds` of audio at batch 1 (after one warm-up call)."""
    samples = int(seconds * 16000) // multiple * multiple
    audio = np.random.default_rng(0).standard_normal((1, samples)).astype(np.float32)
    mask = np.ones((1, samples), np.int32)
    run(audio, mask)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(audio, mask)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3 / seconds


def measure(student_hf_dir: str | os.PathLike, *, fmt: str = "onnx", threads: int = 1,
            repeats: int = 10) -> dict[str, float]:
    """Export a student's encoder to dynamic int8 and time it: {"int8_mb", "float_mb", "ms_per_s"} (seconds)."""
    from kdjax.export import source

    encoder, _, _ = source.load(student_hf_dir)
    with tempfile.TemporaryDirectory() as tmp:
        floating = export((encoder, None, None), Path(tmp) / f"float.{fmt}", fmt=fmt,
                          layers=[encoder.config.num_hidden_layers])
        quantized = backend_for(fmt).quantize_dynamic(floating, Path(tmp) / f"int8.{fmt}")
        ms = time_per_second(runner(quantized, threads), repeats=repeats, multiple=encoder.config.frame_stride)
        return {"int8_mb": quantized.stat().st_size / 2**20, "float_mb": floating.stat().st_size / 2**20,
                "ms_per_s": ms, "format": fmt, "threads": threads}
