"""The demo pipeline at tiny size, run as a user runs it: from a wheel installed outside the checkout."""
import json
import math
import os
import subprocess
import sys

import pytest

from kdjax import demo
from kdjax.errors import KdjaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """kdjax built as a wheel and installed (without its dependencies, which the test venv has) into a fresh prefix."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ROOT, "-w", str(tmp / "dist")],
                   check=True, cwd=tmp, timeout=600)
    (wheel,) = (tmp / "dist").glob("kdjax-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp / "site"),
                    str(wheel)], check=True, cwd=tmp, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp / "site")
    return tmp, env


def _run(installed, *code_or_args, module=False):
    tmp, env = installed
    cmd = [sys.executable, "-m", *code_or_args] if module else [sys.executable, "-c", *code_or_args]
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_installed_wheel_is_self_sufficient(installed):
    tmp, _ = installed
    where = _run(installed, "import kdjax, kdjax.demo as d, os; m = kdjax.from_pretrained(d.TEACHER_ASSET); "
                            "print(kdjax.__file__, m.config.num_hidden_layers)")
    assert where.startswith(str(tmp / "site")), where  # not the checkout
    assert int(where.split()[-1]) == 8  # the packaged teacher loads from the wheel


def results_of(workdir, run):
    return json.loads((workdir / run.name / "results.json").read_text())


def test_tiny_demo_runs_every_stage_from_the_wheel(installed, tmp_path):
    workdir = tmp_path / "demo"
    _run(installed, "kdjax.cli", "demo", "--size", "tiny", "--pretrain", "--workdir", str(workdir), module=True)
    assert (workdir / "pretrain" / "teacher_hf" / "model.safetensors").exists()
    assert (workdir / "distill" / "student_hf" / "model.safetensors").exists()
    for run in demo.DEFAULT_GRID:
        results = json.loads((workdir / run.name / "results.json").read_text())["export"]
        for key, value in results["metrics"].items():
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (run.name, key, value)
        assert results["model"]["inference_ms_per_s"] > 0
    for run in demo.DEFAULT_GRID:
        if run.frozen:  # heads on cached features, and SV picks its checkpoint on the validation speakers' trials
            assert results_of(workdir, run)["config"]["finetune"]["cache"] == str(workdir / "cache")
        if run.mode != "kws":
            assert "sv/validation/eer" in results_of(workdir, run)["eval"]
        if run.mode == "multitask":  # the joint model's checkpoint: best mean of KWS error and EER; KWS head at its lr
            assert results_of(workdir, run)["best"]["metric"] == "multitask/validation/mean_error"
            assert results_of(workdir, run)["config"]["optim"]["groups"]["kws_head"]["lr"] == demo.PLANS["tiny"].kws_lr
    report = (workdir / "report.md").read_text()
    assert all(run.name in report for run in demo.DEFAULT_GRID)
    assert all(f"mfcc_{mode}" in report for mode in demo.REFERENCES) and "95% bootstrap intervals" in report
    assert (workdir / "report.json").exists() and list(workdir.glob("*.png"))
    timings = json.loads((workdir / "timings.json").read_text())
    assert set(timings) >= {"1/5 prepare the synthetic corpus", "3/5 distil a 1-layer student", "total"}
    edge = json.loads((workdir / "edge.json").read_text())  # the exported student's int8 size and latency
    assert 0 < edge["int8_mb"] < edge["float_mb"] and edge["ms_per_s"] > 0 and "int8 ONNX" in report
    # a second run (in-process, from the checkout) reuses every finished stage
    again = demo.run_demo(str(workdir), size="tiny", pretrain=True)
    assert len(again["rows"]) == len(json.loads((workdir / "report.json").read_text())["rows"]) > 0
    # the one-stage runs of --full: a student built from the teacher and distilled while it is fine-tuned
    one_stage = next(run for run in demo.FULL_GRID if run.name == "one_stage_kws")
    encoders = {"teacher": str(workdir / "pretrain" / "teacher_hf"), "student": str(workdir / "distill" / "student_hf")}
    run_dir = demo._finetune(str(workdir), str(workdir / "data"), one_stage, encoders, demo.PLANS["tiny"])
    results = json.loads((workdir / "one_stage_kws" / "results.json").read_text())["export"]
    distilled = json.loads((workdir / "distill" / "results.json").read_text())
    assert results["one_stage"]["target_layers"] == list(distilled["config"]["distill"]["loss"]["target_layers"])
    assert results["model"]["role"] == "student" and results["encoder"] == "finetuned"
    assert 0.0 <= results["metrics"]["kws/test/accuracy"] <= 1.0
    assert run_dir.endswith("one_stage_kws")
    assert (workdir / "one_stage_kws" / "student_hf" / "model.safetensors").exists()


def test_a_run_stopped_by_sigterm_is_not_done_and_stops_the_demo(tmp_path, monkeypatch):
    import kdjax.train.loop as loop

    def stopped(config, run_dir):  # what the loop writes when SIGTERM stops it: a checkpoint and preempted results
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump({"preempted": True, "export": None}, f)

    monkeypatch.setattr(loop, "train_and_evaluate", stopped)
    run_dir = str(tmp_path / "run")
    with pytest.raises(KdjaxError, match="run: stopped before it finished"):  # not on to the next stage
        demo._train(None, run_dir)
    assert not demo._done(run_dir)  # the next demo resumes it instead of reporting its missing test metrics
    (tmp_path / "run" / "results.json").write_text(json.dumps({"preempted": False}))
    assert demo._done(run_dir)
