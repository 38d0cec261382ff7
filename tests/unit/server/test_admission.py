"""Admission control of a real server process: bytes in flight, uploads, and readiness under load.

H1 of issue 17: 32 clients each sending an 8 MiB JSON body of floats must neither push the
server past its memory budget nor starve /v2/health/ready (the kubelet's probe).
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from .conftest import ServerProcess, http_get
from .onnx_models import row_sums, save

MIB = 1024 * 1024
WIDTH = 65536
ROWS = 32  # 32 rows of 65536 "0.5," = 8 MiB of JSON: the worst case of small numbers
CLIENTS = 32
RSS_BUDGET = 1024 * MIB
INFLIGHT = 128 * MIB  # what the default derives from a 1 GiB container limit
READY_BUDGET_S = 1.0


def json_body(rows: int = ROWS, width: int = WIDTH) -> bytes:
    data = b"[" + b",".join([b"[" + b",".join([b"0.5"] * width) + b"]"] * rows) + b"]"
    return (
        b'{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","data":' % (rows, width)
        + data
        + b"}]}"
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """Samples the server's RSS and the latency of /v2/health/ready until stopped."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak_rss = 0
        self.ready_latencies: list[float] = []
        self.ready_failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss), threading.Thread(target=self._ready)]

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_bytes(self.server.proc.pid))
            time.sleep(0.01)

    def _ready(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _ = http_get(self.server.url + "/v2/health/ready", timeout=10)
                if status != 200:
                    self.ready_failures.append(f"status {status}")
            except OSError as exc:
                self.ready_failures.append(repr(exc))
            self.ready_latencies.append(time.monotonic() - started)
            time.sleep(0.05)


def post(port: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v2/models/model/infer", body=body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except (ConnectionError, http.client.HTTPException) as exc:
        # The server may answer 503 and close before the whole body was sent.
        return -1, {}, repr(exc).encode()
    finally:
        conn.close()


def flood(server: ServerProcess, body: bytes, clients: int) -> list[tuple[int, dict, bytes]]:
    results: list[tuple[int, dict, bytes]] = [(0, {}, b"")] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = post(server.port, body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(row_sums(WIDTH), tmp_path_factory.mktemp("admission") / "row_sums.onnx")


def test_32_concurrent_8mib_json_bodies_stay_in_budget(start_server, model: Path) -> None:
    server: ServerProcess = start_server(
        model, max_batch_size=ROWS, max_inflight_bytes=INFLIGHT, max_request_bytes=16 * MIB
    )
    body = json_body()
    assert 8 * MIB <= len(body) < 8 * MIB + 1024
    with Sampler(server) as sampler:
        results = flood(server, body, CLIENTS)
    statuses = sorted(status for status, _, _ in results)
    max_ready = max(sampler.ready_latencies)
    print(
        f"peak RSS {sampler.peak_rss / MIB:.1f} MiB, max ready latency {max_ready:.3f} s "
        f"over {len(sampler.ready_latencies)} probes, statuses {statuses}"
    )
    assert sampler.peak_rss < RSS_BUDGET
    assert not sampler.ready_failures, sampler.ready_failures[:3]
    assert max_ready < READY_BUDGET_S
    # Some were admitted and answered correctly; the excess got 503 with Retry-After.
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}, statuses
    for status, headers, payload in results:
        if status == 200:
            assert b'"data":[' + b",".join([b"32768.0"] * ROWS) + b"]" in payload
        else:
            assert headers["retry-after"] == "1" and b"in flight" in payload, payload
    assert server.proc.poll() is None


def test_body_over_the_limit_gets_413_before_it_is_read(start_server, model: Path) -> None:
    server: ServerProcess = start_server(model, max_batch_size=ROWS, max_request_bytes=MIB)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        # Only the headers: the answer must not wait for a body that never comes.
        conn.putrequest("POST", "/v2/models/model/infer")
        conn.putheader("Content-Length", str(MIB + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert b"maxRequestBytes" in response.read()
    finally:
        conn.close()
    # A streamed (chunked) body is cut off as soon as its count passes the limit.
    status, _, payload = post_chunked(server.port, [b"x" * 65536] * 32)
    assert status == 413, payload


def post_chunked(port: int, chunks: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v2/models/model/infer", body=iter(chunks), encode_chunked=True)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def dynamic_server(start_server, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    path = save(row_sums("width"), tmp_path_factory.mktemp("dynamic") / "row_sums.onnx")
    return start_server(path, max_batch_size=4)


def _infer(server: ServerProcess, body: bytes, **headers: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/model/infer", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read()).get("error", "")
    finally:
        conn.close()


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**63 - 1], [0, 2**40], [0, 2**31, 2]])
def test_absurd_shapes_of_empty_tensors_are_400(
    dynamic_server: ServerProcess, shape: list[int]
) -> None:
    tensor = {"name": "input", "shape": shape, "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": []}]}).encode()
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]}).encode()
    for body, headers in (
        (as_json, {}),
        (header, {"Inference-Header-Content-Length": str(len(header))}),
    ):
        status, error = _infer(dynamic_server, body, **headers)
        assert status == 400 and "too large" in error, (shape, status, error)
    assert "Traceback" not in dynamic_server.log()


def test_more_rows_than_max_batch_size_is_400_naming_the_limit(
    dynamic_server: ServerProcess,
) -> None:
    rows = [[1.0, 2.0]] * 5
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [5, 2], "datatype": "FP32", "data": rows}]}
    ).encode()
    status, error = _infer(dynamic_server, body)
    assert status == 400 and "maxBatchSize=4" in error, error


def test_truncated_gzip_body_is_400(dynamic_server: ServerProcess) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    ).encode()
    whole = gzip.compress(body)
    assert _infer(dynamic_server, whole, **{"Content-Encoding": "gzip"})[0] == 200
    # Without its trailer (CRC and length) the stream still inflates to the whole JSON.
    status, error = _infer(dynamic_server, whole[:-8], **{"Content-Encoding": "gzip"})
    assert status == 400 and "truncated" in error, error
