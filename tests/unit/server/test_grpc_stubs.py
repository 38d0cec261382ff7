"""The committed protobuf stubs are what protoc makes of the committed .proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STUBS = ROOT / "server_image" / "modelyard_server" / "grpc_oip"


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    script = ROOT / "server_image" / "gen_grpc_stubs.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True)
    for name in ("inference_pb2.py", "inference_pb2.pyi"):
        assert (tmp_path / name).read_text() == (STUBS / name).read_text(), (
            f"{name} is stale: run python server_image/gen_grpc_stubs.py"
        )
