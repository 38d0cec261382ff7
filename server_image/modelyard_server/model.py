"""Loading an ONNX model into ONNX Runtime: verify, open, warm up, find out if it batches."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelyard_server.config import ServerConfig, ServerSettings
from modelyard_server.contracts import LoadFailureReason
from modelyard_server.signature import ONNX_TO_OIP, ModelSignature, TensorSpec, dims_of

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


# A failing run is a client's bad values, answered with 400 and counted in the metrics;
# ONNX Runtime's own error line for each would let clients flood the log.
_RUN_OPTIONS = ort.RunOptions()
_RUN_OPTIONS.log_severity_level = 4


class LoadError(Exception):
    """The model cannot be served; `reason` is the LoadFailure reason."""

    def __init__(self, reason: LoadFailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: LoadFailureReason = reason
        self.message = message


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256; LoadError ChecksumMismatch when it is not the expected one."""
    actual = sha256_of(path)
    if expected is not None and actual != expected.lower():
        raise LoadError(
            "ChecksumMismatch", f"sha256 of {path} is {actual}, expected {expected.lower()}"
        )
    return actual


def session_options(config: ServerConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization_level]
    options.log_severity_level = 3
    # The event loop shares the CPU with ONNX Runtime: idle workers must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers_for(config: ServerConfig) -> list[str]:
    available = ort.get_available_providers()
    if config.execution_provider == "cpu":
        return [_CPU]
    if config.execution_provider == "cuda" and _CUDA not in available:
        raise LoadError(
            "ProviderUnavailable",
            f"executionProvider is cuda but this ONNX Runtime offers only {available}",
        )
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def signature_of(session: ort.InferenceSession) -> ModelSignature:
    def spec(arg: ort.NodeArg) -> TensorSpec:
        datatype = ONNX_TO_OIP.get(arg.type, arg.type)
        return TensorSpec(arg.name, datatype, dims_of(arg.shape))

    return ModelSignature(
        inputs=tuple(spec(a) for a in session.get_inputs()),
        outputs=tuple(spec(a) for a in session.get_outputs()),
    )


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    signature: ModelSignature
    batchable: bool
    sha256: str
    providers: list[str]
    load_seconds: float

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(None, feed, _RUN_OPTIONS)
        return [np.asarray(o) for o in outputs]


def dummy_feed(signature: ModelSignature, rows: int) -> dict[str, np.ndarray]:
    """Zeros for every input, `rows` in the first dimension when it is dynamic."""
    feed: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = list(spec.shape or ())
        if shape and shape[0] == -1:
            shape[0] = rows
        shape = [1 if d == -1 else d for d in shape]
        if spec.dtype is not None:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            feed[spec.name] = np.full(shape, "", dtype=object)
    return feed


PROBE_ROWS = 4
# Batched and single-row runs may differ in the last bits (other kernels, other summation
# order); a row that depends on its neighbours differs by far more.
_PROBE_RTOL = 1e-3
_PROBE_ATOL = 1e-4


def probe_feed(signature: ModelSignature, rows: int) -> dict[str, np.ndarray]:
    """Distinct rows for every input: values that any model should accept.

    Floats are seeded random numbers; integers and booleans alternate 0 and 1 (0 and 1 are
    valid indices and categories for any model that takes them); strings are the row number.
    """
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [rows] + [1 if d == -1 else d for d in (spec.shape or (-1,))[1:]]
        row_of = np.arange(rows).reshape([rows] + [1] * (len(shape) - 1))
        dtype = spec.dtype
        if dtype is None:
            feed[spec.name] = np.broadcast_to(row_of.astype(str).astype(object), shape).copy()
        elif dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[spec.name] = np.broadcast_to(row_of % 2, shape).astype(dtype)
    return feed


def _same(batched: np.ndarray, alone: np.ndarray) -> bool:
    if batched.shape != alone.shape:
        return False
    if batched.dtype.kind in "fc":
        return bool(np.allclose(batched, alone, rtol=_PROBE_RTOL, atol=_PROBE_ATOL, equal_nan=True))
    return bool(np.array_equal(batched, alone))


def row_independence(model: LoadedModel, rows: int) -> str | None:
    """None when each row of a batch gets what it gets alone; else what differs.

    Dynamic batching concatenates the rows of different clients: that is only right for a
    model that computes every output row from its own input row (not, say, x - mean(x)).
    """
    feed = probe_feed(model.signature, rows)
    batched = model.run(feed)
    if not all(o.ndim >= 1 and o.shape[0] == rows for o in batched):
        return "its outputs do not have one row per input row"
    for row in range(rows):
        alone = model.run({name: value[row : row + 1] for name, value in feed.items()})
        for spec, whole, single in zip(model.signature.outputs, batched, alone, strict=True):
            if not _same(whole[row : row + 1], single):
                return f"output {spec.name!r} of row {row} differs in a batch and alone"
    return None


def load_model(settings: ServerSettings) -> LoadedModel:
    """Verify, open and warm up the model; LoadError says why when it cannot be served."""
    started = time.perf_counter()
    path = Path(settings.model_path)
    if not path.is_file():
        raise LoadError("ModelNotFound", f"no model file at {path}")
    try:
        digest = verify_sha256(path, settings.sha256)
    except OSError as exc:
        raise LoadError("ModelNotFound", f"cannot read {path}: {exc}") from None
    providers = providers_for(settings)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(settings), providers=providers
        )
    except Exception as exc:  # ONNX Runtime raises several unrelated types for a bad file
        raise LoadError("InvalidModel", f"ONNX Runtime cannot load {path}: {exc}") from None
    if settings.execution_provider == "cuda" and _CUDA not in session.get_providers():
        raise LoadError("ProviderUnavailable", "CUDA is installed but no GPU could be used")
    signature = signature_of(session)
    unsupported = [s for s in signature.inputs if s.dtype is None and s.datatype != "BYTES"]
    if unsupported:
        raise LoadError(
            "InvalidModel",
            f"inputs {[s.name for s in unsupported]} have datatypes that this server cannot "
            f"receive ({[s.datatype for s in unsupported]})",
        )
    model = LoadedModel(session, signature, False, digest, session.get_providers(), 0.0)
    try:
        model.run(dummy_feed(signature, 1))
    except Exception as exc:
        raise LoadError("WarmupFailed", f"warm-up inference on {path} failed: {exc}") from None
    if settings.max_batch_size > 1 and signature.batch_dim_is_dynamic:
        # The signature promises a batch dimension; check that rows are independent.
        rows = min(PROBE_ROWS, settings.max_batch_size)
        try:
            difference = row_independence(model, rows)
        except Exception as exc:
            difference = f"a batch of {rows} rows fails ({exc})"
        model.batchable = difference is None
        if difference is not None:
            log.warning("batching off: the model's rows are not independent: %s", difference)
        if model.batchable:
            try:
                model.run(dummy_feed(signature, settings.max_batch_size))
            except Exception as exc:
                raise LoadError(
                    "WarmupFailed",
                    f"warm-up with a batch of maxBatchSize={settings.max_batch_size} rows "
                    f"failed: {exc}",
                ) from None
    model.load_seconds = time.perf_counter() - started
    return model
