"""Regenerate the committed protobuf stubs of the gRPC Open Inference Protocol.

    python server_image/gen_grpc_stubs.py [--out DIR]

Writes inference_pb2.py and inference_pb2.pyi (messages only: the service is registered by
hand in modelyard_server/grpc_server.py, so no grpc_tools plugin output is needed) next to
inference.proto, or into DIR. The stubs are committed so that the image needs no protoc;
tests/unit/server/test_grpc_stubs.py fails when they differ from what this script writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PACKAGE_DIR = Path(__file__).resolve().parent / "modelyard_server" / "grpc_oip"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        [
            "protoc",
            f"--proto_path={PACKAGE_DIR}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            str(PACKAGE_DIR / "inference.proto"),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
