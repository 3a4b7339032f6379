"""Run outputs of process 0: TensorBoard event files (tensorboardX, no TensorFlow), console lines, a progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

import numpy as np


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"kws": {"acc": 1}} -> {"kws/acc": 1.0}; values become Python floats."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = float(np.asarray(v))
    return out


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class RunLogger:
    """Writes scalars to <workdir>/tb, prints console lines and drives a tqdm bar; inert off process 0."""

    def __init__(self, workdir: str, *, total_steps: int, initial_step: int, enabled: bool, progress: bool):
        self.enabled = enabled
        self.writer = None
        self.history = None
        self.bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(workdir, "tb"))
        # One JSON object a line ({"step", "train/..." | "eval/..."}): training curves for `kdjax report`.
        self.history = open(os.path.join(workdir, "metrics.jsonl"), "a")
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, mininterval=1.0,
                            file=sys.stderr)

    def line(self, text: str) -> None:
        """A console line (above the progress bar)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def restart_clock(self) -> None:
        """Restart the bar's rate and ETA from now (so the first step's compilation does not count)."""
        if self.bar is not None:
            self.bar.initial = self.bar.n
            self.bar.start_t = self.bar.last_print_t = self.bar._time()
            self.bar.last_print_n = self.bar.n

    def advance(self, n: int = 1) -> None:
        """Move the bar by n steps."""
        if self.bar is not None:
            self.bar.update(n)

    def scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        """Write `prefix/name` scalars at `step`."""
        if self.writer is None:
            return
        for k, v in metrics.items():
            if math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()
        self.history.write(json.dumps({"step": step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}) + "\n")
        self.history.flush()

    def train(self, step: int, total: int, metrics: Mapping[str, float], steps_per_s: float,
              audio_per_s: float) -> None:
        """Log averaged train metrics: event file, console line, bar postfix."""
        if not self.enabled:
            return
        speed = {"steps_per_s": steps_per_s, "audio_seconds_per_s": audio_per_s}
        self.scalars(step, {**metrics, **speed}, "train")
        eta = (total - step) / steps_per_s if steps_per_s > 0 else float("nan")
        self.line(f"step {step}/{total} {_fmt(metrics)} | {steps_per_s:.3g} steps/s "
                  f"{audio_per_s:.4g} audio-s/s ETA {eta:.0f}s")
        if self.bar is not None and "loss" in metrics:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4g}", audio_s_per_s=f"{audio_per_s:.4g}", refresh=False)

    def eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log eval metrics."""
        self.scalars(step, metrics, "eval")
        self.line(f"eval at step {step}: {_fmt(metrics)}")

    def close(self) -> None:
        """Flush and close the writer and the bar."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.history.close()


def write_json(path: str, payload: Any) -> None:
    """Write JSON atomically (tmp file + rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
