"""The operator understands the trainer and the server without importing torch or onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys

# boto3: object storage is the trainer's and the fetcher's business; the operator only parses URIs.
HEAVY = ["torch", "onnxruntime", "onnx", "numpy", "sklearn", "boto3", "botocore"]


def test_operator_import_loads_no_ml_library() -> None:
    code = (
        "import json, sys\n"
        "import modelyard_operator, modelyard_operator.api, modelyard_operator.api.crd\n"
        "import modelyard_operator.builders.training, modelyard_operator.builders.deployment\n"
        "import modelyard_operator.status.training, modelyard_operator.status.deployment\n"
        "import modelyard_trainer.config, modelyard_trainer.contracts\n"
        "import modelyard_server.config, modelyard_server.contracts\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == []
