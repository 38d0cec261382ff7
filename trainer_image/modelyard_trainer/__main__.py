"""CLI: python -m modelyard_trainer --config FILE --output DIR (alone, or under torchrun).

Every exit path leaves an exit code from the contracts and, in a pod, a termination message:
the result on success (rank 0), the failure otherwise. The config is validated before torch
is imported, so a bad config fails in a moment. Whatever leaves the process on failure (the
termination message, the log lines) is scrubbed of credential values first.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelyard_storage.errors import StorageError
from modelyard_storage.local import local_path
from modelyard_storage.redact import ScrubFilter, scrub
from modelyard_storage.uri import UriError, is_s3, parse_uri

from .config import ConfigError, load_trainer_config
from .contracts import (
    DEFAULT_PVC_MOUNT_ROOT,
    DEFAULT_TERMINATION_LOG,
    ENV_OUTPUT_URI,
    ENV_PVC_MOUNT_ROOT,
    ENV_TERMINATION_LOG,
    ExitCode,
    FailureReason,
    TrainingFailure,
    TrainingResult,
    parse_termination_message,
)
from .errors import InvalidConfig, TrainerError

log = logging.getLogger("modelyard_trainer")


def _rank(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ.get(key) or 0)
    except ValueError:
        return 0


def run_name_from(path: str) -> str:
    """A local run's name: the config file's stem as a DNS label."""
    name = re.sub(r"[^a-z0-9-]+", "-", Path(path).stem.lower()).strip("-")
    return name[:63].strip("-") or "local"


def termination_log(environ: Mapping[str, str]) -> Path | None:
    """Where the termination message goes: the env's path, or Kubernetes' file if it exists.

    Never created on a laptop: /dev/termination-log exists only when the kubelet mounts it.
    """
    configured = environ.get(ENV_TERMINATION_LOG)
    if configured:
        return Path(configured)
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else None


def write_termination(
    message: TrainingResult | TrainingFailure, environ: Mapping[str, str]
) -> None:
    path = termination_log(environ)
    if path is None:
        return
    try:
        # Processes of one pod share the file: the first failure is the root cause.
        if (
            isinstance(message, TrainingFailure)
            and path.is_file()
            and isinstance(
                parse_termination_message(path.read_text(errors="replace")), TrainingFailure
            )
        ):
            return
        path.write_text(message.to_termination_message(), encoding="utf-8")
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", path, error)


def _fail(exit_code: int, reason: FailureReason, message: str, environ: Mapping[str, str]) -> int:
    rank = _rank(environ, "RANK")
    message = scrub(message, environ)
    log.error("%s: %s", reason, message)
    write_termination(
        TrainingFailure(exit_code=exit_code, reason=reason, message=message, rank=rank), environ
    )
    return exit_code


def output_directory(argument: str, environ: Mapping[str, str]) -> Path:
    """The local directory that --output names, parsed like every storage path.

    In a pod --output is the mounted claim of output.uri: it must stay in that claim, and
    output.uri itself must not climb (both InvalidConfig naming the field).
    """
    try:
        declared = environ.get(ENV_OUTPUT_URI)
        if declared:
            parse_uri(declared, "output.uri")
        mount_root = environ.get(ENV_PVC_MOUNT_ROOT) or DEFAULT_PVC_MOUNT_ROOT
        return local_path(argument, mount_root, "--output")
    except UriError as error:
        raise InvalidConfig(str(error)) from None
    except StorageError as error:
        raise InvalidConfig(error.message) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="modelyard-trainer",
        description="Train, evaluate and export a model to ONNX (run under torchrun for DDP).",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="a ModelTraining manifest, or its trainer section, as YAML or JSON",
    )
    parser.add_argument(
        "--output",
        required=True,
        help=(
            "output root, a directory or s3://bucket/prefix; the run's artifacts go to "
            "<output>/<ns>/<name>/<uid>/g<generation>/"
        ),
    )
    return parser.parse_args(argv)


def configure_logging(environ: Mapping[str, str]) -> None:
    """Log lines on stderr, tagged with the rank and scrubbed of credential values."""
    rank = _rank(environ, "RANK")
    logging.basicConfig(
        level=logging.WARNING,
        format=f"modelyard-trainer[{rank}]: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
    log.setLevel(logging.INFO)


def failed(error: Exception, environ: Mapping[str, str]) -> int:
    """Log `error`, write it as the termination message, and return its exit code."""
    if isinstance(error, ConfigError | UriError):
        return _fail(int(ExitCode.CONFIG_INVALID), "InvalidConfig", str(error), environ)
    if isinstance(error, TrainerError):
        return _fail(error.exit_code, error.reason, error.message, environ)
    from .distributed import is_peer_error

    if _rank(environ, "WORLD_SIZE") > 1 and is_peer_error(error):
        message = f"lost contact with the other workers: {error}"
        return _fail(1, "PeerLost", message, environ)
    print(scrub(traceback.format_exc(), environ), file=sys.stderr, flush=True)
    return _fail(1, "Error", f"{type(error).__name__}: {error}", environ)


def succeeded(result: TrainingResult, environ: Mapping[str, str]) -> None:
    """Rank 0's result: the termination message, and one JSON line on stdout."""
    write_termination(result, environ)
    print(result.model_dump_json(by_alias=True, exclude_none=True), flush=True)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = parse_args(argv)
    configure_logging(environ)
    scratch: str | None = None
    try:
        if is_s3(args.output):
            parse_uri(args.output, "--output")
            # Object storage is the output; the run is built in scratch space and mirrored.
            environ = {**environ, ENV_OUTPUT_URI: args.output}
            scratch = tempfile.mkdtemp(prefix="modelyard-output-")
            output = Path(scratch)
        else:
            output = output_directory(args.output, environ)
        config = load_trainer_config(args.config)
        name = run_name_from(args.config)
        result = None
        if _rank(environ, "WORLD_SIZE") <= 1:
            # A single process may answer a rerun of a final run without loading torch; with
            # peers, rank 0 decides (it may be the only one that sees the output volume).
            from .final import final_result

            result = final_result(config, output, environ, name)
        if result is None:
            from .runner import execute

            result = execute(config, output, environ, name)
    except Exception as error:
        return failed(error, environ)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if result is not None:
        succeeded(result, environ)
    return int(ExitCode.SUCCESS)


if __name__ == "__main__":
    code = main()
    if _rank(os.environ, "WORLD_SIZE") > 1:
        from .distributed import exit_process

        exit_process(code)  # a process of a gang must not finalize (see exit_process)
    sys.exit(code)
