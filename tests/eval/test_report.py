"""`kdjax report`: table with degradation vs the teacher, PNG plots, and errors that name the bad results.json."""
import json
import os

import numpy as np
import pytest

from kdjax.errors import KdjaxError
from kdjax.eval import report


def _write_run(workdir, name, role, acc, eer, *, inline_extras=True, **model):
    os.makedirs(workdir, exist_ok=True)
    rng = np.random.default_rng(len(name))
    scores = np.concatenate([rng.normal(2, 1, 50), rng.normal(0, 1, 200)])
    labels = np.concatenate([np.ones(50, int), np.zeros(200, int)])
    results = {"name": name, "model": {"name": name.split("-")[0], "role": role, **model}, "task": "multitask",
               "encoder": "finetuned",
               "metrics": {"kws/test/accuracy": acc, "sv/test/eer": eer, "sv/test/mindcf_0.01": 0.5,
                           "sv/test/mindcf_0.05": 0.3},
               "confusion_matrix": [[8, 2], [1, 9]], "class_names": ["yes", "no"]}
    history = [{"step": s, "train/loss": 1.0 / (s + 1), "kws/val/accuracy": 0.5 + s / 40} for s in range(0, 20, 5)]
    if inline_extras:
        results["history"] = history
        results["sv_scores"] = {"scores": scores.tolist(), "labels": labels.tolist()}
    else:  # the same data in the side files the report falls back to
        with open(os.path.join(workdir, report.METRICS_FILE), "w") as f:
            f.write("\n".join(json.dumps(h) for h in history) + "\nnot json\n")
        np.savez(os.path.join(workdir, report.SCORES_FILE), scores=scores, labels=labels)
    with open(os.path.join(workdir, report.RESULTS_FILE), "w") as f:
        json.dump(results, f)


