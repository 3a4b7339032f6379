"""Accuracy at int8: KWS test accuracy and SV test EER of exported task graphs (float32, dynamic-int8, static-int8;
ONNX and LiteRT) against the JAX model they came from, on the prepared test sets.

    python benchmarks/edge_accuracy.py --data_dir runs/demo/data \
        --run runs/demo/student_kws_frozen --run runs/demo/student_sv_frozen [--formats onnx,tflite] [--fixed_kws]
        [--fixed_sv]

Each --run is a finished kdjax fine-tuning run (KWS or SV); its own test metric (results.json, computed in JAX) is the
"jax" row. Graphs run at batch 1 on every test clip (KWS: 1 s; SV: whole utterances up to the run's
sv_eval_max_seconds), padded to the frame stride as `kdjax export` documents. Static int8 calibrates on
--calibration clips of the run's training split. Prints a Markdown table with the difference to JAX.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def _inputs(dataset: str, split: str, data_dir: str, max_seconds: float, multiple: int, limit: int | None = None,
            length: int | None = None):
    """(index, audio [1, S], mask [1, S]) per clip: normalised and cropped as the fine-tuning evaluation, padded to
    the frame stride, or to `length` samples (a fixed-shape graph; the mask keeps the padding out)."""
    from kdjax.data import pipeline
    from kdjax.export import graphs

    source = pipeline.load_source(dataset, split, data_dir)
    n = len(source) if limit is None else min(limit, len(source))
    for i, batch in enumerate(pipeline.eval_batches(source, batch_size=1, max_samples=int(max_seconds * 16000),
                                                    indices=range(n))):
        audio, mask = graphs.pad_to_multiple(batch["input_values"], batch["attention_mask"], length or multiple)
        yield i, audio, mask


def evaluate(run, ft, task: str, stride: int, length: int | None = None) -> float:
    """KWS accuracy or SV EER of `run` (audio, mask) -> logits | embedding over the test split (clips padded to
    `length` samples when the graph has a fixed shape)."""
    from kdjax.data import pipeline
    from kdjax.finetune import evaluation

    if task == "kws":
        labels = pipeline.load_source(ft["kws_dataset"], "test", ft["data_dir"])
        hits = [int(np.argmax(run(a, m)[0]) == int(labels[i]["label"]))
                for i, a, m in _inputs(ft["kws_dataset"], "test", ft["data_dir"], ft["kws_seconds"], stride,
                                           length=length)]
        return float(np.mean(hits))
    import types

    cfg = types.SimpleNamespace(**ft)
    name, split = evaluation.trial_list(cfg, "test")
    rows = [(i, run(a, m)[0]) for i, a, m in _inputs(ft["sv_dataset"], split, ft["data_dir"],
                                                      ft["sv_eval_max_seconds"], stride, length=length)]
    index = np.asarray([i for i, _ in rows])
    emb = np.stack([e for _, e in rows]).astype(np.float32)
    scores, labels = evaluation.sv_scores(cfg, split, name, index, emb, np.ones(len(index), bool))
    from kdjax.eval.metrics import eer

    return eer(scores, labels)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="a finished KWS or SV fine-tuning run")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--formats", default="onnx,tflite")
    p.add_argument("--quantize", default="none,dynamic-int8,static-int8")
    p.add_argument("--calibration", type=int, default=64, help="training clips for static int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fixed_kws", action="store_true",
                   help="KWS graphs with a fixed shape (1, kws_seconds of samples): LiteRT runs them ~15x faster")
    p.add_argument("--fixed_sv", action="store_true",
                   help="SV graphs with a fixed shape (1, sv_eval_max_seconds of samples), every test utterance "
                        "padded to it: LiteRT with a dynamic length is too slow here, and its static int8 needs a "
                        "fixed shape. Padding enters the group-norm statistics, so compare with the float row too")
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from kdjax.errors import ConfigError
    from kdjax.export import api, source

    lines = ["| run | metric | format | quantize | value (%) | Δ vs JAX (pp) | size (MB) | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for run_dir in args.run:
        results = json.load(open(os.path.join(run_dir, "results.json")))
        ft = dict(results["config"]["finetune"], data_dir=args.data_dir)
        task = results["export"]["task"]
        if task not in ("kws", "sv"):
            p.error(f"{run_dir}: task {task!r}: expected a KWS or SV run")
        metric = "kws/test/accuracy" if task == "kws" else "sv/test/eer"
        reference = results["export"]["metrics"][metric]
        name = os.path.basename(os.path.normpath(run_dir))
        lines.append(f"| {name} | {metric} | jax | none | {100 * reference:.2f} | – | – | – |")
        model = source.load(run_dir)
        stride = model[0].config.frame_stride
        length = None  # the fixed graph length (--fixed_kws, --fixed_sv), a whole number of strides
        if args.fixed_kws and task == "kws":
            length = -(-int(ft["kws_seconds"] * 16000) // stride) * stride
        if args.fixed_sv and task == "sv":
            length = -(-int(ft["sv_eval_max_seconds"] * 16000) // stride) * stride
        calibration = [{"audio": a, "attention_mask": m} for _, a, m in
                       _inputs(ft["kws_dataset" if task == "kws" else "sv_dataset"], "train", args.data_dir,
                               ft["kws_seconds"] if task == "kws" else 2.0, stride, limit=args.calibration,
                               length=length)]
        for fmt in args.formats.split(","):
            for quantize in args.quantize.split(","):
                start = time.time()
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, f"model.{fmt}")
                    try:
                        api.export(model, path, fmt=fmt, quantize=quantize, task=task,
                                   calibration=calibration if quantize == "static-int8" else None,
                                   fixed_shape=(1, length) if length else None)
                    except ConfigError as e:
                        lines.append(f"| {name} | {metric} | {fmt} | {quantize} | refused: {e} | – | – | – |")
                        continue
                    except Exception as e:  # noqa: BLE001 -- a converter's own failure is a result to report
                        lines.append(f"| {name} | {metric} | {fmt} | {quantize} | failed: {type(e).__name__}: "
                                     f"{str(e)[:120]} | – | – | – |")
                        print(lines[-1], flush=True)
                        continue
                    value = evaluate(api.runner(path, args.threads), ft, task, stride, length)
                    size = os.path.getsize(path) / 2**20
                sign = 1 if task == "kws" else -1  # positive Δ = worse than JAX
                lines.append(f"| {name} | {metric} | {fmt} | {quantize} | {100 * value:.2f} | "
                             f"{100 * sign * (reference - value):+.2f} | {size:.2f} | {time.time() - start:.0f} |")
                print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
