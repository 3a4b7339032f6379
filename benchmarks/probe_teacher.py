"""How good are an encoder's frozen features? SUPERB's downstream heads trained to convergence on KWS and SV, per layer
and with the learned weighted layer sum, from the feature cache; with the same architecture at random weights and the
classic MFCC baselines as references.

    python benchmarks/probe_teacher.py --data_dir runs/demo/data --workdir runs/probe \
        --encoder shipped=kdjax/assets/teacher_tiny_hubert --random shipped --mfcc

Heads: the SUPERB KWS head (weighted layer sum -> Linear 256 -> mean over frames -> Linear) and the SUPERB-style
x-vector SV head (AAM-softmax, cosine scoring), as kdjax's frozen recipes configs/finetune_{kws,sv}.py build them.
"Trained to convergence": Adam at --lr for --kws_steps / --sv_steps steps with the best checkpoint kept (KWS by
validation accuracy, SV by validation-trial EER); the training curves are in each run's metrics.jsonl. SUPERB's own
schedule (200k steps at lr 1e-4, configs/superb_*.py) is far beyond a 2-core CPU; this is the same head, trained
shorter at a higher rate until the validation metric stops improving.

Prints a Markdown table (KWS test accuracy and SV test EER with 95% bootstrap intervals) and writes
WORKDIR/probe.json. Runs are reused when their results.json exists (delete the run folder to redo one).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _recipe(mode: str):
    path = os.path.join(ROOT, "configs", f"finetune_{mode}.py")
    spec = importlib.util.spec_from_file_location(f"finetune_{mode}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("frozen=True")


def probe_config(mode: str, encoder: str, featurizer: str, args: argparse.Namespace):
    """A frozen, cached run of kdjax's recipe for `mode` with the probe's schedule."""
    config = _recipe(mode)
    steps = args.kws_steps if mode == "kws" else args.sv_steps
    config.total_steps = steps
    config.log_every = max(steps // 20, 1)
    config.eval_every = max(steps // 10, 1)
    config.checkpoint.update(save_every=steps, keep=1)
    config.optim.lr = args.lr
    config.mesh.devices = 1
    config.progress = False
    ft = config.finetune
    ft.update(encoder=encoder, featurizer=featurizer, cache=args.cache_dir or os.path.join(args.workdir, "cache"),
              data_dir=args.data_dir,
              kws_dataset=args.kws, sv_dataset=args.sv, sv_width=args.sv_width, sv_seconds=2.0)
    if mode == "sv":
        ft.update(sv_select="validation", sv_dev_trials="validation")
    return config


def _run(name: str, mode: str, encoder: str, featurizer: str, args: argparse.Namespace) -> dict:
    from kdjax.eval import intervals
    from kdjax.train.loop import train_and_evaluate

    workdir = os.path.join(args.workdir, "runs", f"{name}_{mode}_{featurizer.replace('=', '')}")
    path = os.path.join(workdir, "results.json")
    start = time.time()
    if not os.path.exists(path):
        train_and_evaluate(probe_config(mode, encoder, featurizer, args), workdir)
    with open(path) as f:
        out = json.load(f)["export"]
    row = {"encoder": name, "mode": mode, "featurizer": featurizer, "seconds": round(time.time() - start, 1)}
    if mode == "kws":
        p = out["kws_predictions"]
        correct = np.asarray(p["predictions"]) == np.asarray(p["labels"])
        row.update(kws_accuracy=float(correct.mean()), kws_ci=intervals.accuracy_interval(correct))
    else:
        s = out["sv_scores"]
        row.update(sv_eer=out["metrics"]["sv/test/eer"],
                   sv_ci=intervals.eer_interval(np.asarray(s["scores"]), np.asarray(s["labels"]),
                                                np.asarray(s["speakers"])))
    print(json.dumps(row), flush=True)
    return row


def random_encoder(src: str, dst: str, seed: int = 0) -> str:
    """`src`'s architecture with random initial weights, saved as an HF folder (reused if present)."""
    from flax import nnx

    from kdjax.models.encoder import Encoder
    from kdjax.models.hf import read_config, save_pretrained

    if not os.path.exists(os.path.join(dst, "model.safetensors")):
        save_pretrained(Encoder(read_config(src), rngs=nnx.Rngs(seed)), dst)
    return dst


