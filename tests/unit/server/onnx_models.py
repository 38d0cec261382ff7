"""Small ONNX models for the server's tests, built with onnx.helper (no torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench" / "server"))
from onnx_mlp import mlp, save

__all__ = ["ALL_TYPES", "all_types", "mlp", "save", "slow_identity"]

# OIP datatype -> (ONNX element type, numpy dtype)
ALL_TYPES: dict[str, tuple[int, np.dtype]] = {
    "BOOL": (TensorProto.BOOL, np.dtype(np.bool_)),
    "UINT8": (TensorProto.UINT8, np.dtype(np.uint8)),
    "UINT16": (TensorProto.UINT16, np.dtype(np.uint16)),
    "UINT32": (TensorProto.UINT32, np.dtype(np.uint32)),
    "UINT64": (TensorProto.UINT64, np.dtype(np.uint64)),
    "INT8": (TensorProto.INT8, np.dtype(np.int8)),
    "INT16": (TensorProto.INT16, np.dtype(np.int16)),
    "INT32": (TensorProto.INT32, np.dtype(np.int32)),
    "INT64": (TensorProto.INT64, np.dtype(np.int64)),
    "FP16": (TensorProto.FLOAT16, np.dtype(np.float16)),
    "FP32": (TensorProto.FLOAT, np.dtype(np.float32)),
    "FP64": (TensorProto.DOUBLE, np.dtype(np.float64)),
}


def all_types() -> onnx.ModelProto:
    """One input `in_<DT>` [batch, 3] per datatype, echoed as `out_<DT>`."""
    inputs, outputs, nodes = [], [], []
    for name, (elem, _) in ALL_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "all_types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def slow_identity(width: int = 512, repeats: int = 64) -> onnx.ModelProto:
    """y = x, computed slowly: `repeats` MatMuls with one shared identity matrix.

    Gives tests in-flight requests that last long enough to be interrupted.
    """
    eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye")
    nodes = []
    current = "input"
    for i in range(repeats):
        out = "output" if i == repeats - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, "eye"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "slow_identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        [eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
