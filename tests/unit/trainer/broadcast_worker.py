"""One rank of test_rank_zero_broadcasts_tensors_to_its_peer: RANK/WORLD_SIZE/MASTER_* set.

Rank 0 broadcasts flags and bytes; every rank writes what it holds afterwards to argv[1].
"""

from __future__ import annotations

import hashlib
import json
import sys

from modelyard_trainer import distributed


def main(out: str) -> None:
    context = distributed.setup()
    main_rank = context.is_main
    payload = bytes(range(256)) * (3 << 12)  # 3 MiB, every byte value
    try:
        flags = [
            distributed.broadcast_flag(context, main_rank),
            distributed.broadcast_flag(context, not main_rank),
        ]
        none = distributed.broadcast_bytes(context, None if main_rank else b"ignored")
        empty = distributed.broadcast_bytes(context, b"" if main_rank else None)
        data = distributed.broadcast_bytes(context, payload if main_rank else None)
    finally:
        distributed.teardown(context)
    assert data is not None and empty is not None
    document = {
        "flags": flags,
        "none": none,
        "empty": empty.decode(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "expected_sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(data),
    }
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(document, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    distributed.exit_process(0)
