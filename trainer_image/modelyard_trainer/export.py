"""ONNX export with a parity check, optional graph optimization and int8 quantization.

Exporter: torch.onnx.export(dynamo=True), the torch.export-based exporter (it needs
onnxscript, pinned in the trainer extra). It is PyTorch's default and maintained path; the
TorchScript exporter is deprecated. The price is a few seconds per export.

String categorical columns cannot enter a torch graph, so a small ONNX graph in front maps
them to category codes (ai.onnx.ml LabelEncoder) and is merged with the exported torch graph:
the served model takes raw numbers and raw strings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from .contracts import EvaluationMetrics, ParityReport, TensorSpec, VariantReport
from .data import Part, PreprocessingSpec
from .errors import ParityCheckFailed
from .evaluate import classification_metrics, regression_metrics
from .models import CodesOnly, ExportableModel, NumericAndCodes, NumericOnly

log = logging.getLogger(__name__)

INPUT_NUMERIC = "input"
INPUT_CATEGORICAL = "categorical"
CODES = "categorical_codes"
BATCH = "batch"
ML_OPSET = 2

_DATATYPES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT64: "INT64",
    TensorProto.INT32: "INT32",
    TensorProto.INT16: "INT16",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.STRING: "BYTES",
}


def output_names(spec: PreprocessingSpec) -> list[str]:
    return ["probabilities", "class_index"] if spec.task == "classification" else ["prediction"]


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxscript's optimizer and ORT's quantizer chat through the root logger; mute them."""
    # torch's own logging setup resets the levels of torch.* loggers on first use, so the
    # exporter's warning about optional torchvision ops is silenced here, not at start-up.
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces and docs: they can outweigh small models."""
    graphs = [proto.graph, *(function for function in proto.functions)]
    for graph in graphs:
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
    proto.graph.doc_string = ""


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that becomes `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _example(part: Part, rows: int) -> Part:
    # At least two rows, so that the exporter does not specialize the batch axis to 1.
    taken = part.take(np.arange(min(len(part), rows)))
    while len(taken) < 2:
        taken = Part(
            np.concatenate([taken.numeric, taken.numeric]),
            np.concatenate([taken.strings, taken.strings]),
            np.concatenate([taken.target, taken.target]),
        )
    return taken


def _torch_inputs(spec: PreprocessingSpec, part: Part) -> tuple[torch.Tensor | None, ...]:
    numeric = (
        torch.from_numpy(np.ascontiguousarray(part.numeric, dtype=np.float32))
        if spec.numeric_columns
        else None
    )
    codes = torch.from_numpy(spec.string_codes(part.strings)) if spec.string_columns else None
    return numeric, codes


def _categorical_graph(spec: PreprocessingSpec, opset: int, ir_version: int) -> onnx.ModelProto:
    """Strings [batch, columns] -> float codes [batch, columns]; unseen strings -> -1."""
    nodes, initializers, codes = [], [], []
    for column, categories in enumerate(spec.string_categories):
        index = f"categorical_column_{column}"
        initializers.append(helper.make_tensor(index, TensorProto.INT64, [1], [column]))
        nodes.append(
            helper.make_node("Gather", [INPUT_CATEGORICAL, index], [f"{index}_value"], axis=1)
        )
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [f"{index}_value"],
                [f"{index}_code"],
                domain="ai.onnx.ml",
                keys_strings=[*categories, ""],
                values_floats=[
                    *(float(code) for code in range(len(categories))),
                    float(spec.string_missing_code[column]),
                ],
                default_float=-1.0,
            )
        )
        codes.append(f"{index}_code")
    nodes.append(helper.make_node("Concat", codes, [CODES], axis=1))
    columns = len(spec.string_columns)
    graph = helper.make_graph(
        nodes,
        "categorical_encoding",
        [helper.make_tensor_value_info(INPUT_CATEGORICAL, TensorProto.STRING, [BATCH, columns])],
        [helper.make_tensor_value_info(CODES, TensorProto.FLOAT, [BATCH, columns])],
        initializer=initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        ir_version=ir_version,
    )


def export_onnx(
    model: ExportableModel,
    spec: PreprocessingSpec,
    example: Part,
    path: Path,
    opset: int,
    dynamic_batch: bool,
) -> None:
    """Export raw features -> outputs to `path` (atomically), and run onnx.checker on it."""
    model = model.eval()
    numeric, codes = _torch_inputs(
        spec, _example(example, 64) if dynamic_batch else example.take(np.arange(1))
    )
    adapter: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    if numeric is not None and codes is not None:
        adapter, args, names = NumericAndCodes(model), (numeric, codes), [INPUT_NUMERIC, CODES]
    elif numeric is not None:
        adapter, args, names = NumericOnly(model), (numeric,), [INPUT_NUMERIC]
    else:
        assert codes is not None
        adapter, args, names = CodesOnly(model), (codes,), [CODES]
    proto = torch_to_onnx(adapter, args, names, output_names(spec), opset, dynamic_batch)
    if codes is not None:
        prefix = _categorical_graph(spec, opset, proto.ir_version)
        proto = onnx.compose.merge_models(prefix, proto, io_map=[(CODES, CODES)])
        # merge_models lists a domain once per source model; tools (the quantizer) want one.
        opsets = {opset.domain: opset.version for opset in proto.opset_import}
        del proto.opset_import[:]
        proto.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
        # Numbers first, like the models without string columns.
        inputs = sorted(proto.graph.input, key=lambda value: value.name != INPUT_NUMERIC)
        ordered = [onnx.ValueInfoProto.FromString(value.SerializeToString()) for value in inputs]
        del proto.graph.input[:]
        proto.graph.input.extend(ordered)
    save_checked(proto, path)


def torch_to_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_batch: bool,
) -> onnx.ModelProto:
    """The exporter on `module` at `args`; with `dynamic_batch`, axis 0 of every input is free."""
    dynamic_shapes: Any = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH)
        dynamic_shapes = tuple({0: batch} for _ in args)
    with warnings.catch_warnings(), quiet_root_logger():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    assert program is not None
    return program.model_proto


def save_checked(proto: onnx.ModelProto, path: Path) -> None:
    """Strip debug info, run onnx.checker, and write `path` atomically."""
    strip_debug_info(proto)
    proto.producer_name = "modelyard-trainer"
    onnx.checker.check_model(proto, full_check=True)
    with atomic_output(path) as temporary:
        onnx.save(proto, str(temporary))


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_feeds(spec: PreprocessingSpec, part: Part) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    if spec.numeric_columns:
        feeds[INPUT_NUMERIC] = np.ascontiguousarray(part.numeric, dtype=np.float32)
    if spec.string_columns:
        feeds[INPUT_CATEGORICAL] = np.asarray(part.strings, dtype=object)
    return feeds


def run_onnx(
    model: ort.InferenceSession, spec: PreprocessingSpec, part: Part, batch: int | None = None
) -> list[np.ndarray]:
    """Outputs over all rows, in batches of `batch` rows (None: all at once)."""
    step = batch or max(1, len(part))
    chunks = [
        model.run(
            output_names(spec),
            onnx_feeds(spec, part.take(np.arange(start, min(start + step, len(part))))),
        )
        for start in range(0, len(part), step)
    ]
    return [np.concatenate([chunk[index] for chunk in chunks]) for index in range(len(chunks[0]))]


def run_torch(model: ExportableModel, spec: PreprocessingSpec, part: Part) -> list[np.ndarray]:
    numeric, codes = _torch_inputs(spec, part)
    with torch.no_grad():
        outputs = model.eval()(numeric, codes)
    return [output.numpy() for output in outputs]


def max_difference(
    spec: PreprocessingSpec, left: list[np.ndarray], right: list[np.ndarray]
) -> float:
    """Largest absolute difference of the real-valued output (regression: in target std units)."""
    a = np.asarray(left[0], dtype=np.float64)
    b = np.asarray(right[0], dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if spec.task == "regression":
        a, b = a / spec.target_scale, b / spec.target_scale
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    difference = np.abs(np.nan_to_num(a) - np.nan_to_num(b))
    return float(difference.max()) if difference.size else 0.0


def check_parity(
    path: Path,
    model: ExportableModel,
    spec: PreprocessingSpec,
    rows: Part,
    tolerance: float,
    dynamic_batch: bool,
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on held-out raw rows; raise when they disagree."""
    expected = run_torch(model, spec, rows)
    actual = run_onnx(session(path), spec, rows, None if dynamic_batch else 1)
    difference = max_difference(spec, expected, actual)
    report = ParityReport(
        rows=len(rows),
        max_abs_diff=difference if np.isfinite(difference) else 1e308,
        tolerance=tolerance,
        passed=difference <= tolerance,
    )
    if not report.passed:
        raise ParityCheckFailed(
            f"ONNX Runtime differs from PyTorch by {difference:.3g} on {len(rows)} held-out rows "
            f"(export.parityTolerance {tolerance:g}); the export is not marked final"
        )
    return report


