"""`kdjax report WORKDIR...`: the paper's results table (Markdown + JSON) and plots from each run's results.json.

Metric values in results.json are fractions (0.97, not 97 %); the table shows accuracy and EER in percent and the
degradation of each non-teacher run against its teacher in percentage points (positive = worse than the teacher).
Where a run keeps its per-clip KWS predictions and its SV trial speakers, each figure gets a 95% bootstrap interval
(kdjax.eval.intervals: over clips for KWS, over speakers for SV) and each degradation a paired one; a degradation
whose interval holds 0 is marked "(noise)": the test set cannot tell the two runs apart.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any, Literal, TypedDict

import numpy as np

from kdjax.errors import KdjaxError

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"  # optional training curves, one {"step": ..., "<metric>": ...} object a line
SCORES_FILE = "sv_scores.npz"  # optional SV trial scores (arrays "scores", "labels") when not inline
KWS_ACC, SV_EER = "kws/test/accuracy", "sv/test/eer"
SV_DCF = ("sv/test/mindcf_0.01", "sv/test/mindcf_0.05")
TASKS = ("kws", "sv", "multitask", "distill")
ENCODERS = ("frozen", "finetuned")
ROLES = ("teacher", "student", "baseline", "reference")  # reference: a classic method, no encoder (MFCC rows)


class ModelInfo(TypedDict, total=False):
    """`model` of results.json: name (required), params (count), size_mb, role, teacher (its teacher's model name),
    inference_ms_per_s (optional: encoder forward time per second of audio)."""

    name: str
    params: int
    size_mb: float
    role: Literal["teacher", "student", "baseline", "reference"]
    teacher: str


class SVScores(TypedDict, total=False):
    """Scores of the SV test trials and their labels (1 target, 0 non-target); optionally the speaker index of both
    sides of each trial ([N, 2]), for the speaker-level bootstrap interval."""

    scores: list[float]
    labels: list[int]
    speakers: list[list[int]]


class KWSPredictions(TypedDict):
    """Predicted and true class of every KWS test clip, for the bootstrap interval."""

    predictions: list[int]
    labels: list[int]


class Results(TypedDict, total=False):
    """The fields of results.json the report reads; only `name` and `model.name` are required.

    task: "kws" | "sv" | "multitask" | "distill"; encoder: "frozen" | "finetuned"; metrics: flat "task/split/metric"
    keys (KWS_ACC, SV_EER, SV_DCF), fractions; history: [{"step": int, "<metric>": float, ...}] (else metrics.jsonl);
    confusion_matrix: [[int]] rows true class, columns predicted; class_names: [str]; sv_scores: SVScores (else
    sv_scores.npz).
    """

    name: str
    model: ModelInfo
    task: str
    encoder: str
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    sv_scores: SVScores
    kws_predictions: KWSPredictions


def model_info(name: str, path: str, params: int, **fields: str) -> ModelInfo:
    """The `model` entry of a run's results (what the table shows about its encoder); empty fields are left out."""
    info: dict[str, Any] = {"name": name, "path": path, "params": int(params), "size_mb": params * 4 / 2**20}
    info.update({k: v for k, v in fields.items() if v})
    return info  # type: ignore[return-value]


def load_results(workdir: str) -> Results:
    """Read and validate WORKDIR/results.json; errors name the file and the field."""
    path = os.path.join(workdir, RESULTS_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise KdjaxError(f"{path}: no {RESULTS_FILE} (is {workdir} a finished run's workdir?)") from None
    except json.JSONDecodeError as e:
        raise KdjaxError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise KdjaxError(f"{path}: cannot read ({e})") from None

    def bad(field: str, expected: str) -> KdjaxError:
        return KdjaxError(f"{path}: field {field!r} should be {expected}")

    if not isinstance(data, dict):
        raise bad("<top level>", "a JSON object")
    if isinstance(data.get("export"), dict) and "name" in data["export"]:  # a kdjax fine-tuning run's results.json
        data = data["export"]
    if not isinstance(data.get("name"), str):
        raise bad("name", "a string")
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise bad("model", 'an object with a string "name"')
    if model.get("role", "student") not in ROLES:
        raise bad("model.role", f"one of {ROLES}")
    for key in ("params", "size_mb"):
        if key in model and not isinstance(model[key], (int, float)):
            raise bad(f"model.{key}", "a number")
    if data.get("task", "kws") not in TASKS:
        raise bad("task", f"one of {TASKS}")
    if data.get("encoder", "frozen") not in ENCODERS:
        raise bad("encoder", f"one of {ENCODERS}")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise bad("metrics", "an object of numbers")
    if not isinstance(data.get("history", []), list):
        raise bad("history", "a list of objects")
    return data


# ----------------------------------------------------------------------------------------------------- table
def _teacher_for(run: Results, runs: list[Results], metric: str) -> Results | None:
    """The teacher row to compare `run` with on `metric`: its named teacher, same encoder and task preferred."""
    want = run["model"].get("teacher")
    cands = [t for t in runs if t["model"].get("role") == "teacher" and metric in t.get("metrics", {})
             and (want is None or t["model"]["name"] == want)]
    key = lambda t: (t.get("encoder") == run.get("encoder"), t.get("task") == run.get("task"))  # noqa: E731
    return max(cands, key=key, default=None)


def _kws_correct(run: Results) -> np.ndarray | None:
    p = run.get("kws_predictions")
    if not isinstance(p, dict) or len(p.get("predictions", [])) != len(p.get("labels", [])) or not p.get("labels"):
        return None
    return np.asarray(p["predictions"]) == np.asarray(p["labels"])


def _sv_trials(run: Results) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    s = run.get("sv_scores")
    if not isinstance(s, dict) or not s.get("speakers") or len(s["speakers"]) != len(s.get("scores", [])):
        return None
    return np.asarray(s["scores"], np.float64), np.asarray(s["labels"]).astype(bool), np.asarray(s["speakers"])


def _intervals(row: dict[str, Any], run: Results, teacher: dict[str, Results | None]) -> None:
    """95% intervals of the run's metrics and paired intervals of its degradations (in pp), where the data is kept."""
    from kdjax.eval import intervals

    correct = _kws_correct(run)
    if correct is not None:
        row["kws_accuracy_ci"] = list(intervals.accuracy_interval(correct))
        t = teacher.get(KWS_ACC)
        other = _kws_correct(t) if t is not None else None
        if other is not None and other.shape == correct.shape and (
                run["kws_predictions"]["labels"] == t["kws_predictions"]["labels"]):
            lo, hi = intervals.accuracy_interval(other, other=correct)  # teacher - run: positive = worse
            row["kws_degradation_ci"] = [100.0 * lo, 100.0 * hi]
    trials = _sv_trials(run)
    if trials is not None:
        scores, labels, speakers = trials
        row["sv_eer_ci"] = list(intervals.eer_interval(scores, labels, speakers))
        t = teacher.get(SV_EER)
        theirs = _sv_trials(t) if t is not None else None
        if theirs is not None and theirs[0].shape == scores.shape and np.array_equal(theirs[1], labels) and (
                np.array_equal(theirs[2], speakers)):
            lo, hi = intervals.eer_interval(scores, labels, speakers, other_scores=theirs[0])  # run - teacher
            row["sv_eer_degradation_ci"] = [100.0 * lo, 100.0 * hi]


def build_table(runs: list[Results]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row a run (the JSON table) plus notes on what was missing."""
    rows, notes = [], []
    for run in runs:
        m, metrics, role = run["model"], run.get("metrics", {}), run["model"].get("role", "student")
        task = run.get("task")
        row = {"run": run["name"], "model": m["name"], "role": role, "params": m.get("params"),
               "size_mb": m.get("size_mb"), "inference_ms_per_s": m.get("inference_ms_per_s"),
               "encoder": run.get("encoder"), "task": task,
               "tasks": {"multitask": "multi", "kws": "single", "sv": "single"}.get(task),
               "kws_accuracy": metrics.get(KWS_ACC), "sv_eer": metrics.get(SV_EER),
               "sv_mindcf_0.01": metrics.get(SV_DCF[0]), "sv_mindcf_0.05": metrics.get(SV_DCF[1]),
               "kws_degradation_pp": None, "sv_eer_degradation_pp": None}
        wanted = {"kws": [KWS_ACC], "sv": [SV_EER, *SV_DCF], "multitask": [KWS_ACC, SV_EER, *SV_DCF]}.get(task, [])
        for key in wanted:
            if key not in metrics:
                notes.append(f"{run['name']}: no {key!r} in metrics")
        teachers: dict[str, Results | None] = {}
        for metric, col, sign in ((KWS_ACC, "kws_degradation_pp", -1), (SV_EER, "sv_eer_degradation_pp", 1)):
            if role == "teacher" or metric not in metrics:
                continue
            teacher = teachers[metric] = _teacher_for(run, runs, metric)
            if teacher is None:
                notes.append(f"{run['name']}: no teacher run with {metric!r} to compare with")
                continue
            row[col] = 100.0 * sign * (metrics[metric] - teacher["metrics"][metric])
            row[col.replace("_pp", "_vs")] = teacher["name"]
        _intervals(row, run, teachers)
        rows.append(row)
    return rows, notes


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _with_ci(value: float | None, ci: list[float] | None, spec: str, scale: float = 1.0) -> str:
    text = _fmt(None if value is None else scale * value, spec)
    if value is None or not ci:
        return text
    return f"{text} [{format(scale * ci[0], spec)}, {format(scale * ci[1], spec)}]"


def _delta(value: float | None, ci: list[float] | None) -> str:
    text = _with_ci(value, ci, "+.2f")
    return text + (" (noise)" if value is not None and ci and ci[0] <= 0.0 <= ci[1] else "")


def to_markdown(rows: list[dict[str, Any]], notes: list[str]) -> str:
    """The table as Markdown (accuracy and EER in %, degradation in percentage points vs the teacher, 95% intervals
    in brackets where the runs keep the data for them)."""
    head = ["run", "model", "role", "params (M)", "size (MB)", "ms / audio-s", "encoder", "tasks", "KWS acc (%)",
            "Δ KWS (pp)",
            "SV EER (%)", "Δ EER (pp)", "minDCF 0.01", "minDCF 0.05"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["model"], r["role"], _fmt(None if r["params"] is None else r["params"] / 1e6, ".2f"),
                 _fmt(r["size_mb"], ".1f"), _fmt(r.get("inference_ms_per_s"), ".1f"), r["encoder"] or "–",
                 r["tasks"] or "–",
                 _with_ci(r["kws_accuracy"], r.get("kws_accuracy_ci"), ".2f", 100.0),
                 _delta(r["kws_degradation_pp"], r.get("kws_degradation_ci")),
                 _with_ci(r["sv_eer"], r.get("sv_eer_ci"), ".2f", 100.0),
                 _delta(r["sv_eer_degradation_pp"], r.get("sv_eer_degradation_ci")), _fmt(r["sv_mindcf_0.01"], ".3f"),
                 _fmt(r["sv_mindcf_0.05"], ".3f")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if any(r.get("kws_accuracy_ci") or r.get("sv_eer_ci") for r in rows):
        lines += ["", "Brackets: 95% bootstrap intervals (KWS over test clips, SV over test speakers); Δ intervals are "
                  "paired against the teacher on the same test set, and \"(noise)\" marks a Δ whose interval holds 0."]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------- plot data
def load_history(workdir: str, run: Results, notes: list[str]) -> list[dict[str, Any]]:
    """Training history from results.json, else from metrics.jsonl (bad lines are skipped with a note)."""
    if run.get("history"):
        return [h for h in run["history"] if isinstance(h, dict) and "step" in h]
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                notes.append(f"{path} line {n}: not valid JSON, skipped")
                continue
            if isinstance(rec, dict) and "step" in rec:
                out.append(rec)
            else:
                notes.append(f"{path} line {n}: no 'step', skipped")
    return out


def load_sv_scores(workdir: str, run: Results) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, labels) from results.json's sv_scores, else from sv_scores.npz; None when neither exists."""
    if run.get("sv_scores"):
        s = run["sv_scores"]
        if not isinstance(s, dict) or "scores" not in s or "labels" not in s or len(s["scores"]) != len(s["labels"]):
            raise KdjaxError(f"{os.path.join(workdir, RESULTS_FILE)}: field 'sv_scores' should be "
                             '{"scores": [...], "labels": [...]} of equal length')
        return np.asarray(s["scores"], np.float64), np.asarray(s["labels"]).astype(bool)
    path = os.path.join(workdir, SCORES_FILE)
    if os.path.exists(path):
        with np.load(path) as z:
            if "scores" not in z or "labels" not in z:
                raise KdjaxError(f"{path}: expected arrays 'scores' and 'labels', found {sorted(z.files)}")
            return z["scores"].astype(np.float64), z["labels"].astype(bool)
    return None


# ----------------------------------------------------------------------------------------------------- main
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def build_report(workdirs: list[str], out_dir: str | None = None) -> dict[str, Any]:
    """Write report.md, report.json and PNG plots for the runs in `workdirs`; returns the JSON report."""
    from kdjax.eval import plots  # matplotlib only when plotting

    if not workdirs:
        raise KdjaxError("kdjax report: give at least one WORKDIR")
    runs = [load_results(w) for w in workdirs]
    out_dir = out_dir or os.path.join(os.path.commonpath([os.path.abspath(w) for w in workdirs]), "report")
    os.makedirs(out_dir, exist_ok=True)
    rows, notes = build_table(runs)
    figures, det = [], []
    seen: dict[str, int] = {}
    for workdir, run in zip(workdirs, runs):
        stem = _safe(run["name"])
        seen[stem] = seen.get(stem, 0) + 1
        stem = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"  # two runs with one name keep both plots
        history = load_history(workdir, run, notes)
        if history:
            figures.append(plots.training_curves(history, run["name"], os.path.join(out_dir, f"curves_{stem}.png")))
        elif run["model"].get("role") != "reference":  # a classic reference has nothing to plot
            notes.append(f"{run['name']}: no training history (results.json 'history' or {METRICS_FILE})")
        if run.get("confusion_matrix"):
            figures.append(plots.confusion(np.asarray(run["confusion_matrix"]), run.get("class_names"), run["name"],
                                           os.path.join(out_dir, f"confusion_{stem}.png")))
        scores = load_sv_scores(workdir, run)
        if scores is not None:
            det.append((run["name"], *scores))
        elif run.get("task") in ("sv", "multitask"):
            notes.append(f"{run['name']}: no SV scores (results.json 'sv_scores' or {SCORES_FILE}); no DET curve")
    if det:
        figures.append(plots.det(det, os.path.join(out_dir, "det.png")))
    report = {"rows": rows, "notes": notes, "figures": [os.path.basename(f) for f in figures]}
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(to_markdown(rows, notes))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def report_main(workdirs: list[str], out_dir: str | None) -> int:
    """`kdjax report`: build the report, print the table; 0 on success, 1 (message on stderr) on a bad workdir."""
    try:
        report = build_report(workdirs, out_dir)
    except KdjaxError as e:
        print(f"kdjax report: error: {e}", file=sys.stderr)
        return 1
    print(to_markdown(report["rows"], report["notes"]), end="")
    return 0
