"""Which custom-resource and child events wake a reconcile, and the side-by-side child
applies."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from modelyard_operator.handlers import watch
from modelyard_operator.handlers.cache import CachedKube
from modelyard_operator.handlers.common import for_each
from modelyard_operator.handlers.deployment import TrainingIndex
from modelyard_operator.handlers.watch import OWNER_LABELS, SeenSpecs
from modelyard_operator.kube import Kube
from modelyard_operator.names import DEPLOYMENT_LABEL, TRAINING_LABEL
from modelyard_operator.settings import Settings
from modelyard_operator.workqueue import WorkQueue


def meta(generation: int, **extra: object) -> dict[str, object]:
    return {"uid": "u1", "generation": generation, "resourceVersion": "1", **extra}


def test_a_status_only_change_wakes_nothing_but_spec_labels_and_deletion_do() -> None:
    seen = SeenSpecs()
    assert seen.changed("ModelDeployment", "ns", "a", meta(1))  # first sight
    assert not seen.changed("ModelDeployment", "ns", "a", {**meta(1), "resourceVersion": "2"})
    assert seen.changed("ModelDeployment", "ns", "a", meta(2))  # a spec edit
    assert seen.changed("ModelDeployment", "ns", "a", meta(2, labels={"team": "x"}))
    assert seen.changed("ModelDeployment", "ns", "a", meta(2, labels={"team": "x"}, uid="u2"))
    stamp = meta(2, labels={"team": "x"}, uid="u2", deletionTimestamp="2026-01-01T00:00:00Z")
    assert seen.changed("ModelDeployment", "ns", "a", stamp)
    assert seen.changed("ModelTraining", "ns", "a", meta(1))  # kinds are apart
    seen.forget("ModelDeployment", "ns", "a")
    assert seen.changed("ModelDeployment", "ns", "a", stamp)


def test_for_each_runs_side_by_side_and_raises_after_all_finished() -> None:
    finished: list[int] = []
    lock = threading.Lock()

    def slow(item: int) -> None:
        time.sleep(0.2)
        if item == 1:
            raise ValueError("item 1")
        with lock:
            finished.append(item)

    started = time.monotonic()
    with pytest.raises(ValueError, match="item 1"):
        for_each(slow, range(6))
    assert time.monotonic() - started < 0.6  # not 6 x 0.2 s one after the other
    assert sorted(finished) == [0, 2, 3, 4, 5]


def _child(kind: str, labels: dict[str, str]) -> dict[str, object]:
    return {"kind": kind, "metadata": {"namespace": "ns", "name": "x", "labels": labels}}


def test_a_trainings_pod_wakes_it_and_a_servers_pod_wakes_no_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that cannot start changes no Job: its pod's own event must wake the training."""
    kube = CachedKube(Kube(httpx.Client, lambda: None), lambda *_: None, OWNER_LABELS)
    runtime = watch.Runtime(
        kube=kube,
        settings=Settings(),
        trainings=WorkQueue(lambda _: None, name="ModelTraining"),
        deployments=WorkQueue(lambda _: None, name="ModelDeployment"),
        training_index=TrainingIndex(),
    )
    monkeypatch.setattr(watch, "_runtime", runtime)  # the queues are not started: nothing runs
    watch.child_changed("Pod", "MODIFIED", _child("Pod", {DEPLOYMENT_LABEL: "web"}))
    assert len(runtime.trainings) == len(runtime.deployments) == 0
    watch.child_changed("Pod", "MODIFIED", _child("Pod", {TRAINING_LABEL: "digits"}))
    assert len(runtime.trainings) == 1 and len(runtime.deployments) == 0
