"""The GPU paths, measured on one machine with an NVIDIA GPU and no Kubernetes (make gpu-check).

Three checks, in well under 10 minutes on one GPU:
  1. the built-in trainer on the GPU against the same configuration on the CPU (every core):
     samples/s ratio, and the test accuracy and loss within a stated tolerance (the GPU side
     trains with mixed precision, as the trainer does on CUDA by default);
  2. the trainer against the textbook PyTorch loop on the GPU (bench/trainer_throughput.py),
     goal >= 0.95x;
  3. the server's ONNX Runtime session of the model trained in (1), with the CUDA execution
     provider against the CPU one, rows/s on batches of 64. It is opened by the server's own
     loader (modelyard_server.model.load_model: its provider selection, session options,
     warm-up) and run in this process, with no HTTP in front: the figure is the runtime's.
     Without onnxruntime-gpu (no CUDAExecutionProvider) the CUDA side is reported as not
     measured.
Trainer figures are the best of --repeats runs, interleaved (other load only slows a run).

--cpu, or a machine where torch.cuda.is_available() is false, runs every step on the CPU with
small sizes instead: it proves the script, not the GPU; the table's header says so, and no
figure in it is a GPU figure. The table goes to stdout and the same figures, as JSON, to
--json. Exit status 0 when every measured goal is met, 3 when one is missed.

    .venv/bin/python bench/gpu_check.py [--cpu] [--json bench/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trainer_throughput

ROOT = Path(__file__).resolve().parents[1]
CUDA_PROVIDER = "CUDAExecutionProvider"
# Sizes per mode: on a GPU, steps big enough that the GPU's per-step overhead does not decide
# the ratios; on the CPU, a few seconds per run.
SIZES = {
    "cuda": {"samples": 400_000, "features": 64, "hidden": 1024, "epochs": 4, "batch": 1024},
    "cpu": {"samples": 4_000, "features": 16, "hidden": 64, "epochs": 2, "batch": 128},
}
SERVER_BATCH = 64
TEXTBOOK_GOAL = 0.95
ACCURACY_TOLERANCE = 0.02
LOSS_TOLERANCE = 0.05


@dataclass
class Row:
    """One line of the table: a figure on the device, its reference, how they compare."""

    check: str
    unit: str
    figure: float | None
    reference: float | None
    comparison: str  # "ratio" (figure / reference) or "difference" (figure - reference)
    value: float | None
    goal: str
    met: bool | None  # None: no goal, or not measured
    note: str = ""


def throughput_row(check: str, unit: str, figure: float | None, reference: float) -> Row:
    value = figure / reference if figure is not None else None
    return Row(check, unit, figure, reference, "ratio", value, "none (reported)", None)


def metric_row(check: str, figure: float, reference: float, tolerance: float) -> Row:
    difference = figure - reference
    met = abs(difference) <= tolerance
    return Row(check, "", figure, reference, "difference", difference, f"|d| <= {tolerance}", met)


def sized(args: argparse.Namespace, device: str) -> argparse.Namespace:
    """The arguments that trainer_throughput's functions read, for one device."""
    return argparse.Namespace(
        **{name: getattr(args, name) for name in SIZES["cpu"]}, threads=args.threads, device=device
    )


def trainer_checks(args: argparse.Namespace, device: str, workdir: Path) -> tuple[list[Row], Path]:
    """Checks 1 and 2; also returns the CPU-trained model file for check 3."""
    on_device, on_cpu = sized(args, device), sized(args, "cpu")
    best: dict[str, tuple[float, dict[str, Any], Path]] = {}
    textbook = 0.0

    def keep(side: str, metadata: dict[str, Any], artifacts: Path) -> None:
        speed = float(metadata["training"]["samplesPerSecond"])
        if side not in best or speed > best[side][0]:
            best[side] = (speed, metadata, artifacts)

    for _ in range(args.repeats):
        keep("device", *trainer_throughput.train_once(on_device, 1, workdir))
        keep("cpu", *trainer_throughput.train_once(on_cpu, 1, workdir))
        textbook = max(textbook, trainer_throughput.run_textbook(on_device, 1, workdir)[0])
    (ours, ours_meta, _), (cpu, cpu_meta, cpu_artifacts) = best["device"], best["cpu"]
    trained_on = ours_meta["training"]["device"]
    if trained_on != device:
        raise SystemExit(f"the trainer ran on {trained_on}, not on {device}")
    side = f"{device} vs cpu"
    rows = [throughput_row(f"trainer samples/s, {side}", "samples/s", ours, cpu)]
    for metric, tolerance in (("testAccuracy", ACCURACY_TOLERANCE), ("testLoss", LOSS_TOLERANCE)):
        figure, reference = ours_meta["metrics"][metric], cpu_meta["metrics"][metric]
        rows.append(metric_row(f"trainer {metric}, {side}", figure, reference, tolerance))
    ratio = ours / textbook
    rows.append(
        Row(
            f"trainer vs textbook loop samples/s, {device}",
            "samples/s",
            ours,
            textbook,
            "ratio",
            ratio,
            f">= {TEXTBOOK_GOAL}",
            ratio >= TEXTBOOK_GOAL,
        )
    )
    return rows, cpu_artifacts / "model.onnx"


