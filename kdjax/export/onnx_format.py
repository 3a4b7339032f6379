"""ONNX: the graph's jaxpr -> jax2onnx -> .onnx; int8 with onnxruntime's quantizer (dynamic, or static QDQ)."""
from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

import jax
import numpy as np

from kdjax.errors import ConfigError
from kdjax.export.graphs import INPUT_NAMES, Graph

OPSET = 17


def _import_primitive_plugins() -> None:
    """Load only jax2onnx's primitive (jax/lax/numpy) plugins: its examples tree takes ~30 s to import and its
    Flax-module plugins are not needed, because the graph is handed over as a jaxpr of primitives."""
    from jax2onnx.plugins import plugin_system

    if getattr(plugin_system, "_already_imported_plugins", True):
        return
    root = Path(plugin_system.__file__).parent
    plugin_system._import_tree(root / "jax", "jax2onnx.plugins.jax")
    plugin_system._already_imported_plugins = True


def convert(graph: Graph, path: str | os.PathLike) -> Path:
    """Write the float32 graph as ONNX with a dynamic batch and length."""
    from jax2onnx import to_onnx

    _import_primitive_plugins()
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # one warning per untyped shape value otherwise
    # Trace to primitives first (nested jits inlined), so no Flax-module plugin rewrites kdjax's modules.
    with jax.disable_jit():
        closed = jax.make_jaxpr(graph.fn)(*graph.specs)

    def primitives(audio, attention_mask):
        return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, audio, attention_mask)[0]

    try:
        model = to_onnx(primitives, list(graph.specs), opset=OPSET, input_names=list(INPUT_NAMES),
                        output_names=[graph.output_name], model_name="kdjax")
    except (NotImplementedError, TypeError, ValueError) as e:
        raise ConfigError(f"export --format onnx: jax2onnx cannot convert this graph: {e}") from e
    import onnx

    _fold_weight_layouts(model)
    _einsum_to_matmul(model)
    _drop_unused_gemm_bias(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


_DENSE = re.compile(r"^([a-z]*)([a-z]),\2([a-z])->\1\3$")


def _fold_weight_layouts(model) -> int:
    """Replace Transpose / Reshape of a weight initializer by the transposed or reshaped initializer (jax2onnx
    transposes conv kernels and reshapes the conv-as-matmul kernels at run time; a quantizer only quantizes weights
    that are initializers). Repeats until nothing folds (a reshape of a transpose, say)."""
    from onnx import numpy_helper

    total = 0
    while True:
        inits = {t.name: t for t in model.graph.initializer}
        uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        folded = []
        for node in model.graph.node:
            if node.op_type not in ("Transpose", "Reshape") or node.input[0] not in inits or uses[node.input[0]] != 1:
                continue
            value = numpy_helper.to_array(inits[node.input[0]])
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                value = value.transpose(perm) if perm else value.T
            else:
                if len(node.input) < 2 or node.input[1] not in inits:
                    continue
                shape = [value.shape[i] if d == 0 else int(d)
                         for i, d in enumerate(numpy_helper.to_array(inits[node.input[1]]))]
                value = value.reshape(shape)
            model.graph.initializer.remove(inits[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(value.copy(), node.output[0]))
            folded.append(node)
        for node in folded:
            model.graph.node.remove(node)
        total += len(folded)
        if not folded:
            break
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:  # the folded reshapes' shapes
        model.graph.initializer.remove(tensor)
    return total


def _drop_unused_gemm_bias(model) -> int:
    """Remove the 0-d zero bias that jax2onnx gives a Gemm with beta=0 (the real bias is a separate Add): C is
    optional, and onnxruntime's static quantizer indexes a Gemm bias per channel (IndexError on a 0-d one)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    dropped = set()
    for node in model.graph.node:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        if (node.op_type == "Gemm" and len(node.input) == 3 and beta == 0.0 and node.input[2] in inits
                and numpy_helper.to_array(inits[node.input[2]]).ndim == 0):
            dropped.add(node.input.pop())
    used = {name for node in model.graph.node for name in node.input}
    for name in dropped - used:
        model.graph.initializer.remove(inits[name])
    return len(dropped)


def _einsum_to_matmul(model) -> int:
    """Rewrite jax2onnx's Einsum "...k,kn->...n" with a weight matrix as MatMul (what int8 quantizers quantize)."""
    weights = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    count = 0
    for node in model.graph.node:
        if node.op_type != "Einsum" or len(node.input) != 2 or node.input[1] not in weights:
            continue
        equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
        if _DENSE.match(equation):
            node.op_type = "MatMul"
            del node.attribute[:]
            count += 1
    return count


def _convs(model, *, grouped: bool) -> list[str]:
    """Names of the Conv nodes: the ungrouped ones (a conv feature encoder traced natively, the TDNN heads), or all of
    them (with the grouped positional conv)."""
    def group(node):
        return next((a.i for a in node.attribute if a.name == "group"), 1)

    return [n.name for n in model.graph.node if n.op_type == "Conv" and (grouped or group(n) == 1)]


def _shallow_matmuls(model) -> list[str]:
    """MatMul nodes whose weight has fewer than featconv.INT8_MIN_DEPTH input rows (the first conv as a matmul:
    10 x 512): int8 costs them more in quantizing their input than it saves."""
    from kdjax.models.featconv import INT8_MIN_DEPTH

    depth = {t.name: t.dims[0] for t in model.graph.initializer if len(t.dims) == 2}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) > 1 and depth.get(n.input[1], INT8_MIN_DEPTH) < INT8_MIN_DEPTH]


