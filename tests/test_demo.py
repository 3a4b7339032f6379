"""The demo pipeline at tiny size: every stage leaves its artifacts and the numbers are finite and in range."""
import json
import math

from kdjax import demo


def test_tiny_demo_runs_every_stage(tmp_path):
    workdir = tmp_path / "demo"
    rows = demo.run_demo(str(workdir), size="tiny", pretrain=True)
    assert (workdir / "pretrain" / "teacher_hf" / "model.safetensors").exists()
    assert (workdir / "distill" / "student_hf" / "model.safetensors").exists()
    for run in demo.DEFAULT_GRID:
        results = json.loads((workdir / run.name / "results.json").read_text())
        for key, value in results["metrics"].items():
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (run.name, key, value)
        assert results["model"]["inference_ms_per_s"] > 0
    report = (workdir / "report.md").read_text()
    assert all(run.name in report for run in demo.DEFAULT_GRID)
    assert (workdir / "report.json").exists() and list(workdir.glob("*.png"))
    timings = json.loads((workdir / "timings.json").read_text())
    assert set(timings) >= {"1/5 prepare the synthetic corpus", "3/5 distil a 1-layer student", "total"}
    assert len(rows) > 0
    # a second run reuses every finished stage
    again = demo.run_demo(str(workdir), size="tiny", pretrain=True)
    assert len(again) == len(rows)
    # the one-stage runs of --full: a student built from the teacher and distilled while it is fine-tuned
    one_stage = next(run for run in demo.FULL_GRID if run.name == "one_stage_kws")
    encoders = {"teacher": str(workdir / "pretrain" / "teacher_hf"), "student": str(workdir / "distill" / "student_hf")}
    run_dir = demo._finetune(str(workdir), str(workdir / "data"), one_stage, encoders, demo.PLANS["tiny"])
    results = json.loads((workdir / "one_stage_kws" / "results.json").read_text())
    distilled = json.loads((workdir / "distill" / "results.json").read_text())
    assert results["one_stage"]["target_layers"] == list(distilled["config"]["distill"]["loss"]["target_layers"])
    assert results["model"]["role"] == "student" and results["encoder"] == "finetuned"
    assert 0.0 <= results["metrics"]["kws/test/accuracy"] <= 1.0
    assert run_dir.endswith("one_stage_kws")
    assert (workdir / "one_stage_kws" / "student_hf" / "model.safetensors").exists()
