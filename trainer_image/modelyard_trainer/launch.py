"""torchrun that keeps the trainer's exit code: python -m modelyard_trainer.launch [...]

torchrun itself exits with 1 whenever a worker fails, which would hide the permanent exit
codes (bad config, diverged loss, failed parity) from the Job's podFailurePolicy. This runs
torchrun's own launcher in-process and exits with the workers' code instead.

Usage: python -m modelyard_trainer.launch [TORCHRUN OPTIONS --] --config FILE --output DIR
       python -m modelyard_trainer.launch [TORCHRUN OPTIONS --] --command PROGRAM [ARGS...]
Without "--", every argument goes to the trainer and torchrun takes its options from the
PET_* environment (PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR, ...).
With --command, each process runs PROGRAM ARGS instead of the trainer (a spec.script).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .contracts import PERMANENT_EXIT_CODES


def exit_code_of(failures: dict[int, int]) -> int:
    """The code to exit with, given each failed local worker's exit code.

    A permanent code wins (it is the root cause; peers then fail with PeerLost); otherwise
    the first nonzero code, which lets the operator retry.
    """
    codes = [code for _, code in sorted(failures.items())]
    for code in codes:
        if code in PERMANENT_EXIT_CODES:
            return code
    for code in codes:
        if code > 0:
            return code
    return 1  # killed by a signal (negative code): transient


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    arguments = list(sys.argv[1:] if argv is None else argv)
    if "--" in arguments:
        split = arguments.index("--")
        launcher, trainer = arguments[:split], arguments[split + 1 :]
    else:
        launcher, trainer = [], arguments
    if trainer[:1] == ["--command"]:
        if len(trainer) < 2:
            print("modelyard_trainer.launch: --command needs a program", file=sys.stderr)
            return 2
        worker = ["--no-python", *trainer[1:]]
    else:
        worker = ["--module", "modelyard_trainer", *trainer]
    options = parse_args([*launcher, *worker])
    try:
        run(options)
    except ChildFailedError as error:
        return exit_code_of({rank: failure.exitcode for rank, failure in error.failures.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