def metrics_of(spec: PreprocessingSpec, outputs: list[np.ndarray], part: Part) -> EvaluationMetrics:
    if spec.task == "classification":
        return classification_metrics(outputs[0], part.target, len(spec.class_labels))
    return regression_metrics(outputs[0], part.target, spec.target_scale)


def describe(path: Path, spec: PreprocessingSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a model file in Open Inference Protocol terms (-1 = dynamic)."""
    features = {INPUT_NUMERIC: spec.numeric_columns, INPUT_CATEGORICAL: spec.string_columns}
    return tensor_specs(path, features)


def tensor_specs(
    path: Path, features: dict[str, list[str]]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of any model file; `features` names the columns of some inputs."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def tensor(value: onnx.ValueInfoProto) -> TensorSpec:
        kind = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in kind.shape.dim]
        return TensorSpec(
            name=value.name,
            datatype=_DATATYPES.get(kind.elem_type) or str(kind.elem_type),
            shape=shape,
            features=list(features.get(value.name, [])),
        )

    return [tensor(value) for value in graph.input], [tensor(value) for value in graph.output]


def _variant_report(
    spec: PreprocessingSpec,
    base: Path,
    variant: Path,
    base_outputs: list[np.ndarray],
    base_metrics: EvaluationMetrics,
    test: Part,
    batch: int | None,
) -> VariantReport:
    outputs = run_onnx(session(variant), spec, test, batch)
    metrics = metrics_of(spec, outputs, test).headline()
    reference = base_metrics.headline()
    return VariantReport(
        file=variant.name,
        size_bytes=variant.stat().st_size,
        size_ratio=variant.stat().st_size / base.stat().st_size,
        metrics=metrics,
        metric_change={key: metrics[key] - reference[key] for key in metrics if key in reference},
        max_abs_diff=min(max_difference(spec, base_outputs, outputs), 1e308),
    )


def optimize_graph(
    spec: PreprocessingSpec,
    base: Path,
    target: Path,
    base_outputs: list[np.ndarray],
    base_metrics: EvaluationMetrics,
    test: Part,
    batch: int | None,
) -> VariantReport:
    """ONNX Runtime's offline graph optimization. EXTENDED, not ALL: the layout changes of ALL
    are specific to the machine that runs them, while this file may be served anywhere."""
    with atomic_output(target) as temporary:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(temporary)
        ort.InferenceSession(str(base), options, providers=["CPUExecutionProvider"])
    return _variant_report(spec, base, target, base_outputs, base_metrics, test, batch)


def quantize_int8(
    spec: PreprocessingSpec,
    base: Path,
    target: Path,
    base_outputs: list[np.ndarray],
    base_metrics: EvaluationMetrics,
    test: Part,
    batch: int | None,
) -> VariantReport:
    """Dynamic int8 quantization of the weights (activations are quantized at run time)."""
    quantize_file(base, target)
    return _variant_report(spec, base, target, base_outputs, base_metrics, test, batch)


def quantize_file(base: Path, target: Path) -> None:
    """Dynamic int8 quantization of `base`'s weights into `target` (atomically)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_output(target) as temporary, quiet_root_logger():
        quantize_dynamic(base, temporary, weight_type=QuantType.QInt8)
