"""Open Inference Protocol v2 infer requests and responses, JSON and binary tensor extension.

Parsing validates everything against the model's signature before the request reaches the
batcher, so one client's bad tensor never fails a batch that holds other clients' rows.
"""

from __future__ import annotations

import math
import re
import secrets
import struct
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelyard_server.errors import bad_request
from modelyard_server.signature import ALL_DATATYPES, ModelSignature, TensorSpec, datatype_of

MAX_RANK = 32  # numpy's own limit is 64; no real model input comes close
# Bound of every dimension and of the product of the non-zero ones: an empty tensor may
# declare any other dimension, and numpy refuses (ONNX Runtime may crash on) absurd ones.
MAX_DIM = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A validated request: model inputs in the model's order, ready for ONNX Runtime."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    rows: int
    # Requests with equal keys can be concatenated along the first dimension; None: run alone.
    batch_key: Hashable | None


def _load_json(raw: bytes | bytearray | memoryview) -> Any:
    # orjson: strict RFC 8259 (no NaN, no Infinity, 1e400 refused), a nesting limit, and
    # an order of magnitude faster than json on number arrays, the bulk of a request.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}") from None


# --- large JSON bodies: numbers without a Python object each -------------------------------
#
# orjson turns every number into a Python float (32 bytes with its list slot): a body of
# short numbers like "0.5," grows 8-fold before numpy sees it, 20-fold at the peak. Above
# LIFT_JSON_BYTES, the numeric "data" arrays are cut out of the text first; the rest parses
# as usual, and numpy reads the numbers of float inputs straight from the text. Anything
# unusual about an array (not floats, not the expected nesting, not strict JSON numbers)
# goes back to the ordinary path, so answers and error messages stay the same.
LIFT_JSON_BYTES = 1024 * 1024
NUMBERS_PIECE = 256 * 1024
_DATA_ARRAY = re.compile(rb'"data"\s*:\s*\[')
_NUMERIC_RUN = re.compile(rb"[0-9eE+\-.,\[\]\s]*")
# Comma-separated JSON numbers (RFC 8259 grammar), as a lifted array is once its brackets
# are gone: strtod alone would also take "+1", ".5", "1.", "01" and read "" as -1.
# Possessive quantifiers: one pass, no backtracking (~0.1 s for 8 MiB).
_NUMBER = rb"[ \t\r\n]*+-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+\-]?+[0-9]++)?+[ \t\r\n]*+"
_JSON_NUMBERS = re.compile(_NUMBER + rb"(?:," + _NUMBER + rb")*+")
_NUMBER_CHARS = b"0123456789eE+-. \t\r\n"


@dataclass(frozen=True, slots=True)
class _LiftedArray:
    """The JSON text of one numeric "data" array, cut out of a large body."""

    text: bytes


def _load_large_json(body: bytes | bytearray) -> Any:
    """Parse a large JSON body; numeric "data" arrays come back as _LiftedArray."""
    nonce = secrets.token_hex(8)
    pieces: list[bytes | bytearray] = []
    lifted: dict[str, bytes] = {}
    position = 0
    for match in _DATA_ARRAY.finditer(body):
        start = match.end() - 1
        run = _NUMERIC_RUN.match(body, start)
        end = run.end() if run else start
        while end > start and body[end - 1] in b" \t\r\n,":
            end -= 1
        with memoryview(body) as view:
            text = bytes(view[start:end])  # one copy; slicing the bytearray would add another
        if not text.endswith(b"]") or text.count(b"[") != text.count(b"]"):
            continue  # not a plain numeric array: leave it to orjson
        marker = f"\u0000{nonce}:{len(lifted)}"
        pieces += [body[position:start], orjson.dumps(marker)]
        lifted[marker] = text
        position = end
    if not lifted:
        return _load_json(body)
    pieces.append(body[position:])
    try:
        header = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError as exc:
        # Parsing the original instead would build the objects this path avoids. Positions
        # would be those of the shortened text: the message leaves them out.
        raise bad_request(f"malformed JSON: {exc.msg}") from None
    inputs = header.get("inputs") if isinstance(header, dict) else None
    for tensor in inputs if isinstance(inputs, list) else ():
        data = tensor.get("data") if isinstance(tensor, dict) else None
        if isinstance(data, str) and data in lifted:
            tensor["data"] = _LiftedArray(lifted.pop(data))
    if lifted:
        _restore(header, lifted)
    return header


