"""Contender (d), the limit: ONNX Runtime in-process on batched inputs, no HTTP.

    python ort_inprocess.py --model PATH --batch 64 --seconds 5
prints one JSON line: rows/s and the p50/p99 latency of one batched call.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    rows = np.random.default_rng(0).standard_normal((args.batch, spec.shape[1])).astype(np.float32)
    feed = {spec.name: rows}
    for _ in range(20):
        session.run(None, feed)
    latencies = []
    end = time.perf_counter() + args.seconds
    while (now := time.perf_counter()) < end:
        session.run(None, feed)
        latencies.append(time.perf_counter() - now)
    total = sum(latencies)
    print(
        json.dumps(
            {
                "rows_per_s": args.batch * len(latencies) / total,
                "requests_per_s": len(latencies) / total,
                "p50_ms": float(np.percentile(latencies, 50) * 1000),
                "p99_ms": float(np.percentile(latencies, 99) * 1000),
            }
        )
    )


if __name__ == "__main__":
    main()
