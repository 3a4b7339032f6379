"""The accelerator suite (benchmarks/device_suite.py) must keep working where no accelerator is: its --tiny dry run
runs every row on CPU, and its code path imports nothing the accelerator image lacks (no tensorflow_datasets, grain,
ml_collections there)."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "device_suite.py"
ROW = re.compile(r"^(distill|encoder|sv)\s+(float32|bfloat16)\s+(\d+)\s+(kdjax|torch\.compile|torch)\s+(.*)$")

# A meta-path finder that makes the named packages unimportable, as on the accelerator image.
BLOCKER = textwrap.dedent("""
    import sys

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked (absent from the accelerator image)")
            return None

    sys.meta_path.insert(0, _Block())
""")


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # conftest forces 8 CPU devices; the suite runs on one
    return env


def test_tiny_dry_run_prints_every_row():
    out = subprocess.run([sys.executable, str(SUITE), "--tiny", "--steps", "1"], env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.groups()[:4]] = m.group(5).split()
    expected = {(w, d, "2", i) for w in ("distill", "encoder", "sv") for d in ("float32", "bfloat16")
                for i in ("kdjax", "torch", "torch.compile")}
    assert set(rows) == expected, out.stdout
    for key, cols in rows.items():
        step_ms, audio_rate = float(cols[0]), float(cols[1])
        assert step_ms > 0 and audio_rate > 0, (key, cols)
        if key[3] == "kdjax":  # XLA's FLOP count and memory analysis exist on CPU too
            assert cols[2] != "-%" and float(cols[3]) > 0, (key, cols)
        else:  # the ratio column: kdjax / PyTorch eager
            assert cols[-1] != "-", (key, cols)
    assert re.search(r"bf16 matmul peak \(measured\): \d+\.\d+ TFLOP/s", out.stdout), out.stdout


def _run_blocked(blocked, code):
    script = f"BLOCKED = {tuple(blocked)!r}\n" + BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], env=dict(_env(), JAX_PLATFORMS="cpu"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


SUITE_PATH = """
    import sys
    sys.path[:0] = ["benchmarks", "."]
    try:
        __import__(BLOCKED[0])
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not block")
    import jax
    import common
    import device_suite
    from kdjax.distill.losses import LossConfig
    from kdjax.distill.student import student_config
    base, targets, sv = device_suite.configs(tiny=True)
    # Abstract set-ups (no arrays computed) run every import of the suite's kdjax rows.
    s_cfg = student_config(base, {"init": "random"})
    jax.eval_shape(lambda: common.distill_setup(base, s_cfg, LossConfig(target_layers=targets))[0])
    jax.eval_shape(lambda: common.sv_setup(base, **sv)[0])
    print("OK", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def test_suite_path_needs_no_tfds_grain_or_audio_io():
    out = _run_blocked(["tensorflow_datasets", "grain", "soundfile", "soxr", "sox", "transformers"], SUITE_PATH)
    assert out.returncode == 0 and "OK []" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_suite_path_needs_no_ml_collections():
    # Needs kdjax/train/optim.py to import ml_collections lazily (see docs/performance.md).
    out = _run_blocked(["ml_collections"], SUITE_PATH)
    assert out.returncode == 0 and "OK []" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