def _restore(document: Any, lifted: dict[str, bytes]) -> None:
    """Put back the arrays lifted from places other than an input's "data" (rare, small)."""
    pending = [document]
    while pending:
        node = pending.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, str) and value in lifted:
                node[key] = _load_json(lifted[value])
            elif isinstance(value, dict | list):
                pending.append(value)


def _nesting(shape: tuple[int, ...]) -> bytes:
    """Brackets and commas of a fully nested array of `shape`, numbers left out."""
    inner = b"[" + b"," * (shape[-1] - 1) + b"]"
    for dim in reversed(shape[:-1]):
        inner = b"[" + b",".join([inner] * dim) + b"]"
    return inner


def _read_numbers(numbers: bytes, dtype: np.dtype, count: int) -> np.ndarray | None:
    """`count` comma-separated JSON numbers; None when they are not exactly that.

    Read in pieces of about NUMBERS_PIECE bytes (cut at commas): each regex and numpy call
    holds the GIL, and the event loop must get it back often while a large body is read.
    """
    out = np.empty(count, dtype=dtype)
    filled = 0
    start = 0
    while start < len(numbers):
        end = numbers.find(b",", start + NUMBERS_PIECE)
        end = len(numbers) if end < 0 else end
        piece = numbers[start:end]
        if not _JSON_NUMBERS.fullmatch(piece):
            return None
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                values = np.fromstring(piece, dtype=dtype, sep=",")
        except ValueError:  # numpy could not read it all after all: let the ordinary path judge
            return None
        if filled + values.size > count:
            return None
        out[filled : filled + values.size] = values
        filled += values.size
        start = end + 1
    return out if filled == count else None


def _floats_from_text(
    name: str, spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...], text: bytes
) -> np.ndarray | None:
    """The array of a lifted float input; None when it needs the ordinary path."""
    count = math.prod(shape)
    if count == 0 or not shape:
        return None
    structure = text.translate(None, _NUMBER_CHARS)
    nested = structure.startswith(b"[[")  # flat data is allowed for any shape, as in OIP
    if structure != _nesting(shape if nested else (count,)):
        return None
    # numpy reads FP32 and FP64 text directly (through a double, as the ordinary path does).
    values = _read_numbers(
        text.translate(None, b"[]"), dtype if dtype.itemsize >= 4 else np.dtype(np.float64), count
    )
    if values is None:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype, copy=False).reshape(shape)
    if not np.isfinite(array).all():
        raise bad_request(f"input {name!r}: a value is out of range for {spec.datatype}")
    return array


def _as_int(value: Any) -> int | None:
    # bool is an int subclass in Python but never a valid size or dimension.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_infer_request(
    body: bytes | bytearray,
    header_length: int | None,
    signature: ModelSignature,
    *,
    allow_non_finite: bool = False,
    max_rows: int | None = None,
) -> InferRequest:
    """Parse and validate one infer request (see the module doc).

    `max_rows` bounds the first dimension of a model whose inputs are batched (maxBatchSize).
    """
    if header_length is None:
        header = _load_large_json(body) if len(body) > LIFT_JSON_BYTES else _load_json(body)
        binary = memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise bad_request(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = _load_json(view[:header_length]), view[header_length:]
    return parse_infer_header(
        header, binary, signature, allow_non_finite=allow_non_finite, max_rows=max_rows
    )


def parse_infer_header(
    header: Any,
    binary: memoryview,
    signature: ModelSignature,
    *,
    allow_non_finite: bool = False,
    max_rows: int | None = None,
) -> InferRequest:
    """Validate a request given as its JSON document and the binary data that follows it.

    The gRPC protocol calls it too, with its message in the same shape, so that both
    protocols accept and refuse exactly the same tensors.
    """
    if not isinstance(header, dict):
        raise bad_request("the request must be a JSON object")
    # Unknown fields are ignored: clients add their own (KServe's sends "model_name"), and a
    # misspelt required field is still caught as missing.

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("'id' must be a string")
    parameters = header.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request("'parameters' must be an object")
    binary_output_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_output_default, bool):
        raise bad_request("parameters.binary_data_output must be a boolean")

    rows_limit = max_rows if signature.batch_dim_is_dynamic else None
    inputs = _parse_inputs(header.get("inputs"), binary, signature, allow_non_finite, rows_limit)
    outputs = _parse_outputs(header.get("outputs"), signature, binary_output_default)
    rows, batch_key = _batch_shape(inputs, signature)
    return InferRequest(request_id, inputs, outputs, rows, batch_key)


