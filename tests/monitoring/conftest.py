"""Tests of the chart's monitoring: the PrometheusRule's alerts under `promtool test rules`, and
the Grafana dashboard's queries against a real Prometheus scraping a real model server and the
operator's metrics. They need helm (hack/k8s-binaries.sh) and Prometheus (hack/prometheus.sh), so
every test here is marked `chart` like tests/chart: `make test-unit` skips them and
`make test-integration` (which builds both) runs them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.support import bin_dir, binaries_ready


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """The bin directory of the pinned Prometheus (prometheus, promtool)."""
    script = str(ROOT / "hack" / "prometheus.sh")
    if subprocess.run([script, "--check"], check=False).returncode != 0:
        pytest.fail("Prometheus is not built: run `make prometheus` (hack/prometheus.sh)")
    out = subprocess.run([script, "--print-bin-dir"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def helm_dir() -> Path:
    """The bin directory of the pinned helm (and kubectl)."""
    if not binaries_ready():
        pytest.fail("helm is not built: run `make k8s-binaries` (hack/k8s-binaries.sh)")
    return bin_dir()
