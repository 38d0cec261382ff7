"""The three Dockerfiles, read without Docker: multi-stage on a BASE_IMAGE argument, locked
dependencies of the right extra, a numeric non-root user that matches the pods' securityContext,
OCI labels; and the server's locked dependencies hold no torch. (hack/images.sh builds them.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard_operator.builders.common import restricted_pod_security
from tests.conftest import ROOT

IMAGES = {
    "operator": (ROOT / "operator" / "Dockerfile", "modelyard_operator"),
    "trainer": (ROOT / "trainer_image" / "Dockerfile", "modelyard_trainer"),
    "server": (ROOT / "server_image" / "Dockerfile", "modelyard_server"),
}
OCI_LABELS = {"title", "description", "version", "revision", "created", "source", "licenses"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last:]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_is_multi_stage_on_a_base_argument(name: str) -> None:
    steps = instructions(IMAGES[name][0])
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    stages = [rest for keyword, rest in steps if keyword == "FROM"]
    assert stages == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    final = final_stage(steps)
    # Only the dependencies' virtual environment and the project come over from the build
    # stage (no CA bundle, no uv), in two layers: a change of the sources leaves the first.
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == [
        "--from=build /opt/venv /opt/venv",
        "--from=build /opt/modelyard /opt/modelyard",
    ]
    assert "PYTHONPATH=/opt/modelyard" in " ".join(
        rest for keyword, rest in final if keyword == "ENV"
    )


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dependencies_are_the_locked_ones_of_the_images_extra(name: str) -> None:
    steps = instructions(IMAGES[name][0])
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    assert args["EXTRA"] == name
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert 'uv export --frozen --no-emit-project --extra "${EXTRA}"' in runs
    assert "--require-hashes" in runs
    assert "ENV PIP_CERT=/etc/modelyard-build/ca-bundle.pem" in " ".join(
        f"{k} {v}" for k, v in steps
    )


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_runs_as_the_pods_non_root_user(name: str) -> None:
    path, package = IMAGES[name]
    final = final_stage(instructions(path))
    users = [rest for keyword, rest in final if keyword == "USER"]
    pod = restricted_pod_security()
    assert users == [f"{pod['runAsUser']}:{pod['runAsGroup']}"]
    values = yaml.safe_load((ROOT / "charts" / "modelyard" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == pod["runAsUser"]
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    # Read-only root: nothing writes bytecode, HOME is the pods' /tmp emptyDir.
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint == [f'["python", "-m", "{package}"]']


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_oci_labels(name: str) -> None:
    final = final_stage(instructions(IMAGES[name][0]))
    labels = " ".join(rest for keyword, rest in final if keyword == "LABEL")
    found = set(re.findall(r"org\.opencontainers\.image\.([a-z]+)=", labels))
    assert found == OCI_LABELS
    assert f'org.opencontainers.image.title="modelyard-{name}"' in labels


def _closure(lock: dict[str, Any], extra: str) -> set[str]:
    packages = {p["name"]: p for p in lock["package"]}
    todo = [d["name"] for d in packages["modelyard"]["dependencies"]]
    todo += [d["name"] for d in packages["modelyard"]["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [d["name"] for d in packages[name].get("dependencies", [])]
    return seen


def test_server_image_has_no_torch_and_the_trainer_image_has_cuda_torch() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    server = _closure(lock, "server")
    assert "onnxruntime" in server
    assert not {"torch", "onnx", "scikit-learn"} & server
    trainer = _closure(lock, "trainer")
    assert "torch" in trainer
    # PyPI's Linux torch wheels bring CUDA: the same image uses a GPU when it has one.
    assert any(name.startswith("nvidia-") for name in trainer)
    operator = _closure(lock, "operator")
    assert not {"torch", "onnxruntime", "numpy"} & operator


def test_dockerignore_lets_in_only_what_the_images_need() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "build/images/ca-bundle.pem"} | (
        packages
    )
