"""Serving throughput and latency, side by side, on one machine and model.

Contenders, each a single server process pinned to one core (taskset), driven by wrk pinned
to another core, at concurrency 1, 16 and 64, with one-row requests:
  modelyard        this server, JSON requests
  modelyard-bin    this server, binary tensor extension (what the Triton client sends)
  modelyard-grpc   this server over gRPC (raw_input_contents), driven by grpc_load.py, a
                   Python client on the wrk core: at high concurrency it may be the limit
  modelyard-drift  this server, JSON requests, with drift monitoring on: a metadata.json
                   beside the model holds a training reference (as the trainer writes it)
                   for every input column (at most 256) and the first output column; the
                   other modelyard contenders run with drift monitoring off
  kserve           KServe's Python model server, custom Model calling onnxruntime
  naive            a FastAPI endpoint that calls session.run per request
  onnxruntime      the limit: ONNX Runtime in-process on batches of 1, 16, 64 rows, no HTTP
Models: the 10-20-10 MLP and a 784-1024-1024-10 MLP (onnx.helper, seeded random weights).

Prerequisites: `bench/server/make_venvs.sh` (KServe/FastAPI venv and wrk). Run:
    .venv/bin/python bench/server_throughput.py [--duration 10]
The cost of drift monitoring alone (on vs off, alternating order, medians of the rounds):
    .venv/bin/python bench/server_throughput.py --contenders modelyard modelyard-drift --rounds 4
Figures go to stdout and bench/results/server_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench" / "server"
RESULTS = ROOT / "bench" / "results"
KSERVE_PY = ROOT / "bench" / ".venv-kserve" / "bin" / "python"
sys.path.insert(0, str(HERE))

from onnx_mlp import mlp, save  # noqa: E402

MODELS = {"mlp-10-20-10": [10, 20, 10], "mlp-784-1024-1024-10": [784, 1024, 1024, 10]}
CONTENDERS = [
    "modelyard",
    "modelyard-drift",
    "modelyard-bin",
    "modelyard-grpc",
    "kserve",
    "naive",
    "onnxruntime",
]
# Rows of the synthetic "training split" that the drift reference is computed from.
REFERENCE_ROWS = 20_000


@dataclass
class Point:
    model: str
    contender: str
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time the server process used per request (all its threads): robust to other
    # load on the machine, unlike wall-clock throughput. 1000 / cpu_ms_per_request is the
    # request rate one exclusive core would sustain.
    cpu_ms_per_request: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def request_body(width: int, binary: bool) -> tuple[bytes, dict[str, str]]:
    row = np.random.default_rng(7).standard_normal((1, width)).astype(np.float32)
    tensor: dict[str, object] = {"name": "input", "shape": [1, width], "datatype": "FP32"}
    if not binary:
        tensor["data"] = row.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    tensor["parameters"] = {"binary_data_size": row.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + row.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def wrk_script(workdir: Path, tag: str, body: bytes, headers: dict[str, str]) -> Path:
    body_path = workdir / f"{tag}.body"
    body_path.write_bytes(body)
    lines = [
        f'local f = assert(io.open("{body_path}", "rb"))',
        'wrk.method = "POST"',
        'wrk.body = f:read("*all")',
        "f:close()",
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script = workdir / f"{tag}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(cpu: str, url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    cmd = [
        "taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--latency", "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        result[f"p{pct}_ms"] = _ms(re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    result["errors"] = errors
    return result


def run_grpc_load(
    cpu: str, target: str, width: int, connections: int, seconds: float
) -> dict[str, float]:
    cmd = [
        "taskset", "-c", cpu, sys.executable, str(HERE / "grpc_load.py"), "--target", target,
        "--width", str(width), "--concurrency", str(connections), "--seconds", str(seconds),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    return dict(json.loads(out.stdout))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_command(
    contender: str, model: Path, port: int, grpc_port: int, max_batch: int
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if contender.startswith("modelyard"):
        env.update(
            MODELYARD_SERVER_INTRA_OP_THREADS="1",
            MODELYARD_SERVER_INTER_OP_THREADS="1",
            MODELYARD_SERVER_MAX_BATCH_SIZE=str(max_batch),
            MODELYARD_SERVER_GRPC_PORT=str(grpc_port),
            MODELYARD_SERVER_DRIFT_WINDOW_ROWS="10000" if contender == "modelyard-drift" else "0",
        )
        cmd = [sys.executable, "-m", "modelyard_server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    elif contender == "kserve":
        cmd = [str(KSERVE_PY), str(HERE / "kserve_onnx.py"), "--model", str(model),
               "--http_port", str(port)]  # fmt: skip
    elif contender == "naive":
        env["MODEL"] = str(model)
        cmd = [str(KSERVE_PY), "-m", "uvicorn", "naive_fastapi:app", "--app-dir", str(HERE),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--no-access-log", "--log-level", "warning"]  # fmt: skip
    else:
        raise ValueError(contender)
    return cmd, env


def with_reference(model: Path, width: int, directory: Path) -> Path:
    """A copy of `model` in `directory` with a metadata.json holding its drift reference."""
    import hashlib

    import onnxruntime as ort

    from modelyard_trainer.contracts import (
        MAX_REFERENCE_FEATURES,
        DriftReference,
        FeatureReference,
        OutputReference,
    )
    from modelyard_trainer.reference import numeric_histogram

    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "model.onnx"
    copy.write_bytes(model.read_bytes())
    # The requests' rows are standard normal too: the window scores no drift, as in production.
    train = np.random.default_rng(1).standard_normal((REFERENCE_ROWS, width)).astype(np.float32)
    (output,) = ort.InferenceSession(str(copy)).run(None, {"input": train})
    reference = DriftReference(
        rows=REFERENCE_ROWS,
        features_total=width,
        features=[
            FeatureReference(name=f"x{i}", column=i, **numeric_histogram(train[:, i]).model_dump())
            for i in range(min(width, MAX_REFERENCE_FEATURES))
        ],
        prediction=OutputReference(output="output", **numeric_histogram(output[:, 0]).model_dump()),
    )
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    metadata = {"files": {copy.name: {"sha256": digest}}, "reference": reference.model_dump()}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return copy


def bench_server(
    contender: str, name: str, model: Path, width: int, args: argparse.Namespace, workdir: Path
) -> list[Point]:
    port, grpc_port = free_port(), free_port()
    cmd, env = server_command(contender, model, port, grpc_port, args.max_batch_size)
    log = (workdir / f"{contender}-{name}.log").open("wb")
    proc = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, *cmd], env=env, stdout=log, stderr=log
    )
    points = []
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc)
        if contender == "modelyard-drift":
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                assert b"modelyard_server_drift_window_rows" in page.read(), "drift is off"
        body, headers = request_body(width, binary=contender == "modelyard-bin")
        url = f"http://127.0.0.1:{port}/v2/models/model/infer"
        check = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(check, timeout=10) as response:
            assert response.status == 200, response.status
        script = wrk_script(workdir, f"{contender}-{name}", body, headers)
        target = f"127.0.0.1:{grpc_port}"

        def load(c: int, seconds: float) -> dict[str, float]:
            if contender == "modelyard-grpc":
                return run_grpc_load(args.client_cpu, target, width, c, seconds)
            return run_wrk(args.client_cpu, url, script, c, seconds)

        load(16, args.warmup)
        for c in args.concurrency:
            cpu_before = cpu_seconds(proc.pid)
            r = load(c, args.duration)
            cpu = cpu_seconds(proc.pid) - cpu_before
            rps = r["requests_per_s"]
            point = Point(name, contender, c, rps, rps, r["p50_ms"], r["p99_ms"], int(r["errors"]))
            point.cpu_ms_per_request = 1000 * cpu / max(1.0, rps * round(args.duration))
            points.append(point)
            print(f"  {contender:14} c={c:<3} {_figures(point)}  errors {point.errors}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    return points


def bench_inprocess(name: str, model: Path, args: argparse.Namespace) -> list[Point]:
    points = []
    for c in args.concurrency:
        seconds = str(min(args.duration, 5))
        cmd = ["taskset", "-c", args.server_cpu, str(KSERVE_PY), str(HERE / "ort_inprocess.py"),
               "--model", str(model), "--batch", str(c), "--seconds", seconds]  # fmt: skip
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        point = Point(
            name,
            "onnxruntime",
            c,
            r["requests_per_s"],
            r["rows_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            0,
        )
        points.append(point)
        print(
            f"  {'onnxruntime':14} b={c:<3} {_figures(point)} (one batch of {c} rows)", flush=True
        )
    return points


def _figures(p: Point) -> str:
    cpu = f"  cpu {p.cpu_ms_per_request:6.3f} ms/req" if p.cpu_ms_per_request else ""
    return f"{p.rows_per_s:9.0f} rows/s  p50 {p.p50_ms:7.2f} ms  p99 {p.p99_ms:7.2f} ms{cpu}"


def medians(points: list[Point]) -> list[Point]:
    """One point per model, contender and concurrency: the median of its rounds' figures."""
    groups: dict[tuple[str, str, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.model, p.contender, p.concurrency), []).append(p)
    merged = []
    for (model, contender, concurrency), group in groups.items():

        def median(field: str, group: list[Point] = group) -> float:
            return float(np.median([getattr(p, field) for p in group]))

        merged.append(
            Point(
                model,
                contender,
                concurrency,
                median("requests_per_s"),
                median("rows_per_s"),
                median("p50_ms"),
                median("p99_ms"),
                sum(p.errors for p in group),
                median("cpu_ms_per_request"),
            )
        )
    return merged


