"""The process group: torchrun's environment (or a plain RANK/WORLD_SIZE worker), or none at all.

gloo on CPU, NCCL on CUDA. The timeout is deliberately a few minutes instead of the default
(10-30 minutes): a worker whose peer is gone should fail fast, with a clear reason, so that the
operator can start a new attempt instead of paying for idle GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from .contracts import DEFAULT_PEER_TIMEOUT_SECONDS, ENV_PEER_TIMEOUT_SECONDS
from .errors import InvalidConfig

_PEER_ERROR_HINTS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "gloo",
    "nccl",
)


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "gloo", "nccl", or "none" for a single process without a group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(environ: Mapping[str, str], key: str, default: int) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidConfig(f"environment {key}={raw!r} is not an integer") from None


def peer_timeout_seconds(environ: Mapping[str, str] = os.environ) -> int:
    seconds = _int_env(environ, ENV_PEER_TIMEOUT_SECONDS, DEFAULT_PEER_TIMEOUT_SECONDS)
    if seconds < 1:
        raise InvalidConfig(f"environment {ENV_PEER_TIMEOUT_SECONDS} must be >= 1")
    return seconds


def cpu_budget() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (a pod's limit)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def configure_threads(environ: Mapping[str, str]) -> None:
    """Split the CPU budget among the processes of this node, unless OMP_NUM_THREADS says.

    torch sizes its pool by the machine's cores, not the pod's limit: with several workers per
    node, or a CPU limit, that oversubscribes the CPUs and small models slow down many-fold.
    """
    if environ.get("OMP_NUM_THREADS"):
        return
    local_world_size = max(1, _int_env(environ, "LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, cpu_budget() // local_world_size))


def setup(environ: Mapping[str, str] = os.environ) -> DistContext:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    world_size = _int_env(environ, "WORLD_SIZE", 1)
    rank = _int_env(environ, "RANK", 0)
    local_rank = _int_env(environ, "LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidConfig(f"environment RANK={rank} WORLD_SIZE={world_size} is inconsistent")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        configure_threads(environ)
    if world_size == 1:
        return DistContext(0, 1, 0, device, "none")
    dist.init_process_group(
        backend=backend,
        timeout=timedelta(seconds=peer_timeout_seconds(environ)),
        device_id=device if device.type == "cuda" else None,
    )
    return DistContext(rank, world_size, local_rank, device, backend)


def teardown(context: DistContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a process that ran collectives with `code`, without interpreter finalization.

    destroy_process_group does not stop gloo's worker threads once DDP has used the group
    (DDP's internals keep references to it), and such a thread may free its last Work object
    late. A Work holds thread-local state with a Python object, so freeing it takes the GIL;
    if the interpreter is already finalizing, CPython ends that thread with pthread_exit,
    whose unwinding through the noexcept ~AsyncWork is std::terminate: "terminate called
    without an active exception", SIGABRT, and the exit code (a permanent 64/65/66 among
    them) is lost. That was the bench's 2-in-3 failure (core: ProcessGroupGloo::runLoop ->
    ~AsyncAllreduceWork -> ~ThreadLocalState -> gil_scoped_acquire -> PyThread_exit_thread ->
    std::terminate). Everything that matters is written and closed by now, so the process
    flushes its streams and leaves at once: no finalization, no thread asked to die.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


# Ranks exchange tensors only, never pickles (broadcast_object_list and its kin unpickle
# whatever a peer sends, which would let anything that reaches the collective port run code).


def broadcast_flag(context: DistContext, flag: bool) -> bool:
    """Rank 0's flag on every rank."""
    if not context.distributed:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=context.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def broadcast_bytes(context: DistContext, data: bytes | None) -> bytes | None:
    """Rank 0's bytes (or None) on every rank: the length first, then the bytes as uint8."""
    if not context.distributed:
        return data
    length = torch.tensor(
        [-1 if data is None or not context.is_main else len(data)],
        dtype=torch.int64,
        device=context.device,
    )
    dist.broadcast(length, src=0)
    size = int(length.item())
    if size < 0:
        return None
    if size == 0:
        return b""
    if context.is_main:
        assert data is not None
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(context.device)
    else:
        payload = torch.empty(size, dtype=torch.uint8, device=context.device)
    dist.broadcast(payload, src=0)
    return bytes(payload.cpu().numpy())


def all_reduce_sum(context: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def is_peer_error(error: BaseException) -> bool:
    """Whether an exception says that a peer vanished or stopped answering."""
    if isinstance(error, dist.DistError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return any(hint in text for hint in _PEER_ERROR_HINTS)
