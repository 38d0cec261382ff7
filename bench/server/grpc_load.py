"""Closed-loop gRPC load for the serving benchmark: `--concurrency` calls always in flight.

    python grpc_load.py --target HOST:PORT --width 10 --concurrency 16 --seconds 10

One ModelInfer request (one FP32 row, raw_input_contents, as tritonclient.grpc sends it),
serialized once and sent as bytes on one channel (HTTP/2 multiplexes the calls), so that the
client spends as little CPU as possible per call. Prints JSON: requests_per_s, p50_ms,
p99_ms, errors. A Python client on one core is slower than wrk: at high concurrency it may
be the limit, not the server (compare the server's CPU per request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(width: int) -> bytes:
    row = np.random.default_rng(7).standard_normal((1, width)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="model")
    request.inputs.add(name="input", datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(row.tobytes())
    return request.SerializeToString()


async def run(target: str, width: int, concurrency: int, seconds: float) -> dict[str, float]:
    body = request_bytes(width)
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        await call(body, timeout=10)  # connected and served once before the clock starts
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < deadline:
                try:
                    await call(body, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    a = parser.parse_args()
    print(json.dumps(asyncio.run(run(a.target, a.width, a.concurrency, a.seconds))))


if __name__ == "__main__":
    main()
