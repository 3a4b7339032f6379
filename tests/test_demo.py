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