def _parse_inputs(
    raw_inputs: Any,
    binary: memoryview,
    signature: ModelSignature,
    allow_non_finite: bool,
    max_rows: int | None,
) -> dict[str, np.ndarray]:
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request("'inputs' must be a non-empty list")
    parsed: dict[str, np.ndarray] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        name, spec, dtype = _input_header(index, raw, signature, parsed)
        shape = _check_shape(name, raw.get("shape"), spec, max_rows)
        params = raw.get("parameters", {})
        if not isinstance(params, dict):
            raise bad_request(f"input {name!r}: 'parameters' must be an object")
        size_field = params.get("binary_data_size")
        if size_field is not None:
            if "data" in raw:
                raise bad_request(f"input {name!r} has both 'data' and binary_data_size")
            size = _binary_size(name, size_field, len(binary) - offset)
            blob = binary[offset : offset + size]
            offset += size
            if dtype is None:
                array = _strings_from_binary(name, shape, blob)
            else:
                array = _from_binary(name, spec, dtype, shape, blob)
                if not allow_non_finite:
                    _check_finite(name, array)
        elif "data" in raw:
            array = _json_input(name, spec, dtype, shape, raw["data"])
            raw["data"] = None  # its Python objects go now, not after every input is parsed
        else:
            raise bad_request(f"input {name!r} has neither 'data' nor binary_data_size")
        parsed[name] = array
    if offset != len(binary):
        raise bad_request(
            f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims"
        )
    missing = [s.name for s in signature.inputs if s.name not in parsed]
    if missing:
        raise bad_request(f"missing input(s): {', '.join(map(repr, missing))}")
    # ONNX Runtime takes a dict; keep the model's order for a stable batch key.
    return {s.name: parsed[s.name] for s in signature.inputs}


