"""Reading the drift scores straight from a server pod's /metrics (no Prometheus needed).

The operator asks each ready server pod at its IP and HTTP port, with a short timeout, and
reads at most MAX_BYTES of the answer: a pod cannot make it wait or hold much memory. The
text is parsed by prometheus_client's own parser; only the drift families are kept.
"""

from __future__ import annotations

import http.client
import ipaddress
import math

from prometheus_client.parser import text_string_to_metric_families

from modelyard_operator.status.drift import PodDrift
from modelyard_server import contracts
from modelyard_trainer.contracts import MAX_REFERENCE_FEATURES

TIMEOUT_SECONDS = 2.0
# A server with 256 monitored columns answers about 60 KiB; far more is not a server of ours.
MAX_BYTES = 4 * 1024 * 1024
_DRIFT = {
    contracts.METRIC_DRIFT_WINDOW_ROWS,
    contracts.METRIC_DRIFT_FEATURE_PSI,
    contracts.METRIC_DRIFT_PREDICTION_PSI,
}


class ScrapeError(Exception):
    """The pod's /metrics could not be read or parsed; the message says why."""


def fetch_metrics(
    address: str, port: int, timeout: float = TIMEOUT_SECONDS, max_bytes: int = MAX_BYTES
) -> str:
    """GET http://address:port/metrics, bounded in time and size."""
    ipaddress.ip_address(address)  # a pod IP, never a name to resolve
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", contracts.ROUTE_METRICS)
        response = connection.getresponse()
        if response.status != 200:
            raise ScrapeError(f"/metrics answered {response.status}")
        body = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise ScrapeError(f"/metrics unreadable ({type(exc).__name__})") from None
    finally:
        connection.close()
    if len(body) > max_bytes:
        raise ScrapeError(f"/metrics is over {max_bytes} bytes")
    return body.decode("utf-8", errors="replace")


def drift_of(pod: str, text: str) -> PodDrift:
    """The drift samples of one pod's exposition (all empty when it exports none)."""
    rows, prediction = 0, None
    features: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name not in _DRIFT:
                continue
            for sample in family.samples:
                if not math.isfinite(sample.value):
                    continue
                if sample.name == contracts.METRIC_DRIFT_WINDOW_ROWS:
                    rows = int(sample.value)
                elif sample.name == contracts.METRIC_DRIFT_FEATURE_PSI:
                    # A server monitors at most this many columns; more is not ours to trust.
                    if len(features) < MAX_REFERENCE_FEATURES:
                        features[sample.labels.get("feature", "")] = float(sample.value)
                else:
                    prediction = float(sample.value)
    except ValueError as exc:
        # The parser's message quotes the offending line: only its type is kept.
        return PodDrift(pod, error=f"/metrics unparsable ({type(exc).__name__})")
    return PodDrift(pod, rows, features, prediction)


def scrape_drift(pod: str, address: str, port: int) -> PodDrift:
    """One pod's drift scores, or a PodDrift that says why there are none."""
    try:
        return drift_of(pod, fetch_metrics(address, port))
    except (ScrapeError, ValueError) as exc:
        return PodDrift(pod, error=str(exc) if isinstance(exc, ScrapeError) else "bad pod IP")
