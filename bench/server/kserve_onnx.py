"""Contender (b): KServe's Python model server with a custom Model that calls onnxruntime.

Runs in bench/.venv-kserve (see make_venvs.sh):
    python kserve_onnx.py --model PATH --http_port PORT
It is configured as generously as we can: no gRPC server, no per-request log lines.
"""

from __future__ import annotations

import argparse
import logging

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    async def predict(
        self, payload: InferRequest, headers=None, response_headers=None
    ) -> InferResponse:
        rows = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        result = self.session.run(None, {self.input_name: rows})[0]
        output = InferOutput(name=self.output_name, shape=list(result.shape), datatype="FP32")
        output.set_data_from_numpy(result, binary_data=False)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[output]
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", default="model")
    args, _ = parser.parse_known_args()  # kserve parses its own flags (--http_port, ...)
    logging.basicConfig(level=logging.WARNING)
    server = kserve.ModelServer(enable_grpc=False, enable_latency_logging=False, workers=1)
    server.start([OnnxModel(args.name, args.model)])
