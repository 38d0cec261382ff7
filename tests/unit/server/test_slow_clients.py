"""M5 of issue 17: slow clients are cut off in time and never hold up anyone else's batch.

Real sockets on 127.0.0.1; every loop is bounded and stops by itself.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from .conftest import ServerProcess

HALF_OPEN = 200


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""  # EOF (an answer would also end the wait)
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_connections_trickling_headers_are_closed_after_the_header_timeout(
    start_server, models: dict[str, Path]
) -> None:
    timeout = 1.0
    server: ServerProcess = start_server(models["mlp"], header_timeout_seconds=timeout)
    baseline = _open_fds(server.proc.pid)
    socks: list[socket.socket] = []
    closed_after: dict[int, float] = {}
    try:
        started = time.monotonic()
        for _ in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\n")
            sock.setblocking(False)
            socks.append(sock)
        # One more header byte from each every 100 ms: never a complete header block.
        deadline = started + timeout + 4.0
        while len(closed_after) < HALF_OPEN and time.monotonic() < deadline:
            for i, sock in enumerate(socks):
                if i in closed_after:
                    continue
                if _closed_by_peer(sock):
                    closed_after[i] = time.monotonic() - started
                    continue
                try:
                    sock.send(b"X")
                except OSError:
                    closed_after[i] = time.monotonic() - started
            time.sleep(0.1)
        assert len(closed_after) == HALF_OPEN, f"{HALF_OPEN - len(closed_after)} still open"
        print(f"all {HALF_OPEN} closed within {max(closed_after.values()):.2f} s")
        # The server let go of them too, and still serves.
        deadline = time.monotonic() + 5
        while _open_fds(server.proc.pid) > baseline + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_fds(server.proc.pid) <= baseline + 5
    finally:
        for sock in socks:
            sock.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200
    conn.close()


def test_a_stalled_body_gets_408_after_the_body_timeout(
    start_server, models: dict[str, Path]
) -> None:
    server: ServerProcess = start_server(models["mlp"], body_timeout_seconds=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = b""
        while not answer.endswith(b"}") and time.monotonic() - started < 8:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert b"content-length: %d" % len(payload) in head
        assert b"bodyTimeoutSeconds" in json.loads(payload)["error"].encode()
        assert 0.9 < elapsed < 4, elapsed
        sock.settimeout(5)
        assert sock.recv(1) == b"", "the connection stays open"


def test_a_stalled_upload_never_makes_a_batch_wait(start_server, models: dict[str, Path]) -> None:
    delay_s = 1.0
    server: ServerProcess = start_server(
        models["mlp"], max_batch_size=8, max_batch_delay_ms=delay_s * 1000
    )
    rows = np.ones((1, 10), dtype=np.float32).tolist()
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": rows}]}
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
        # Headers and the first part of a large body, then nothing.
        stalled.sendall(
            b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
            + b'{"inputs": [' * 1000
        )
        time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            conn.request("POST", "/v2/models/model/infer", body=body)
            response = conn.getresponse()
            response.read()
            latencies.append(time.monotonic() - started)
            assert response.status == 200
        conn.close()
    print("latencies with a stalled upload:", [f"{x:.3f}" for x in latencies])
    assert max(latencies) < delay_s / 2, latencies
