"""Exported ONNX / LiteRT graphs against transformers (encoder) and the JAX model (KWS, SV): float32 parity on padded
and unpadded inputs of three lengths, int8 size and agreement, and the CLI's errors."""
import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import kdjax
import kdjax.export
from kdjax.errors import ConfigError
from kdjax.export import api, cli, graphs
from kdjax.finetune.model import KWSDownstream, SVDownstream
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import init_encoder
from tests import hf_utils

pytest.importorskip("jax2onnx", reason="the export tests need the kdjax[export] extra")
TOL = 1e-4
STRIDE = 20  # tiny configs: conv strides (5, 2, 2)
LENGTHS = (STRIDE * 61, STRIDE * 40, STRIDE * 23)  # three lengths, each a whole number of frame strides


def _inputs():
    """One right-padded batch of the three lengths, and each clip alone without padding."""
    x, mask = hf_utils.batch(3, LENGTHS)
    return [(x, mask)] + [(x[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(LENGTHS)]


def _hf_hidden_states(folder, x, mask):
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x), attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    return np.stack([h.numpy() for h in out.hidden_states])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {v: hf_utils.save_tiny(root / v, v) for v in ("hubert_base_like", "wav2vec2_layer_stableln_bias")}


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("variant", ["hubert_base_like", "wav2vec2_layer_stableln_bias"])
def test_float_encoder_matches_transformers(folders, tmp_path, variant, fmt):
    path = api.export(folders[variant], tmp_path / f"enc.{fmt}", fmt=fmt)
    run = api.runner(path)
    encoder = kdjax.from_pretrained(folders[variant])
    diffs = []
    for x, mask in _inputs():
        ours = run(x, mask)
        ref = _hf_hidden_states(folders[variant], x, mask)
        valid = np.asarray(encoder(x, mask).frame_mask)
        assert ours.shape == ref.shape
        diffs.append(float(np.abs(ours - ref).transpose(1, 2, 0, 3)[valid].max()))
    assert max(diffs) <= TOL, diffs


@pytest.fixture(scope="module")
def downstream():
    """A tiny encoder with a random KWS head and a random x-vector SV head (BatchNorm statistics perturbed)."""
    encoder = init_encoder(EncoderConfig.from_hf({**hf_utils.TINY, **hf_utils.VARIANTS["hubert_base_like"]}))
    rngs = nnx.Rngs(1)
    kws = KWSDownstream(4, 32, 6, rngs=rngs)
    sv = SVDownstream(4, 32, 7, width=32, embed_dim=16, rngs=rngs)
    kws.featurizer.weights[...] = np.arange(4.0) / 4
    for path, stat in nnx.iter_graph(sv):
        if isinstance(stat, nnx.BatchStat):
            stat[...] = stat[...] + 0.1 * np.random.default_rng(len(path)).random(stat[...].shape, np.float32)
    kws.eval()
    sv.eval()
    return encoder, kws, sv


@pytest.fixture(scope="module")
def references(downstream):
    """The JAX modules' outputs on _inputs() per task, computed once for both formats."""
    encoder, kws, sv = downstream

    @jax.jit  # one compilation per input shape for both heads (eager dispatch is slower still)
    def both(x, mask):
        out = encoder(x, mask, output_hidden_states=True)
        return kws(out.hidden_states, out.frame_mask), sv.embed(out.hidden_states, out.frame_mask)

    refs = {"kws": [], "sv": []}
    for x, mask in _inputs():
        logits, embedding = both(x, mask)
        refs["kws"].append(np.asarray(logits))
        refs["sv"].append(np.asarray(embedding))
    return refs


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("task", ["kws", "sv"])
def test_float_kws_and_sv_graphs_match_jax(downstream, references, tmp_path, task, fmt):
    path = api.export(downstream, tmp_path / f"{task}.{fmt}", fmt=fmt, task=task)
    run = api.runner(path)
    for (x, mask), ref in zip(_inputs(), references[task]):
        ours = run(x, mask)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------------- int8
@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """An encoder whose weights dominate the file (hidden 128), exported once in float32 to both formats."""
    fields = {**hf_utils.TINY, **hf_utils.VARIANTS["hubert_base_like"], "hidden_size": 128,
              "intermediate_size": 512, "num_hidden_layers": 2, "conv_dim": (64, 64, 64)}
    encoder = init_encoder(EncoderConfig.from_hf(fields), seed=3)
    root = tmp_path_factory.mktemp("medium")
    floats = {fmt: api.export((encoder, None, None), root / f"float.{fmt}", fmt=fmt, layers=[2])
              for fmt in ("onnx", "tflite")}
    return encoder, floats, root


def _relative_error(ours, ref):
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("fmt,mode", [("onnx", "dynamic-int8"), ("tflite", "dynamic-int8"), ("onnx", "static-int8")])
def test_int8_is_small_and_close(medium, tiny_data_dir, fmt, mode):
    encoder, floats, root = medium
    clips = api.calibration_inputs("synthetic_speech/kws_tiny", "train", 8, data_dir=tiny_data_dir,
                                   multiple=STRIDE)
    dst = api.export((encoder, None, None), root / f"{mode}.{fmt}", fmt=fmt, quantize=mode, layers=[2],
                     calibration=clips if mode == "static-int8" else None)
    assert dst.stat().st_size <= floats[fmt].stat().st_size / 3
    if (fmt, mode) == ("onnx", "dynamic-int8"):  # the conv stack traced as matmuls, and those run in int8
        import onnx

        ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
        assert ops.count("Conv") == 1, ops  # the positional conv only (int8 weights, float compute)
        # conv layers 2 and 3 (the first, 10 x 1 deep, stays float), 2 layers x 6, the feature projection
        assert ops.count("MatMulInteger") == 2 + 2 * 6 + 1, ops
    test = api.calibration_inputs("synthetic_speech/kws_tiny", "test", 6, data_dir=tiny_data_dir, multiple=STRIDE)
    quantized, floating = api.runner(dst), api.runner(floats[fmt])
    errors = [_relative_error(quantized(c["audio"], c["attention_mask"]), floating(c["audio"], c["attention_mask"]))
              for c in test]
    # Relative L2 error of the last hidden state per clip. Measured on this random model: see the report in
    # docs/export.md; on the trained demo teacher 0.005-0.007. The conv matmuls' inputs quantized without their
    # per-frame scaling (the failure this guards against: quiet frames rounded to zero) gave up to 0.9 there.
    assert max(errors) <= 0.05, errors


@pytest.mark.parametrize("task", ["kws", "sv"])
def test_static_int8_task_graphs_run_and_stay_close(downstream, references, tmp_path, task):
    # The KWS head's last Dense became a Gemm with a 0-d zero bias, which onnxruntime's static quantizer crashed on.
    clips = [{"audio": x, "attention_mask": mask} for x, mask in _inputs()[1:]]
    path = api.export(downstream, tmp_path / f"{task}_static.onnx", fmt="onnx", quantize="static-int8", task=task,
                      calibration=clips)
    run = api.runner(path)
    errors = [_relative_error(run(x, mask), ref) for (x, mask), ref in zip(_inputs(), references[task])]
    # Relative L2 error of the logits / embedding against JAX (measured 0.015-0.06 KWS, 0.012-0.037 SV on this random
    # tiny model): int8 rounding, not a crash or a wrong graph (which give errors near 1).
    assert max(errors) <= 0.15, errors


def test_litert_static_int8_with_a_fixed_shape(downstream, tmp_path):
    encoder, kws, _ = downstream
    x, mask = _inputs()[1]  # one unpadded clip: the fixed shape
    clips = [{"audio": x, "attention_mask": mask}, {"audio": x[:, ::-1].copy(), "attention_mask": mask}]
    path = api.export(downstream, tmp_path / "kws_static.tflite", fmt="tflite", quantize="static-int8", task="kws",
                      calibration=clips, fixed_shape=x.shape)
    out = api.runner(path)(x, mask)
    hidden = encoder(x, mask, output_hidden_states=True)
    ref = np.asarray(kws(hidden.hidden_states, hidden.frame_mask))
    assert _relative_error(out, ref) <= 0.15  # measured 0.016 on a similar random tiny model


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_exports_an_hf_folder(folders, tmp_path, capsys):
    dst = tmp_path / "e.onnx"
    assert cli.main([str(folders["hubert_base_like"]), str(dst), "--layers", "0,2"]) == 0
    assert "wrote" in capsys.readouterr().out
    x, mask = _inputs()[1]  # unpadded
    ref = _hf_hidden_states(folders["hubert_base_like"], x, mask)[[0, 2]]
    assert np.abs(api.runner(dst)(x, mask) - ref).max() <= TOL


def test_cli_static_litert_calibrates_at_the_fixed_shape(folders, tiny_data_dir, tmp_path, capsys):
    dst = tmp_path / "s.tflite"
    argv = [str(folders["hubert_base_like"]), str(dst), "--quantize", "static-int8", "--fixed-shape", "1x1220",
            "--calibration", "synthetic_speech/kws_tiny:train", "--calibration-clips", "2", "--data-dir",
            str(tiny_data_dir)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "of shape [1, 1220]" in capsys.readouterr().out
    x, mask = _inputs()[1]  # 1220 samples, unpadded
    ref = _hf_hidden_states(folders["hubert_base_like"], x, mask)
    assert api.runner(dst)(x, mask).shape == ref.shape


@pytest.mark.parametrize("argv,message", [
    (["{hf}", "{tmp}/x.bin"], "cannot tell the format"),
    (["{hf}", "{tmp}/x.onnx", "--task", "kws"], "--task kws needs a source with a KWS head"),
    (["{hf}", "{tmp}/x.onnx", "--task", "sv"], "--task sv needs a source with an SV head"),
    (["{hf}", "{tmp}/x.onnx", "--layers", "9"], "--layers [9] is invalid: expected indices in 0..3"),
    (["{hf}", "{tmp}/x.onnx", "--layers", "a"], "--layers 'a' is invalid"),
    (["{hf}", "{tmp}/x.onnx", "--quantize", "static-int8"], "needs --calibration DATASET:SPLIT"),
    (["{tmp}", "{tmp}/x.onnx"], "is neither a Hugging Face folder"),
    (["{hf}", "{tmp}/x.tflite", "--quantize", "static-int8", "--calibration", "a:b"],
     "tflite --quantize static-int8 needs --fixed-shape 1xSAMPLES"),
])
def test_cli_errors_name_the_problem(folders, tmp_path, capsys, argv, message):
    argv = [a.format(hf=folders["hubert_base_like"], tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_run_that_was_stopped_before_it_finished(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"preempted": True, "config": {"task": "finetune"}}))
    assert cli.main([str(run), str(tmp_path / "x.onnx")]) == 2
    assert "stopped before it finished" in capsys.readouterr().err


def test_unsupported_config_fails_naming_it():
    encoder = init_encoder(EncoderConfig.from_hf({**hf_utils.TINY, "model_type": "hubert", "hidden_act": "silu"}))
    with pytest.raises(ConfigError, match="activation 'silu'"):
        graphs.build(encoder)
    with pytest.raises(ConfigError, match="dtype='bfloat16'"):
        graphs.build(init_encoder(encoder.config.replace(dtype="bfloat16")))


def test_measure_reports_int8_size_and_latency(folders):
    report = kdjax.export.measure(folders["hubert_base_like"], repeats=2)
    assert 0 < report["int8_mb"] < report["float_mb"] and report["ms_per_s"] > 0
