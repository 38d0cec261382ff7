"""KServe's own Python client against the real server.

The kserve package lives in the benchmark's venv (bench/server/make_venvs.sh), not in the
project's lock, so this test runs the client there and skips where that venv is absent.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from .conftest import ServerProcess

KSERVE_PY = Path(__file__).resolve().parents[3] / "bench" / ".venv-kserve" / "bin" / "python"

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np, onnxruntime as ort
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def main(url, model_path):
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        rows = np.random.default_rng(4).standard_normal((3, 10)).astype(np.float32)
        expected = ort.InferenceSession(model_path).run(None, {"input": rows})[0]
        assert await client.is_server_ready(url)
        assert await client.is_model_ready(url, "model")
        for binary in (False, True):
            tensor = InferInput("input", [3, 10], "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            request = InferRequest(model_name="model", infer_inputs=[tensor], request_id="k1")
            response = await client.infer(url, request, model_name="model")
            assert response.id == "k1"
            got = response.outputs[0].as_numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        await client.close()
        print("kserve client ok")

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.skipif(not KSERVE_PY.exists(), reason="needs bench/.venv-kserve (make_venvs.sh)")
def test_kserve_client_json_and_binary(start_server, models: dict[str, Path]) -> None:
    server: ServerProcess = start_server(models["mlp"])
    result = subprocess.run(
        [str(KSERVE_PY), "-c", CLIENT, server.url, str(models["mlp"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kserve client ok" in result.stdout
