"""crds/ is generated from the API models, fresh, structural and small enough for kubectl apply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from modelyard_operator.api.crd import (
    CHART_CRDS,
    KINDS,
    KUSTOMIZATION,
    crd,
    file_name,
    render,
    render_kustomization,
)
from tests.conftest import ROOT

CRDS = ROOT / "crds"
CHART = ROOT / CHART_CRDS
CLIENT_SIDE_APPLY_LIMIT = 256 * 1024
# Keys that the structural-schema rules forbid or that only JSON Schema knows.
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "discriminator"}


def _schemas(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schemas(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schemas(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_file_is_fresh(kind: Any) -> None:
    path = CRDS / file_name(kind)
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render(kind), f"{path} is stale: run `make crds`"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_chart_copy_is_fresh(kind: Any) -> None:
    path = CHART / file_name(kind)
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render(kind), f"{path} is stale: run `make crds`"


def test_kustomization_is_fresh() -> None:
    path = CRDS / KUSTOMIZATION
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render_kustomization(), f"{path} is stale: run `make crds`"


def test_no_stray_files_in_crds() -> None:
    names = sorted(file_name(k) for k in KINDS)
    assert sorted(p.name for p in CRDS.iterdir()) == sorted([*names, KUSTOMIZATION])
    # Helm would try to install anything else in the chart's crds/ as an object.
    assert sorted(p.name for p in CHART.iterdir()) == names


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_fits_client_side_apply(kind: Any) -> None:
    size = len(render(kind).encode())
    # The last-applied annotation holds the whole object; report the margin we have.
    print(f"{kind.kind}: {size} bytes, {size / CLIENT_SIDE_APPLY_LIMIT:.0%} of 256 KiB")
    assert size < CLIENT_SIDE_APPLY_LIMIT


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural_and_described(kind: Any) -> None:
    root = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _schemas(root):
        assert not FORBIDDEN & node.keys(), f"{path} has {FORBIDDEN & node.keys()}"
        assert "type" in node, f"{path} has no type"
        is_field = path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}"))
        if is_field:
            assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object" and "properties" not in node and path != ".metadata":
            assert "additionalProperties" in node or node.get(
                "x-kubernetes-preserve-unknown-fields"
            ), f"{path} is an object without a schema"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_lists_and_strings_read_by_rules_are_bounded(kind: Any) -> None:
    root = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _schemas(root):
        for rule in node.get("x-kubernetes-validations", []):
            for name, child in node.get("properties", {}).items():
                if name in rule["rule"] and child["type"] in ("string", "array"):
                    bounded = "maxLength" in child or "maxItems" in child or "enum" in child
                    assert bounded, f"{path}.{name} is read by a CEL rule but unbounded"


def test_crds_name_their_kinds() -> None:
    for kind in KINDS:
        document = yaml.safe_load((CRDS / file_name(kind)).read_text())
        names = document["spec"]["names"]
        assert names["kind"] == kind.kind
        assert names["shortNames"] == [kind.short_name]
        assert names["categories"] == ["modelyard"]
        version = document["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"