def test_report_table_degradation_and_plots(tmp_path, capsys):
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    _write_run(teacher, "hubert_base-mt", "teacher", 0.96, 0.05, params=94_400_000, size_mb=377.6)
    _write_run(student, "student4L-mt", "student", 0.93, 0.0825, inline_extras=False, params=23_000_000,
               size_mb=92.0, teacher="hubert_base")
    out = str(tmp_path / "out")
    assert report.report_main([teacher, student], out) == 0

    rows = json.load(open(os.path.join(out, "report.json")))["rows"]
    t, s = rows
    assert t["kws_degradation_pp"] is None and t["role"] == "teacher"
    assert s["kws_degradation_pp"] == pytest.approx(3.0)  # 96 % -> 93 %: 3 points worse
    assert s["sv_eer_degradation_pp"] == pytest.approx(3.25)  # 5 % -> 8.25 %: 3.25 points worse
    assert s["kws_degradation_vs"] == "hubert_base-mt" and s["tasks"] == "multi"

    md = open(os.path.join(out, "report.md")).read()
    row = "| student4L-mt | student4L | student | 23.00 | 92.0 | – | finetuned | multi | 93.00 | +3.00 | 8.25 | +3.25"
    assert row in md
    assert "metrics.jsonl line 5: not valid JSON" in md  # a bad line is skipped and reported, not fatal
    assert md in capsys.readouterr().out
    for png in ("curves_hubert_base-mt.png", "curves_student4L-mt.png", "confusion_student4L-mt.png", "det.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png


def test_missing_optional_fields_are_noted(tmp_path):
    wd = str(tmp_path / "bare")
    os.makedirs(wd)
    with open(os.path.join(wd, "results.json"), "w") as f:
        json.dump({"name": "bare", "model": {"name": "tiny"}, "task": "sv", "metrics": {"sv/test/eer": 0.1}}, f)
    rep = report.build_report([wd])  # default out_dir: <workdir>/report
    assert os.path.exists(os.path.join(wd, "report", "report.md"))
    notes = "\n".join(rep["notes"])
    assert "'sv/test/mindcf_0.01'" in notes and "no teacher run" in notes and "no SV scores" in notes
    assert rep["figures"] == []


def test_missing_or_invalid_results_name_the_file(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    os.makedirs(missing)
    assert report.report_main([missing], str(tmp_path / "out")) == 1
    assert os.path.join(missing, "results.json") in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"name": "x",\n "model": }')
    with pytest.raises(KdjaxError, match=r"broken/results.json line 2: not valid JSON"):
        report.load_results(str(broken))
    (broken / "results.json").write_text(json.dumps({"name": "x", "model": {"name": "m"}, "encoder": "thawed"}))
    with pytest.raises(KdjaxError, match=r"broken/results.json: field 'encoder' should be one of"):
        report.load_results(str(broken))
    (broken / "results.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(KdjaxError, match=r"results.json: field 'model'"):
        report.load_results(str(broken))


def _run_with_data(workdir, name, role, flips, eer_noise, rng):
    """A multitask run whose per-clip KWS predictions and SV trial speakers are kept (what the intervals need)."""
    labels = np.arange(1200) % 12
    pred = labels.copy()
    pred[:flips] = (pred[:flips] + 1) % 12  # the first `flips` clips wrong
    spk = np.stack([np.arange(2000) % 40, (np.arange(2000) * 7 + (np.arange(2000) % 2)) % 40], 1)
    target = spk[:, 0] == spk[:, 1]
    scores = target * 2.0 + np.random.default_rng(0).normal(size=2000) + eer_noise * rng.normal(size=2000)
    from kdjax.eval.metrics import eer

    os.makedirs(workdir)
    with open(os.path.join(workdir, report.RESULTS_FILE), "w") as f:
        json.dump({"name": name, "model": {"name": name, "role": role}, "task": "multitask", "encoder": "frozen",
                   "metrics": {"kws/test/accuracy": float((pred == labels).mean()),
                               "sv/test/eer": eer(scores, target)[0]},
                   "kws_predictions": {"predictions": pred.tolist(), "labels": labels.tolist()},
                   "sv_scores": {"scores": scores.tolist(), "labels": target.astype(int).tolist(),
                                 "speakers": spk.tolist()}}, f)
    return workdir


def test_intervals_and_paired_deltas_say_when_a_difference_is_noise(tmp_path):
    rng = np.random.default_rng(3)
    runs = [_run_with_data(str(tmp_path / "t"), "teacher", "teacher", 120, 0.0, rng),
            _run_with_data(str(tmp_path / "same"), "same", "student", 122, 0.0, rng),  # 2 more wrong clips of 1200
            _run_with_data(str(tmp_path / "worse"), "worse", "student", 360, 1.5, rng)]
    rep = report.build_report(runs, str(tmp_path / "out"))
    t, same, worse = rep["rows"]
    lo, hi = t["kws_accuracy_ci"]
    assert lo < t["kws_accuracy"] < hi and hi - lo < 0.05
    assert same["kws_degradation_ci"][0] <= 0 <= same["kws_degradation_ci"][1]
    assert worse["kws_degradation_ci"][0] > 0 and worse["sv_eer_degradation_ci"][0] > 0
    md = open(str(tmp_path / "out" / "report.md")).read()
    same_line = next(line for line in md.splitlines() if line.startswith("| same "))
    worse_line = next(line for line in md.splitlines() if line.startswith("| worse "))
    assert "(noise)" in same_line and "+0.17 [" in same_line  # 2 clips of 1200 = 0.17 pp
    assert "(noise)" not in worse_line.split("|")[10] and "[" in worse_line.split("|")[11]


def test_training_curves_show_losses_and_metrics_not_learning_rate():
    from kdjax.eval.plots import _curve_panels

    history = [{"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3, "grad_norm": 2.0, "steps_per_s": 9.0,
                "kws/accuracy": 0.5, "kws/validation/accuracy": 0.4, "sv/validation/eer": 0.2} for s in range(3)]
    panels = _curve_panels(history)
    assert sorted(panels) == ["kws accuracy", "loss", "sv eer"]
    assert sorted(panels["kws accuracy"]) == ["train", "validation"]  # one panel, both curves
    assert [p[0] for p in panels["loss"]["train"]] == [0, 1, 2]
    for h in history:  # a single-task run's stream loss is its total loss: one panel, not two
        h["sv/loss"], h["sv/eer"] = h["loss"], 0.1
    panels = _curve_panels(history)
    assert "sv loss" not in panels and "sv eer" in panels and "loss" in panels
