"""LiteRT (TFLite): jax.export -> StableHLO -> litert-converter -> .tflite (no TensorFlow); int8 with litert-quantizer."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import jax
import numpy as np

from kdjax.errors import ConfigError
from kdjax.export.graphs import INPUT_NAMES, Graph

SIGNATURE = "serving_default"


def convert(graph: Graph, path: str | os.PathLike) -> Path:
    """Write the float32 graph as a .tflite with a dynamic batch and length and one signature."""
    from jax import export as jax_export
    from litert_converter.mlir import ir, passmanager
    from litert_converter.mlir._mlir_libs import converter_api_ext as api

    exported = jax_export.export(jax.jit(graph.fn), platforms=["cpu"])(*graph.specs)
    ctx = ir.Context()
    api.prepare_mlir_context(ctx)
    with ctx:
        module = ir.Module.parse(exported.mlir_module())
        try:
            api.run_convert_to_tfl_passes(module, passmanager.PassManager(), api.ConvertToTFLConfig())
            left = sorted({op for op in _op_names(module) if op.startswith(("stablehlo.", "chlo.", "mhlo."))})
            if left:
                raise ConfigError(f"export --format tflite: no LiteRT builtin op for {left} in this graph")
            api.set_signature(module.operation, SIGNATURE, list(INPUT_NAMES), [graph.output_name])
            flatbuffer = api.export_flatbuffer_to_bytes(module.operation)
        except ValueError as e:
            raise ConfigError(f"export --format tflite: the LiteRT converter failed: {e}") from e
    path = Path(path)
    path.write_bytes(flatbuffer)
    return path


def _op_names(module) -> set[str]:
    names: set[str] = set()

    def walk(op):
        names.add(op.name)
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    walk(inner.operation)

    walk(module.operation)
    return names


def _quantize(src: Path, dst: Path, recipe, calibration=None) -> Path:
    from litert_quantizer import quantizer

    q = quantizer.Quantizer(str(src))
    q.load_quantization_recipe(recipe)
    result = q.quantize(q.calibrate({SIGNATURE: list(calibration)}) if calibration is not None else None,
                        enable_progress_report=False)
    dst.write_bytes(bytes(result.quantized_model))
    return dst


def quantize_dynamic(src: Path, dst: Path) -> Path:
    """Dynamic int8 for matmuls (int8 weights per channel, activations quantized on the fly); convolutions int8
    weight-only: quantizing the conv feature encoder's activations wrecks the output (relative error up to 1.0 on
    the demo teacher), while int8 weights alone keep it within 1%."""
    from litert_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    op = qtyping.TFLOperationName
    for name in (op.CONV_2D, op.DEPTHWISE_CONV_2D):
        manager.add_weight_only_config(regex=".*", operation_name=name, num_bits=8)
    manager.add_dynamic_config(regex=".*", operation_name=op.FULLY_CONNECTED, num_bits=8)
    return _quantize(src, dst, manager.get_quantization_recipe())


def refusal(quantize: str, fixed_shape: tuple[int, int] | None) -> str | None:
    """Why this quantization cannot be done here, or None: litert-quantizer 0.11's calibration crashes (segfault) on
    these graphs with a dynamic length; with a fixed shape it works."""
    if quantize == "static-int8" and fixed_shape is None:
        return ("export --format tflite --quantize static-int8 needs --fixed-shape 1xSAMPLES: litert-quantizer's "
                "calibration crashes on graphs with a dynamic length (or use --format onnx for static-int8)")
    return None


def quantize_static(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]]) -> Path:
    """Static int8 for matmuls (int8 weights per channel, int8 activations with ranges calibrated on `calibration`,
    inputs of the graph's fixed shape); convolutions int8 weight-only (see quantize_dynamic)."""
    from litert_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    op = qtyping.TFLOperationName
    for name in (op.CONV_2D, op.DEPTHWISE_CONV_2D):
        manager.add_weight_only_config(regex=".*", operation_name=name, num_bits=8)
    manager.add_static_config(regex=".*", operation_name=op.FULLY_CONNECTED, activation_num_bits=8,
                              weight_num_bits=8)
    return _quantize(src, dst, manager.get_quantization_recipe(), calibration)


class Runner:
    """LiteRT interpreter (XNNPACK on CPU): run(audio, attention_mask) -> numpy output, any batch and length (the
    tensors are resized and re-allocated only when the input shape changes)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        signature = runner._signature_def  # {"inputs": {name: tensor index}, "outputs": {name: tensor index}}
        self.inputs = [signature["inputs"][name] for name in INPUT_NAMES]
        self.output = next(iter(signature["outputs"].values()))
        self.shape = None

    def __call__(self, audio: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if audio.shape != self.shape:
            for index, value in zip(self.inputs, (audio, attention_mask)):
                self.interpreter.resize_tensor_input(index, value.shape, strict=False)
            self.interpreter.allocate_tensors()
            self.shape = audio.shape
        self.interpreter.set_tensor(self.inputs[0], audio.astype(np.float32))
        self.interpreter.set_tensor(self.inputs[1], attention_mask.astype(np.int32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)
