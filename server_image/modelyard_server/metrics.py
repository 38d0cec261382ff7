"""Prometheus metrics of the server (names from contracts, so the operator can refer to them)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from modelyard_server import contracts

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _base(name: str, suffix: str = "") -> str:
    # prometheus-client appends _total to counters itself.
    return name.removesuffix(suffix) if suffix else name


class ServerMetrics:
    """All metrics of one server process, in their own registry."""

    def __init__(self, model_name: str) -> None:
        # The *_created series double the exposition and no dashboard uses them.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.model = model_name
        r = self.registry
        self.requests = Counter(
            _base(contracts.METRIC_REQUESTS_TOTAL, "_total"),
            "Inference requests by model and HTTP status code.",
            ["model", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            contracts.METRIC_REQUEST_DURATION,
            "Inference request latency from the first byte read to the response, in seconds.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.inference_seconds = Histogram(
            contracts.METRIC_INFERENCE_DURATION,
            "ONNX Runtime run time of one batch (failed runs included), in seconds.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.batch_size = Histogram(
            contracts.METRIC_BATCH_SIZE,
            "Rows per ONNX Runtime call.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.queue_depth = Gauge(
            contracts.METRIC_QUEUE_DEPTH,
            "Inference requests waiting for the model.",
            ["model"],
            registry=r,
        ).labels(model_name)
        self.inflight = Gauge(
            contracts.METRIC_INFLIGHT_REQUESTS,
            "Inference requests being handled (reading, queued, running or answering).",
            ["model"],
            registry=r,
        ).labels(model_name)
        self.load_seconds = Gauge(
            contracts.METRIC_MODEL_LOAD_SECONDS,
            "Time taken to verify, load and warm up the model, in seconds.",
            ["model"],
            registry=r,
        ).labels(model_name)
        self.dynamic_batching = Gauge(
            contracts.METRIC_DYNAMIC_BATCHING,
            "1 when requests are batched together, 0 when each runs alone.",
            ["model"],
            registry=r,
        ).labels(model_name)
        self.ready = Gauge(
            contracts.METRIC_MODEL_READY,
            "1 when the model is ready to serve, else 0.",
            ["model"],
            registry=r,
        ).labels(model_name)
        self._by_code: dict[tuple[str, int], Counter] = {}

    def count(self, model: str, code: int) -> None:
        key = (model, code)
        child = self._by_code.get(key)
        if child is None:
            child = self._by_code[key] = self.requests.labels(model, str(code))
        child.inc()