def _input_header(
    index: int, raw: Any, signature: ModelSignature, parsed: dict[str, np.ndarray]
) -> tuple[str, TensorSpec, np.dtype[Any] | None]:
    """The name, the model's spec and the numpy dtype (None for BYTES) of inputs[index]."""
    if not isinstance(raw, dict):
        raise bad_request(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise bad_request(f"inputs[{index}].name must be a string")
    spec = signature.input(name)
    if spec is None:
        expected = ", ".join(repr(s.name) for s in signature.inputs)
        raise bad_request(f"unknown input {name!r}; the model's inputs are {expected}")
    if name in parsed:
        raise bad_request(f"input {name!r} is given twice")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in ALL_DATATYPES:
        raise bad_request(f"input {name!r}: unknown datatype {datatype!r}")
    if datatype != spec.datatype:
        raise bad_request(
            f"input {name!r}: datatype {datatype} does not match the model's {spec.datatype}"
        )
    if spec.dtype is None and datatype != "BYTES":
        raise bad_request(f"input {name!r}: datatype {datatype} is not supported")
    return name, spec, spec.dtype


def _binary_size(name: str, size_field: Any, left: int) -> int:
    size = _as_int(size_field)
    if size is None or size < 0:
        raise bad_request(f"input {name!r}: binary_data_size must be a non-negative int")
    if size > left:
        raise bad_request(
            f"input {name!r}: binary_data_size {size} runs past the end of the body "
            f"({left} bytes left)"
        )
    return size


def _json_input(
    name: str, spec: TensorSpec, dtype: np.dtype[Any] | None, shape: tuple[int, ...], data: Any
) -> np.ndarray:
    if isinstance(data, _LiftedArray):
        if dtype is not None and dtype.kind == "f":
            lifted = _floats_from_text(name, spec, dtype, shape, data.text)
            if lifted is not None:
                return lifted
        data = _load_json(data.text)
    if dtype is None:
        return _strings_from_json(name, shape, data)
    return _from_json(name, spec, dtype, shape, data)


def _check_shape(
    name: str, raw_shape: Any, spec: TensorSpec, max_rows: int | None
) -> tuple[int, ...]:
    if not isinstance(raw_shape, list) or len(raw_shape) > MAX_RANK:
        raise bad_request(f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} ints")
    dims: list[int] = []
    size = 1  # of the non-zero dimensions
    for dim in raw_shape:
        value = _as_int(dim)
        if value is None or value < 0:
            raise bad_request(f"input {name!r}: shape {raw_shape} must hold non-negative ints")
        dims.append(value)
        if value:
            size *= value
    if size > MAX_DIM:
        raise bad_request(
            f"input {name!r}: shape {dims} is too large (each dimension, and the product of "
            f"the non-zero ones, must be at most {MAX_DIM})"
        )
    if max_rows is not None and dims and dims[0] > max_rows:
        raise bad_request(
            f"input {name!r}: {dims[0]} rows are more than maxBatchSize={max_rows} allows "
            "in one request; split it"
        )
    if spec.shape is not None:
        if len(dims) != len(spec.shape):
            raise bad_request(
                f"input {name!r}: shape {dims} has rank {len(dims)}, the model expects "
                f"rank {len(spec.shape)} {list(spec.shape)}"
            )
        for got, want in zip(dims, spec.shape, strict=True):
            if want != -1 and got != want:
                raise bad_request(
                    f"input {name!r}: shape {dims} does not match the model's {list(spec.shape)}"
                )
    return tuple(dims)


def _from_binary(
    name: str, spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...], blob: memoryview
) -> np.ndarray:
    count = math.prod(shape)
    if len(blob) != count * dtype.itemsize:
        raise bad_request(
            f"input {name!r}: binary_data_size {len(blob)} does not match shape {list(shape)} "
            f"of {spec.datatype} ({count * dtype.itemsize} bytes)"
        )
    array = np.frombuffer(blob, dtype=dtype).reshape(shape)
    if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise bad_request(f"input {name!r}: BOOL bytes must be 0 or 1")
    return array


