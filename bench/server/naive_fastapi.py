"""Contender (c): the naive server, a FastAPI endpoint that calls session.run per request.

Runs in bench/.venv-kserve:
    MODEL=PATH uvicorn naive_fastapi:app --port PORT --no-access-log
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["MODEL"], options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict[str, object]:
    body = await request.json()
    tensor = body["inputs"][0]
    rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    result = session.run(None, {input_name: rows})[0]
    return {
        "model_name": name,
        "outputs": [
            {
                "name": "output",
                "shape": list(result.shape),
                "datatype": "FP32",
                "data": result.ravel().tolist(),
            }
        ],
    }
