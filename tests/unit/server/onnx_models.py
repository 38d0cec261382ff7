"""Small ONNX models for the server's tests, built with onnx.helper (no torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench" / "server"))
from onnx_mlp import mlp, save

__all__ = [
    "ALL_TYPES",
    "all_types",
    "centered",
    "lookup_table",
    "mlp",
    "row_sums",
    "save",
    "slow_identity",
]

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


def lookup_table(rows: int = 10, width: int = 3, busy: int = 32) -> onnx.ModelProto:
    """output[b] = table[idx[b]]: an index past the table fails in ONNX Runtime, at run time.

    Its shapes are always valid, so only the values of one request can fail a batch. A
    second output, `busy`, costs about a millisecond per row (MatMuls with an identity), so
    that requests sent together queue up behind the first one and share a batch.
    """
    table = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["output"], axis=0),
        helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["idx_f", "axis1"], ["column"]),
        helper.make_node("MatMul", ["column", "ones"], ["b0"]),
    ]
    for i in range(busy):
        nodes.append(helper.make_node("MatMul", [f"b{i}", "eye"], [f"b{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"b{busy}", "axis1"], ["busy"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("busy", TensorProto.FLOAT, ["batch"]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.ones((1, 512), dtype=np.float32), "ones"),
            numpy_helper.from_array(np.eye(512, dtype=np.float32), "eye"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def row_sums(width: int | str) -> onnx.ModelProto:
    """y[b] = sum(x[b, :]) for x of shape [batch, width]: wide requests, small answers.

    A str width is a dynamic (named) second dimension.
    """
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axis1"], ["output"], keepdims=0)],
        "row_sums",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def centered(width: int = 3, busy: int = 32) -> onnx.ModelProto:
    """output = x - mean(x, axis=0): each row depends on the others of its batch.

    Not row-independent, so batching requests of different clients would mix them. `busy`
    (as in lookup_table) makes a large request last long enough for others to queue.
    """
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["input", "mean"], ["output"]),
        helper.make_node("MatMul", ["input", "ones"], ["b0"]),
    ]
    for i in range(busy):
        nodes.append(helper.make_node("MatMul", [f"b{i}", "eye"], [f"b{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"b{busy}", "axis1"], ["busy"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "centered",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("busy", TensorProto.FLOAT, ["batch"]),
        ],
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.ones((width, 512), dtype=np.float32), "ones"),
            numpy_helper.from_array(np.eye(512, dtype=np.float32), "eye"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
