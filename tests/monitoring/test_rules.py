"""The chart's PrometheusRule under the real promtool: each alert fires on the series that
should trip it (after its `for`), stays quiet on healthy neighbours, and its thresholds come
from the values."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.test_chart import one, render

RULE_ON = "monitoring.prometheusRule.enabled=true"
# (alert name, minute of the evaluation, the alerts expected then)
Expectation = tuple[str, int, list[dict[str, Any]]]

# Input series, one sample a minute ("a+bxN": start at a, add b, N more times).
SERIES = [
    # Model "down": no replica ever ready. Model "half": one of two ready. Model "late": ready
    # after 3 minutes of loading.
    ('modelyard_server_model_ready{namespace="ns",model="down",pod="d1"}', "0x30"),
    ('modelyard_server_model_ready{namespace="ns",model="down",pod="d2"}', "0x30"),
    ('modelyard_server_model_ready{namespace="ns",model="half",pod="h1"}', "0x30"),
    ('modelyard_server_model_ready{namespace="ns",model="half",pod="h2"}', "1x30"),
    ('modelyard_server_model_ready{namespace="ns",model="late",pod="l1"}', "0 0 0 1x27"),
    # "failing": 10 requests a minute answered 200, 1 answered 500 (share 1/11);
    # "healthy": 99 answered 200, 1 answered 503 (share 1/100).
    ('modelyard_server_requests_total{namespace="ns",model="failing",code="200"}', "0+10x30"),
    ('modelyard_server_requests_total{namespace="ns",model="failing",code="500"}', "0+1x30"),
    ('modelyard_server_requests_total{namespace="ns",model="healthy",code="200"}', "0+99x30"),
    ('modelyard_server_requests_total{namespace="ns",model="healthy",code="503"}', "0+1x30"),
    # "slow": every request between 1 s and 2.5 s; "fast": every request under 0.1 s.
    *(
        (
            f'modelyard_server_request_duration_seconds_bucket{{namespace="ns",model="slow",le="{le}"}}',
            v,
        )
        for le, v in (("0.1", "0x30"), ("1", "0x30"), ("2.5", "0+10x30"), ("+Inf", "0+10x30"))
    ),
    *(
        (
            f'modelyard_server_request_duration_seconds_bucket{{namespace="ns",model="fast",le="{le}"}}',
            v,
        )
        for le, v in (("0.1", "0+10x30"), ("1", "0+10x30"), ("2.5", "0+10x30"), ("+Inf", "0+10x30"))
    ),
    # One training fails at minute 3 (operator in "op"); in "old", an operator that restarted
    # counts 2 trainings that failed long ago; a ModelDeployment phase change is not a training.
    ('modelyard_resources{namespace="op",kind="ModelTraining",phase="Failed"}', "0 0 0 1x27"),
    ('modelyard_resources{namespace="old",kind="ModelTraining",phase="Failed"}', "2x30"),
    ('modelyard_resources{namespace="op",kind="ModelDeployment",phase="Failed"}', "0 0 0 1x27"),
    # Half of the ModelTraining reconciles raise; 1 in 100 ModelDeployment reconciles does.
    ('modelyard_reconciles_total{namespace="op",kind="ModelTraining",result="error"}', "0+5x30"),
    ('modelyard_reconciles_total{namespace="op",kind="ModelTraining",result="ok"}', "0+5x30"),
    ('modelyard_reconciles_total{namespace="op",kind="ModelDeployment",result="error"}', "0+1x30"),
    ('modelyard_reconciles_total{namespace="op",kind="ModelDeployment",result="ok"}', "0+99x30"),
    # Model "drifting": column x3 scores 0.9 on one pod and 0.5 on the other (0.7 on average),
    # x1 stays low, the predictions too; model "predicting": only its predictions drift (0.4);
    # model "calm" nowhere near.
    (
        'modelyard_server_drift_feature_psi{namespace="ns",model="drifting",pod="a",feature="x3"}',
        "0.9x30",
    ),
    (
        'modelyard_server_drift_feature_psi{namespace="ns",model="drifting",pod="b",feature="x3"}',
        "0.5x30",
    ),
    (
        'modelyard_server_drift_feature_psi{namespace="ns",model="drifting",pod="a",feature="x1"}',
        "0.02x30",
    ),
    ('modelyard_server_drift_prediction_psi{namespace="ns",model="drifting",pod="a"}', "0.1x30"),
    ('modelyard_server_drift_prediction_psi{namespace="ns",model="predicting",pod="c"}', "0.4x30"),
    (
        'modelyard_server_drift_feature_psi{namespace="ns",model="calm",pod="d",feature="x3"}',
        "0.05x30",
    ),
]


def _alert(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


NOT_READY = _alert(
    {"severity": "critical", "namespace": "ns", "model": "down"},
    "Model down has no ready replica",
    "No server of model down in namespace ns has reported ready for 5m.",
)
ERROR_RATE = _alert(
    {"severity": "warning", "namespace": "ns", "model": "failing"},
    "Model failing answers too many requests with 5xx",
    "9.091% of the inference requests to model failing in namespace ns failed with a 5xx "
    "status (threshold 0.05).",
)
LATENCY = _alert(
    {"severity": "warning", "namespace": "ns", "model": "slow"},
    "Model slow p99 latency is high",
    "The 99th percentile of the request latency of model slow in namespace ns is 2.485s "
    "(threshold 1s).",
)
TRAINING_FAILED = _alert(
    {"severity": "warning", "namespace": "op", "kind": "ModelTraining", "phase": "Failed"},
    "A ModelTraining failed",
    "A ModelTraining went to phase Failed in the last 15m (see `kubectl get modeltrainings -A` "
    "and the training's Events).",
)
RECONCILE_ERRORS = _alert(
    {"severity": "warning", "namespace": "op", "kind": "ModelTraining"},
    "The operator fails to reconcile ModelTrainings",
    "50% of the ModelTraining reconciles raised an error (threshold 0.1); the operator's log "
    "names the cause.",
)


def _drift(model: str, feature: str, value: str) -> dict[str, Any]:
    return _alert(
        {"severity": "warning", "namespace": "ns", "model": model, "feature": feature},
        f"Model {model} sees drift in {feature}",
        f"The population stability index of {feature} of model {model} in namespace ns against "
        f"the training split is {value} (threshold 0.25); the ModelDeployment's Drifting "
        "condition names the worst columns.",
    )


DRIFT_X3 = _drift("drifting", "x3", "0.70")
DRIFT_PREDICTIONS = _drift("predicting", "predictions", "0.40")

# With the default values: pending (not firing) until `for` has passed since the condition
# first held (a rate needs two samples: minute 1), firing after; the failed training fires at
# once and is quiet again once its window has passed.
DEFAULT_EXPECTATIONS: list[Expectation] = [
    ("ModelyardModelNotReady", 4, []),
    ("ModelyardModelNotReady", 6, [NOT_READY]),
    ("ModelyardModelNotReady", 25, [NOT_READY]),
    ("ModelyardHighErrorRate", 5, []),
    ("ModelyardHighErrorRate", 7, [ERROR_RATE]),
    ("ModelyardHighLatencyP99", 10, []),
    ("ModelyardHighLatencyP99", 12, [LATENCY]),
    ("ModelyardTrainingFailed", 2, []),
    ("ModelyardTrainingFailed", 5, [TRAINING_FAILED]),
    ("ModelyardTrainingFailed", 25, []),
    ("ModelyardReconcileErrors", 15, []),
    ("ModelyardReconcileErrors", 17, [RECONCILE_ERRORS]),
    ("ModelyardDrift", 14, []),
    ("ModelyardDrift", 16, [DRIFT_X3, DRIFT_PREDICTIONS]),
]

# Thresholds above what the series reach (and a failed-training window that has passed by
# minute 5): nothing fires, so the rules read the values.
RAISED: dict[str, Any] = {
    "modelNotReady": {"for": "30m"},
    "errorRate": {"threshold": 0.1},
    "latencyP99": {"seconds": 2.5},
    "trainingFailed": {"window": "2m"},
    "reconcileErrors": {"threshold": 0.6},
    "drift": {"psiThreshold": 0.8},
}
RAISED_EXPECTATIONS: list[Expectation] = [
    ("ModelyardModelNotReady", 25, []),
    ("ModelyardHighErrorRate", 25, []),
    ("ModelyardHighLatencyP99", 25, []),
    ("ModelyardTrainingFailed", 5, []),
    ("ModelyardReconcileErrors", 25, []),
    ("ModelyardDrift", 25, []),
]


def _rules_file(helm_dir: Path, tmp_path: Path, rule_values: dict[str, Any]) -> Path:
    # A values file, not --set: helm's --set reads 0.1 as a string, which the schema refuses.
    values = {"monitoring": {"prometheusRule": rule_values}}
    rule = one(render(helm_dir, RULE_ON, values=values, tmp=tmp_path), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def _promtool(prometheus_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(prometheus_bin / "promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _test_file(tmp_path: Path, rules: Path, expectations: list[Expectation]) -> Path:
    test = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in SERIES],
                "alert_rule_test": [
                    {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": alerts}
                    for name, minute, alerts in expectations
                ],
            }
        ],
    }
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("rule_values", "expectations"),
    [({}, DEFAULT_EXPECTATIONS), (RAISED, RAISED_EXPECTATIONS)],
    ids=["default-thresholds", "raised-thresholds"],
)
def test_alerts_fire_on_what_they_name_and_only_then(
    helm_dir: Path,
    prometheus_bin: Path,
    tmp_path: Path,
    rule_values: dict[str, Any],
    expectations: list[Expectation],
) -> None:
    rules = _rules_file(helm_dir, tmp_path, rule_values)
    checked = _promtool(prometheus_bin, "check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool(
        prometheus_bin, "test", "rules", str(_test_file(tmp_path, rules, expectations))
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_of_the_chart_is_tested(helm_dir: Path) -> None:
    rule = one(render(helm_dir, RULE_ON), "PrometheusRule")
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts == {name for name, _, _ in DEFAULT_EXPECTATIONS}


def test_rules_and_dashboard_are_off_by_default(helm_dir: Path) -> None:
    manifests = render(helm_dir)
    assert not [m for m in manifests if m["kind"] == "PrometheusRule"]
    assert not [m for m in manifests if m["kind"] == "ConfigMap"]
