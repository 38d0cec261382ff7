"""The chart's Grafana dashboard against a real Prometheus: it scrapes a real model server
(started on 127.0.0.1 with a small ONNX model, fed real inference traffic) and the operator's
metrics (tests/monitoring/operator_metrics.py), and every query of every panel of the dashboard
that the chart ships must return data through Prometheus' HTTP API."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.chart.test_chart import one, render
from tests.conftest import ROOT
from tests.unit.server.conftest import ServerProcess, free_port, http_get
from tests.unit.server.onnx_models import mlp, save

SCRAPE_SECONDS = 1
# What Grafana puts for its variables; a variable missing here fails the test by name, so a
# panel using a new one is not silently left unevaluated.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
REQUESTS = 200  # inference requests in all
ROUNDS = 5


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, PromQL with Grafana's variables substituted) of every panel."""
    queries = []
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            unknown = re.findall(r"\$\{?\w+", expr)
            assert not unknown, f"panel {panel['title']!r} uses unknown variables {unknown}"
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


@pytest.fixture(scope="module")
def dashboard(helm_dir: Path) -> dict[str, Any]:
    config_map = one(render(helm_dir, "monitoring.dashboard.enabled=true"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    loaded: dict[str, Any] = json.loads(config_map["data"]["modelyard.json"])
    # The ConfigMap carries the file as it is.
    assert loaded == json.loads((ROOT / "charts/modelyard/dashboards/modelyard.json").read_text())
    return loaded


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env}
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()}"
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not up after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("server")
    model = save(mlp([10, 20, 10], seed=1), root / "mlp.onnx")
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_SERVER_")}
    env |= {
        "MODELYARD_SERVER_INTRA_OP_THREADS": "1",
        "MODELYARD_SERVER_MODEL_NAME": "iris",
        "MODELYARD_SERVER_GRPC_PORT": str(grpc_port),
    }
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "modelyard_server",
                "--model", str(model),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--termination-log", str(root / "termination-log"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    server = ServerProcess(proc, port, log, root / "termination-log", env, grpc_port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = _start([sys.executable, "-m", "tests.monitoring.operator_metrics", str(port)], log)
    try:
        _wait_for(f"http://127.0.0.1:{port}/metrics", proc, log)
        yield port
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_bin: Path,
    model_server: ServerProcess,
    operator_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "modelyard-server",
                "static_configs": [{"targets": [model_server.hostport]}],
            },
            {
                "job_name": "modelyard-operator",
                "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
            },
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = root / "prometheus.log"
    proc = _start(
        [
            str(prometheus_bin / "prometheus"),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url, timeout=10)
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{expr}: {body.decode()}"
    assert answer["data"]["resultType"] == "vector", expr
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def _send_traffic(server: ServerProcess) -> None:
    """REQUESTS inference requests in ROUNDS rounds a scrape apart, 8 clients at once (so the
    server batches): every counter, including those created by the first request, then rises
    between two samples."""
    rng = np.random.default_rng(7)

    def infer(i: int) -> int:
        rows = rng.standard_normal((1 + i % 16, 10)).astype(np.float32)
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.tolist(),
                }
            ]
        }
        return httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        for _ in range(ROUNDS):
            codes = list(pool.map(infer, range(REQUESTS // ROUNDS)))
            assert codes == [200] * len(codes)
            time.sleep(2 * SCRAPE_SECONDS)


def _wait_scraped(prometheus: str, timeout: float = 30) -> None:
    """Until Prometheus has scraped every target once, so that the traffic comes after a sample."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_query(prometheus, "up == 1")) == 2:
            return
        time.sleep(SCRAPE_SECONDS / 4)
    raise AssertionError(f"targets not scraped: {_query(prometheus, 'up')}")


def test_the_dashboard_has_the_panels_issue_22_asks_for(dashboard: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in _panels(dashboard)}
    assert {
        "Request rate",
        "Error rate (5xx share)",
        "Request latency p50 / p99",
        "Batch size",
        "Queue depth and in-flight requests",
        "Ready replicas",
        "Model load time",
        "Reconciles",
        "Reconcile latency p50 / p99",
        "Queue wait p99",
        "Resources by phase",
    } <= titles


def test_every_panel_query_has_data_in_a_real_prometheus(
    dashboard: dict[str, Any], model_server: ServerProcess, prometheus: str
) -> None:
    queries = dashboard_queries(dashboard)
    _wait_scraped(prometheus)
    _send_traffic(model_server)
    sent = time.monotonic()
    # Until each query has a finite sample: the last scrapes after the traffic land within
    # seconds, and every rate window (1m) still holds the traffic for the whole wait.
    missing = dict(queries)
    deadline = sent + 30 * SCRAPE_SECONDS
    while missing and time.monotonic() < deadline:
        missing = {
            name: expr for name, expr in missing.items() if not _has_data(_query(prometheus, expr))
        }
        time.sleep(SCRAPE_SECONDS)
    answers = {name: _query(prometheus, expr) for name, expr in missing.items()}
    assert not missing, f"panels without data: {json.dumps(answers, indent=1)}"