def _strings(shape: tuple[int, ...], items: list[str]) -> np.ndarray:
    # ONNX Runtime takes string tensors as numpy arrays of Python str objects.
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _strings_from_binary(name: str, shape: tuple[int, ...], blob: memoryview) -> np.ndarray:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then bytes."""
    count = math.prod(shape)
    if count * 4 > len(blob):
        raise bad_request(
            f"input {name!r}: binary_data_size {len(blob)} is too small for {count} BYTES "
            "elements (each needs at least its 4-byte length)"
        )
    items: list[str] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(blob):
            raise bad_request(f"input {name!r}: BYTES element {index} runs past its data")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise bad_request(f"input {name!r}: BYTES element {index} runs past its data")
        try:
            items.append(str(blob[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise bad_request(f"input {name!r}: BYTES element {index} is not UTF-8") from None
        offset += length
    if offset != len(blob):
        raise bad_request(
            f"input {name!r}: {len(blob) - offset} bytes follow its {count} BYTES elements"
        )
    return _strings(shape, items)


def _strings_from_json(name: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if not isinstance(data, list):
        raise bad_request(f"input {name!r}: 'data' must be a (flat or nested) list")
    items: list[str] = []
    pending: list[Any] = [data]
    # Flatten without recursion (a client chooses the depth): strings in row-major order.
    while pending:
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(reversed(value))
        elif isinstance(value, str):
            items.append(value)
        else:
            raise bad_request(f"input {name!r}: BYTES data must be strings")
    count = math.prod(shape)
    if len(items) != count:
        raise bad_request(
            f"input {name!r}: shape {list(shape)} needs {count} values, 'data' has {len(items)}"
        )
    return _strings(shape, items)


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise bad_request(f"input {name!r} holds NaN or infinity")


def _from_json(
    name: str, spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...], data: Any
) -> np.ndarray:
    if not isinstance(data, list):
        raise bad_request(f"input {name!r}: 'data' must be a (flat or nested) list")
    try:
        # Let numpy infer the element type first, so that strings, nulls and ragged lists
        # are caught as such instead of being coerced.
        values = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise bad_request(f"input {name!r}: 'data' is not a rectangular array of values") from None
    count = math.prod(shape)
    if values.size != count:
        raise bad_request(
            f"input {name!r}: shape {list(shape)} needs {count} values, 'data' has {values.size}"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    kind = values.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise bad_request(f"input {name!r}: BOOL data must be true/false")
    elif dtype.kind in "iu":
        if kind not in "iu":
            return _exact_ints(name, spec, dtype, shape, data)
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise bad_request(f"input {name!r}: a value is out of range for {spec.datatype}")
    elif kind not in "iuf":
        raise bad_request(f"input {name!r}: {spec.datatype} data must be numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype, copy=False).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        # JSON has no NaN or infinity; 1e400 parses to inf and 1e39 overflows FP32.
        raise bad_request(f"input {name!r}: a value is out of range for {spec.datatype}")
    return array


def _exact_ints(
    name: str, spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...], data: list[Any]
) -> np.ndarray:
    # numpy infers float64 for [0, 2**64 - 1] (losing digits), so integer data that did not
    # come out as an integer array is checked element by element, on Python's exact ints.
    flat = np.array(data, dtype=object).ravel()
    if not all(type(x) is int for x in flat):
        raise bad_request(f"input {name!r}: {spec.datatype} data must be integers in its range")
    try:
        return np.array(flat.tolist(), dtype=dtype).reshape(shape)
    except OverflowError:
        raise bad_request(f"input {name!r}: a value is out of range for {spec.datatype}") from None


def _parse_outputs(
    raw_outputs: Any, signature: ModelSignature, binary_default: bool
) -> tuple[RequestedOutput, ...]:
    if raw_outputs is None:
        return tuple(RequestedOutput(name, binary_default) for name in signature.output_names)
    if not isinstance(raw_outputs, list):
        raise bad_request("'outputs' must be a list")
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise bad_request(f"outputs[{index}] must be an object with a string 'name'")
        name = raw["name"]
        if name not in signature.output_names:
            expected = ", ".join(map(repr, signature.output_names))
            raise bad_request(f"unknown output {name!r}; the model's outputs are {expected}")
        if name in seen:
            raise bad_request(f"output {name!r} is requested twice")
        seen.add(name)
        params = raw.get("parameters", {})
        if not isinstance(params, dict):
            raise bad_request(f"output {name!r}: 'parameters' must be an object")
        if params.get("classification") not in (None, 0):
            raise bad_request(f"output {name!r}: the classification extension is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise bad_request(f"output {name!r}: parameters.binary_data must be a boolean")
        requested.append(RequestedOutput(name, binary))
    return tuple(requested)


def _batch_shape(
    inputs: dict[str, np.ndarray], signature: ModelSignature
) -> tuple[int, Hashable | None]:
    """Rows of the request and the key of requests it can share a batch with."""
    if not signature.batch_dim_is_dynamic:
        return 1, None
    arrays = list(inputs.values())
    rows = arrays[0].shape[0]
    if any(a.shape[0] != rows for a in arrays):
        return rows, None
    return rows, tuple(a.shape[1:] for a in arrays)


# --- responses ----------------------------------------------------------------------------


def _bytes_elements(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor in the binary extension's (and gRPC raw contents') layout."""
    if array.dtype.kind in "OSU":
        return _bytes_elements(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":
        return [
            x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.ravel()
        ]
    # orjson serializes contiguous numeric arrays natively; NaN and infinity become null.
    return np.ascontiguousarray(array).ravel()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> tuple[bytes, int | None]:
    """The response body and, when binary outputs follow the JSON, the JSON's length."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for requested, array in outputs:
        entry: dict[str, Any] = {
            "name": requested.name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if requested.binary:
            blob = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = described
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
