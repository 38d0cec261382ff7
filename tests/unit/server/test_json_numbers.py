"""Large JSON bodies read their float arrays straight from the text (protocol._load_large_json).

That path must give exactly what the ordinary one (orjson, then numpy) gives, and refuse
exactly what it refuses: checked here on many small bodies with the threshold lowered to 0.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard_server import protocol
from modelyard_server.errors import RequestError
from modelyard_server.signature import ModelSignature, TensorSpec

SIGNATURES = {
    dt: ModelSignature(
        inputs=(TensorSpec("input", dt, (-1, 3)),), outputs=(TensorSpec("out", dt, (-1, 3)),)
    )
    for dt in ("FP32", "FP64", "FP16", "INT64")
}

valid_numbers = (
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(json.dumps)
    | st.integers(-(2**40), 2**40).map(str)
    | st.sampled_from(["0", "-0", "1e5", "1E+05", "-2.5e-3", "0.5", "1e39", "1e400", "65504"])
)
odd_numbers = st.sampled_from(
    ["+1", ".5", "1.", "01", "-01", "1e", "1e+", "-", "1-2", "1e5e", "", " ", "1 2", "0x1",
     "NaN", "true", '"1"', "null", "[1]", "1..2", "--1", "e5", "1.e5", "1e-", "1e+-5", "5-",
     "1.5.5", "-.5", "0.", "00", "1,", ",1", "1e5.5", "2E-0", "-0.0e+00"]
)  # fmt: skip
spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    datatype = draw(st.sampled_from(sorted(SIGNATURES)))
    rows = draw(st.integers(0, 4))
    tokens = [draw(valid_numbers) for _ in range(rows * 3)]
    if tokens and draw(st.booleans()):
        tokens[draw(st.integers(0, len(tokens) - 1))] = draw(odd_numbers)
    pad = [draw(spaces) for _ in range(len(tokens))]
    items = [f"{p}{t}{p}" for p, t in zip(pad, tokens, strict=True)]
    if draw(st.booleans()):
        data = "[" + ",".join(items) + "]"
    else:
        data = (
            "["
            + ",".join("[" + ",".join(items[i : i + 3]) + "]" for i in range(0, len(items), 3))
            + "]"
        )
    shape = draw(st.sampled_from([[rows, 3], [rows, 3], [rows + 1, 3], [rows * 3], [1, rows * 3]]))
    # The id holds '"data": [' too: only the real key may be lifted.
    tensor = f'{{"name": "input", "datatype": "{datatype}", "shape": {json.dumps(shape)}'
    if draw(st.booleans()):  # a "data" array where no tensor data belongs
        tensor += ', "parameters": {"data": [1, 2.5]}'
    tensor += f', "data"{draw(spaces)}:{draw(spaces)}{data}}}'
    body = '{"id": "a\\"data\\": [1]", "inputs": [' + tensor + "]}"
    if draw(st.booleans()):
        body = body[:-1] + ', "data": [[0], [1]]}'
    if draw(st.integers(0, 5)) == 0:  # broken JSON, cut anywhere
        body = body[: draw(st.integers(0, len(body) - 1))]
    return datatype, body.encode()


def _outcome(body: bytes, datatype: str) -> tuple[str, Any]:
    try:
        request = protocol.parse_infer_request(body, None, SIGNATURES[datatype])
    except RequestError as exc:
        return "error", exc.status
    array = request.inputs["input"]
    # Values, not bytes: JSON's integer -0 is 0 for orjson and -0.0 for strtod.
    return "ok", (array.dtype.str, array.shape, array.astype(np.float64).tolist())


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(bodies())
def test_lifted_numbers_parse_exactly_like_orjson(case: tuple[str, bytes]) -> None:
    datatype, body = case
    ordinary = _outcome(body, datatype)
    saved = protocol.LIFT_JSON_BYTES, protocol.NUMBERS_PIECE
    for piece in (1, 7, 1 << 20):  # pieces cut at every comma, some, or none
        protocol.LIFT_JSON_BYTES, protocol.NUMBERS_PIECE = 0, piece
        try:
            lifted = _outcome(body, datatype)
        finally:
            protocol.LIFT_JSON_BYTES, protocol.NUMBERS_PIECE = saved
        assert lifted == ordinary, (piece, body)


def test_a_large_float_body_is_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Proof that the fast path is taken (the equivalence above would hold without it too).
    rows = np.random.default_rng(1).standard_normal((50000, 3)).astype(np.float32)
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [50000, 3], "data": rows.tolist()}
            ]
        }
    ).encode()
    assert len(body) > protocol.LIFT_JSON_BYTES
    monkeypatch.setattr(protocol, "_from_json", None)  # the ordinary path would fail now
    request = protocol.parse_infer_request(body, None, SIGNATURES["FP32"])
    np.testing.assert_array_equal(request.inputs["input"], rows)