def rows_per_second(model_file: Path, provider: str, seconds: float) -> float:
    """Rows/s of the server's session of `model_file` on batches of SERVER_BATCH rows."""
    from modelyard_server.config import ServerSettings
    from modelyard_server.model import load_model, probe_feed

    settings = ServerSettings(
        model_path=str(model_file), execution_provider=provider, max_batch_size=SERVER_BATCH
    )
    model = load_model(settings)
    feed = probe_feed(model.signature, SERVER_BATCH)
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        model.run(feed)
        runs += 1
    return SERVER_BATCH * runs / elapsed


def cuda_provider_missing() -> str | None:
    """Why ONNX Runtime cannot run on CUDA here, or None when it can."""
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        return None
    return "not measured: onnxruntime has no CUDA provider"


def server_check(model_file: Path, device: str, seconds: float) -> Row:
    from modelyard_server.model import LoadError

    cpu = rows_per_second(model_file, "cpu", seconds)
    check = f"server rows/s, batch {SERVER_BATCH}, {device} vs cpu"
    missing = cuda_provider_missing() if device == "cuda" else None
    if missing:
        return Row(check, "rows/s", None, cpu, "ratio", None, "none (reported)", None, missing)
    try:
        figure = rows_per_second(model_file, device, seconds)
    except LoadError as exc:
        note = f"not measured: {exc.reason}: {exc.message}"
        return Row(check, "rows/s", None, cpu, "ratio", None, "none (reported)", None, note)
    return throughput_row(check, "rows/s", figure, cpu)


def header(args: argparse.Namespace, device: str, cuda_note: str) -> list[str]:
    sizes = ", ".join(f"{name} {getattr(args, name)}" for name in SIZES["cpu"])
    import onnxruntime as ort

    lines = [f"CUDA: {cuda_note}; onnxruntime providers: {ort.get_available_providers()}"]
    if device == "cpu":
        lines.append("every figure below was measured on the CPU: it proves the script, not a GPU")
    lines.append(
        f"trainer: MLP, {sizes}, {args.threads} CPU thread(s), best of {args.repeats}; "
        f"server: ONNX Runtime in-process via modelyard_server.model.load_model, no HTTP; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    return lines


def table(rows: list[Row]) -> list[str]:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    layout = "{:<48}  {:>12}  {:>12}  {:>12}  {:>16}  {}"
    lines = [layout.format("check", "figure", "reference", "ratio/diff", "goal", "result")]
    for row in rows:
        digits = 0 if row.unit else 4
        result = {True: "met", False: "MISSED", None: ""}[row.met]
        lines.append(
            layout.format(
                row.check,
                number(row.figure, digits),
                number(row.reference, digits),
                number(row.value, 3 if row.comparison == "ratio" else 4),
                row.goal,
                " ".join(filter(None, [result, row.note])),
            )
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="every step on the CPU, small sizes")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/gpu_check.json")
    parser.add_argument("--repeats", type=int, help="runs per trainer figure (3; 1 with --cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads (every core; 1 with --cpu)")
    parser.add_argument("--seconds", type=float, help="timing per server figure (5; 1 with --cpu)")
    for name in SIZES["cpu"]:
        parser.add_argument(f"--{name}", type=int, help="trainer size (the mode's default)")
    args = parser.parse_args()

    import torch

    if args.cpu:
        device, cuda_note = "cpu", "not used (--cpu)"
    elif torch.cuda.is_available():
        device, cuda_note = "cuda", f"{torch.cuda.get_device_name(0)}"
    else:
        device, cuda_note = "cpu", "absent (torch.cuda.is_available() is false)"
    small = device == "cpu"
    for name, value in SIZES[device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.repeats = args.repeats or (1 if small else 3)
    args.threads = args.threads or (1 if small else os.cpu_count() or 1)
    args.seconds = args.seconds or (1.0 if small else 5.0)

    lines = header(args, device, cuda_note)
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="modelyard-gpu-check-") as workdir:
        rows, model_file = trainer_checks(args, device, Path(workdir))
        rows.append(server_check(model_file, device, args.seconds))
    print("\n".join(table(rows)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": device,
        "cuda": cuda_note,
        "header": lines,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [asdict(row) for row in rows],
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"figures as JSON: {args.json}")
    if any(row.met is False for row in rows):
        sys.exit(3)


if __name__ == "__main__":
    main()