def mfcc_rows(args: argparse.Namespace) -> list[dict]:
    """The classic references: MFCC statistics + logistic regression (KWS), mean-MFCC cosine scoring (SV)."""
    import corpus_difficulty

    from kdjax.eval import intervals
    from kdjax.eval.metrics import eer

    rows = []
    acc, correct = corpus_difficulty.kws_accuracy(args.kws, args.data_dir, return_correct=True)
    rows.append({"encoder": "MFCC", "mode": "kws", "featurizer": "stats + logistic regression", "kws_accuracy": acc,
                 "kws_ci": intervals.accuracy_interval(correct)})
    scores, labels = corpus_difficulty.sv_scores(args.sv, args.data_dir)
    speakers = _trial_speakers(args)
    rows.append({"encoder": "MFCC", "mode": "sv", "featurizer": "mean + cosine", "sv_eer": eer(scores, labels)[0],
                 "sv_ci": intervals.eer_interval(scores, labels, speakers)})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def _trial_speakers(args: argparse.Namespace) -> np.ndarray:
    import types

    from kdjax.data import pipeline
    from kdjax.finetune.evaluation import trial_speakers

    cfg = types.SimpleNamespace(sv_dataset=args.sv, data_dir=args.data_dir)
    return trial_speakers(cfg, pipeline.metadata(args.sv, args.data_dir)["trials"]["test"], "test")


def _pct(v, ci) -> str:
    return f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (encoder, featurizer), KWS accuracy and SV EER in % with 95% intervals."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        key = (r["encoder"], r["featurizer"] if r["encoder"] != "MFCC" else "classic")
        c = cells.setdefault(key, {})
        if r["mode"] == "kws":
            c["kws"] = _pct(r["kws_accuracy"], r["kws_ci"])
        else:
            c["sv"] = _pct(r["sv_eer"], r["sv_ci"])
    lines = ["| encoder | features | KWS acc % [95% CI] | SV EER % [95% CI] |", "|---|---|---|---|"]
    for (enc, feat), c in cells.items():
        lines.append(f"| {enc} | {feat} | {c.get('kws', '–')} | {c.get('sv', '–')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=DIR", help="an HF folder to probe")
    p.add_argument("--random", action="append", default=[], metavar="NAME",
                   help="also probe NAME's architecture with random weights")
    p.add_argument("--mfcc", action="store_true", help="add the MFCC reference rows")
    p.add_argument("--kws_layers", default="all", help="'all', 'none' or hidden-state indices '0,4,8' to probe singly")
    p.add_argument("--sv_layers", default="none", help="as --kws_layers, for SV (x-vector heads: slower)")
    p.add_argument("--kws", default="synthetic_speech/kws")
    p.add_argument("--sv", default="synthetic_speech/sv")
    p.add_argument("--kws_steps", type=int, default=3000)
    p.add_argument("--sv_steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sv_width", type=int, default=256, help="x-vector width (SUPERB: 512)")
    p.add_argument("--skip_sv", action="store_true")
    p.add_argument("--cache_dir", default="", help="feature caches (default WORKDIR/cache; share one between probes)")
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from kdjax.models.hf import read_config

    encoders = dict(e.split("=", 1) for e in args.encoder)
    for name in args.random:
        if name not in encoders:
            p.error(f"--random {name}: no --encoder {name}=DIR")
        encoders[f"{name}-random"] = random_encoder(encoders[name], os.path.join(args.workdir, f"{name}-random"))
    rows = mfcc_rows(args) if args.mfcc else []
    for name, path in encoders.items():
        n = read_config(path).num_hidden_layers + 1
        for mode, which in (("kws", args.kws_layers), ("sv", "none" if args.skip_sv else args.sv_layers)):
            layers = [] if which == "none" else range(n) if which == "all" else [int(i) for i in which.split(",")]
            if mode == "sv" and args.skip_sv:
                continue
            for featurizer in ["weighted_sum"] + [f"layer={i}" for i in layers]:
                rows.append(_run(name, mode, path, featurizer, args))
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "probe.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(table(rows))


if __name__ == "__main__":
    main()