def _weight_only_int8(model, nodes: list[str]) -> None:
    """Store these Conv nodes' weights as int8 (per output channel) + DequantizeLinear: a quarter of the bytes, float
    compute."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    replaced, added, dequantize = set(), [], []
    for node in model.graph.node:
        if node.name not in nodes or len(node.input) < 2 or node.input[1] not in inits or node.input[1] in replaced:
            continue
        base = node.input[1]
        weight = numpy_helper.to_array(inits[base]).astype(np.float32)
        scale = np.maximum(np.abs(weight).reshape(weight.shape[0], -1).max(1), 1e-12) / 127.0
        q = np.clip(np.round(weight / scale.reshape(-1, *([1] * (weight.ndim - 1)))), -127, 127).astype(np.int8)
        replaced.add(base)
        added += [numpy_helper.from_array(q, base + "_int8"),
                  numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                  numpy_helper.from_array(np.zeros(q.shape[0], np.int8), base + "_zero")]
        dequantize.append(helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zero"],
                                           [base], axis=0, name=base + "_dequantize"))
    kept = [t for t in model.graph.initializer if t.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    nodes_before = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(dequantize + nodes_before)


def quantize_dynamic(src: Path, dst: Path) -> Path:
    """Dynamic int8: MatMul / Gemm (the transformer, and the conv feature encoder that kdjax.export traces as
    matmuls) with int8 weights (per channel) and activations quantized on the fly; every Conv (positional conv,
    TDNN heads) int8 weight-only: onnxruntime's dynamic ConvInteger ran the DistilHuBERT-size positional conv 2.2x
    slower than its float Conv."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic as qd

    model = onnx.load(str(src))
    convs = _convs(model, grouped=True)
    qd(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
       op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=convs + _shallow_matmuls(model))
    model = onnx.load(str(dst))
    _weight_only_int8(model, convs)
    onnx.save(model, str(dst))
    return dst


def quantize_static(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]]) -> Path:
    """Static int8 (QDQ): int8 weights per channel and int8 activations with ranges calibrated on `calibration`
    for MatMul / Gemm / the positional Conv; the other convolutions (feature encoder, TDNN heads) int8 weight-only:
    with calibrated per-tensor ranges their activations lose quiet frames."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static as qs

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the plain graph without it
            prepared = src
        import onnx

        convs = _convs(onnx.load(str(prepared)), grouped=False)
        qs(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
           activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
           op_types_to_quantize=["MatMul", "Gemm", "Conv"], nodes_to_exclude=convs)
    model = onnx.load(str(dst))
    _weight_only_int8(model, convs)
    onnx.save(model, str(dst))
    return dst


class Runner:
    """onnxruntime session on CPU: run(audio, attention_mask) -> numpy output."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, audio: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAMES[0]: audio.astype(np.float32),
                                       INPUT_NAMES[1]: attention_mask.astype(np.int32)})[0]
