"""Drift: a child differs from what we would apply only in the fields that we set. What the API
server adds or normalises is no drift (an unchanged object must cost no write); someone's edit
of one of our fields is."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelyard_operator.api import ModelTraining
from modelyard_operator.builders.common import with_spec_hash
from modelyard_operator.builders.training import jobs, progress_role, static_children
from modelyard_operator.kube import drifted
from modelyard_operator.settings import Settings
from tests.conftest import load_sample, with_changes

UID = "0f3c2a9e-1111-2222-3333-444455556666"


def training() -> ModelTraining:
    document = with_changes(
        load_sample("digits.yaml"),
        {"metadata.namespace": "ml", "metadata.uid": UID, "metadata.generation": 1},
    )
    return ModelTraining.model_validate(document)


def as_served(manifest: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server returns it: system fields, defaults, normalised values."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(uid="live-uid", resourceVersion="42", generation=1)
    live["metadata"]["labels"]["added-by"] = "someone"
    live["metadata"]["ownerReferences"].append({"uid": "other", "kind": "Thing", "name": "x"})
    return live


def test_every_child_as_the_server_returns_it_is_no_drift() -> None:
    for manifest in static_children(training(), Settings()):
        assert not drifted(manifest, as_served(manifest)), manifest["kind"]


def test_server_defaults_omitted_empties_and_normalised_quantities_are_no_drift() -> None:
    desired = jobs(training(), 1, Settings())[0]["spec"]["template"]
    live = copy.deepcopy(desired)
    pod = live["spec"]
    pod["dnsPolicy"] = "ClusterFirst"  # a default
    container = pod["containers"][0]
    container["resources"] = {"requests": {"cpu": "1000m", "memory": "1024Mi"}}  # normalised
    container["ports"][0]["protocol"] = "TCP"
    container["env"].append({"name": "ADDED_BY_A_WEBHOOK", "value": "x"})
    pod["volumes"].append({"name": "injected", "emptyDir": {}})
    desired["spec"]["containers"][0]["resources"]["limits"] = {}
    assert not drifted({"spec": desired}, {"spec": live})


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["rules"][0]["resources"].append("secrets"),
        lambda r: r["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}),
        lambda r: r["rules"][0].update(resourceNames=[]),
        lambda r: r["rules"][0].update(verbs=["*"]),
        lambda r: r["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda r: r["metadata"].update(ownerReferences=[]),
    ],
)
def test_an_edit_of_a_field_we_set_is_drift(edit: Any) -> None:
    desired = progress_role(training())
    live = as_served(desired)
    edit(live)
    assert drifted(desired, live)


def test_changed_values_in_keyed_lists_and_quantities_are_drift() -> None:
    desired = jobs(training(), 1, Settings())[0]["spec"]["template"]
    for edit in (
        lambda c: c.update(image="evil:1"),
        lambda c: c["env"][0].update(value="9"),
        lambda c: c["resources"]["limits"].update(memory="20Gi"),
        lambda c: c["volumeMounts"][0].update(readOnly=False),
    ):
        live = copy.deepcopy(desired)
        edit(live["spec"]["containers"][0])
        assert drifted({"spec": desired}, {"spec": live})


def test_a_field_we_no_longer_set_is_drift_through_the_spec_hash() -> None:
    before = with_spec_hash(progress_role(training()))
    wanted = progress_role(training())
    del wanted["rules"][0]["resourceNames"]  # the live rule still names the ConfigMap
    assert drifted(with_spec_hash(wanted), as_served(before))
    assert not drifted(before, as_served(before))