def report(points: list[Point], args: argparse.Namespace) -> None:
    print(
        "\nrows/s (p50 / p99 ms), medians of the rounds; one row per request; servers on one "
        "core, wrk on another"
    )
    for name in MODELS:
        mine = [p for p in points if p.model == name]
        if not mine:
            continue
        print(f"\n{name}")
        header = f"{'contender':15}" + "".join(f"{'c=' + str(c):>28}" for c in args.concurrency)
        print(header)
        for contender in CONTENDERS:
            row = {p.concurrency: p for p in mine if p.contender == contender}
            if not row:
                continue
            cells = "".join(
                f"{row[c].rows_per_s:>10.0f} ({row[c].p50_ms:6.2f} /{row[c].p99_ms:7.2f})"
                if c in row else f"{'-':>28}"
                for c in args.concurrency
            )  # fmt: skip
            print(f"{contender:15}{cells}")
        by = {(p.contender, p.concurrency): p for p in mine}
        for label, contender in (("JSON", "modelyard"), ("gRPC", "modelyard-grpc")):
            for ref in ("kserve", "naive"):
                cells = ""
                for c in args.concurrency:
                    a, b = by.get((contender, c)), by.get((ref, c))
                    if a and b:
                        ratio, p99 = a.rows_per_s / b.rows_per_s, b.p99_ms / a.p99_ms
                        cells += f"{ratio:>8.2f}x rows/s, p99 /{p99:5.2f}"
                    else:
                        cells += f"{'-':>28}"
                print(f"{label + ' vs ' + ref:15}{cells}")
        # How close serving gets to the model's own speed at the batch it could form.
        for contender in ("modelyard", "modelyard-bin", "modelyard-grpc"):
            cells = ""
            for c in args.concurrency:
                a, b = by.get((contender, c)), by.get(("onnxruntime", c))
                cells += f"{a.rows_per_s / b.rows_per_s:>27.1%} " if a and b else f"{'-':>28}"
            print(f"{'ORT share ' + contender.removeprefix('modelyard'):15}{cells}")
        # The cost of drift monitoring: the same server and requests with it on and off.
        cells, cpu_cells = "", ""
        for c in args.concurrency:
            a, b = by.get(("modelyard-drift", c)), by.get(("modelyard", c))
            if a and b:
                cells += f"{a.rows_per_s / b.rows_per_s:>27.2f}x"
                extra = 1000 * (a.cpu_ms_per_request - b.cpu_ms_per_request)
                cpu_cells += f"{extra:>18.1f} us/request"
            else:
                cells += f"{'-':>28}"
                cpu_cells += f"{'-':>29}"
        print(f"{'drift on/off':15}{cells}")
        print(f"{'drift CPU cost':15}{cpu_cells}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every contender; figures are medians"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--contenders", nargs="+", default=CONTENDERS, choices=CONTENDERS)
    parser.add_argument("--max-batch-size", type=int, default=64, help="this server's batch limit")
    parser.add_argument("--server-cpu", default="1", help="core(s) for the server (taskset -c)")
    parser.add_argument("--client-cpu", default="0", help="core(s) for wrk (taskset -c)")
    args = parser.parse_args()
    # Only the other contenders need that venv: modelyard alone runs from the project's.
    if not KSERVE_PY.exists() and set(args.contenders) - {
        "modelyard",
        "modelyard-drift",
        "modelyard-bin",
        "modelyard-grpc",
    }:
        sys.exit("bench/.venv-kserve is missing: run bench/server/make_venvs.sh first")
    workdir = RESULTS / "server"
    workdir.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    for name in args.models:
        sizes = MODELS[name]
        model = save(mlp(sizes, seed=0), workdir / f"{name}.onnx")
        print(f"{name}:", flush=True)
        for round_ in range(args.rounds):
            # Every other round in reverse order: a machine that slows down or speeds up over
            # the run favours no contender.
            order = args.contenders if round_ % 2 == 0 else args.contenders[::-1]
            for contender in order:
                if contender == "onnxruntime":
                    points += bench_inprocess(name, model, args)
                elif contender == "modelyard-drift":
                    served = with_reference(model, sizes[0], workdir / f"drift-{name}")
                    points += bench_server(contender, name, served, sizes[0], args, workdir)
                else:
                    points += bench_server(contender, name, model, sizes[0], args, workdir)
    report(medians(points), args)
    out = RESULTS / "server_throughput.json"
    out.write_text(
        json.dumps({"args": vars(args), "points": [asdict(p) for p in points]}, indent=1)
    )
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
