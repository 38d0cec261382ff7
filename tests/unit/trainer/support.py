"""Running the real trainer in real processes (plain, under torchrun, or as separate ranks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard_trainer.contracts import (
    METADATA_FILE,
    PROGRESS_JSONL_FILE,
    ArtifactMetadata,
    ProgressRecord,
    TrainingFailure,
    TrainingResult,
    parse_termination_message,
)

ROOT = Path(__file__).resolve().parents[3]


def trainer_env(termination_log: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODELYARD_", "PET_"))
        and key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    # One thread per process: this suite runs on small shared machines, where torch's default
    # (a thread per core in every process) oversubscribes the CPUs.
    env["OMP_NUM_THREADS"] = "1"
    env["MODELYARD_TERMINATION_LOG"] = str(termination_log)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@dataclass
class Run:
    """One finished trainer invocation and what it left behind."""

    name: str
    output: Path
    returncode: int
    stdout: str
    stderr: str
    termination_log: Path

    @property
    def run_dir(self) -> Path:
        return self.output / "local" / self.name / "local" / "g1"

    @property
    def termination_text(self) -> str:
        return self.termination_log.read_text() if self.termination_log.exists() else ""

    @property
    def termination(self) -> TrainingResult | TrainingFailure | None:
        return parse_termination_message(self.termination_text)

    def metadata(self) -> ArtifactMetadata:
        return ArtifactMetadata.model_validate_json((self.run_dir / METADATA_FILE).read_text())

    def progress(self) -> list[ProgressRecord]:
        lines = (self.run_dir / PROGRESS_JSONL_FILE).read_text().splitlines()
        return [ProgressRecord.model_validate_json(line) for line in lines]

    def describe(self) -> str:
        return (
            f"exit {self.returncode}\nstdout:\n{self.stdout[-3000:]}\n"
            f"stderr:\n{self.stderr[-6000:]}"
        )


def write_config(directory: Path, name: str, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def trainer_command(
    config: Path, output: Path, nproc: int = 1, launcher: str = "plain"
) -> list[str]:
    trainer_args = ["--config", str(config), "--output", str(output)]
    if launcher == "plain":
        return [sys.executable, "-m", "modelyard_trainer", *trainer_args]
    torchrun = ["--standalone", f"--nproc-per-node={nproc}"]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *torchrun,
            "-m",
            "modelyard_trainer",
            *trainer_args,
        ]
    return [sys.executable, "-m", "modelyard_trainer.launch", *torchrun, "--", *trainer_args]


def run_trainer(
    tmp: Path,
    name: str,
    config: dict[str, Any],
    *,
    nproc: int = 1,
    launcher: str = "plain",
    output: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> Run:
    config_path = write_config(tmp / "configs", name, config)
    output = output or tmp / f"out-{name}"
    termination_log = tmp / f"termination-{name}-{len(list(tmp.glob('termination-*')))}"
    done = subprocess.run(
        trainer_command(config_path, output, nproc, launcher),
        env=trainer_env(termination_log, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )
    return Run(name, output, done.returncode, done.stdout, done.stderr, termination_log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def result_json(run: Run) -> dict[str, Any]:
    return json.loads(run.stdout.strip().splitlines()[-1])
