"""The model's whole life on one machine, without a cluster: what `make demo` runs until the
local Kubernetes path lands.

1. trains digits with 2-process DDP (torchrun, gloo), evaluates it, exports and verifies ONNX;
2. starts the inference server on the artifact and waits until it is ready;
3. sends the digits images through a standard Open Inference Protocol client (tritonclient,
   binary tensors) and compares the answers with ONNX Runtime in-process.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import tritonclient.http as oip
from sklearn.datasets import load_digits

from modelyard_server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train(workdir: Path) -> dict[str, object]:
    step("training digits: 2 DDP processes (torchrun, gloo on CPU)")
    command = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "modelyard_trainer",
        "--config",
        str(ROOT / "deploy/samples/digits.yaml"),
        "--output",
        str(workdir),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"training failed with exit code {done.returncode}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    return result


def serve(model: Path, port: int) -> subprocess.Popen[bytes]:
    step(f"serving {model.name} on 127.0.0.1:{port}")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard_server",
            "--model",
            str(model),
            "--name",
            "digits",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    )
    client = oip.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready("digits"):
                return server
        except Exception:  # not listening yet
            pass
        if server.poll() is not None:
            sys.exit("the server exited before it was ready")
        time.sleep(0.2)
    server.terminate()
    sys.exit("the server did not become ready within 60 s")


def query(model: Path, port: int, metrics: dict[str, float]) -> None:
    step("inference through the Open Inference Protocol (tritonclient, binary tensors)")
    client = oip.InferenceServerClient(f"127.0.0.1:{port}")
    metadata = client.get_model_metadata("digits")
    name, datatype = metadata["inputs"][0]["name"], metadata["inputs"][0]["datatype"]
    digits = load_digits()
    rows = digits.data.astype(np.float32)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    answers, directs = [], []
    # The server refuses a request of more rows than its maxBatchSize (32 by default); ONNX
    # Runtime in-process gets the same batches (its sums depend on the batch's size).
    for batch in np.array_split(rows, -(-len(rows) // ServerConfig().max_batch_size)):
        request = oip.InferInput(name, list(batch.shape), datatype)
        request.set_data_from_numpy(batch, binary_data=True)
        answers.append(client.infer("digits", [request]).as_numpy(metadata["outputs"][0]["name"]))
        directs.append(session.run(None, {name: batch})[0])
    answer, direct = np.concatenate(answers), np.concatenate(directs)
    served = answer.argmax(axis=1)
    print(f"first predictions: {served[:12].tolist()}  (labels {digits.target[:12].tolist()})")
    print(f"served == ONNX Runtime in-process: {bool(np.allclose(answer, direct, atol=1e-5))}")
    print(f"accuracy on all 1797 images:      {float((served == digits.target).mean()):.4f}")
    print(f"held-out test accuracy (trainer): {metrics.get('test_accuracy', float('nan')):.4f}")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-demo-"))
    try:
        result = train(workdir)
        model = Path(str(result["artifactUri"]).removeprefix("file://")) / str(result["modelFile"])
        port = free_port()
        server = serve(model, port)
        try:
            query(model, port, dict(result.get("metrics") or {}))  # type: ignore[call-overload]
        finally:
            server.terminate()
            server.wait(timeout=30)
        step(f"done; artifacts were in {workdir}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
