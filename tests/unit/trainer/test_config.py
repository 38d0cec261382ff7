"""TrainerConfig: defaults, camelCase aliases, and errors that name the field path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelyard_trainer.config import (
    ConfigError,
    TrainerConfig,
    load_trainer_config,
    trainer_config_from_mapping,
)


def error_of(document: object) -> str:
    with pytest.raises(ConfigError) as caught:
        trainer_config_from_mapping(document)
    return str(caught.value)


def test_defaults_are_valid_and_round_trip_by_alias() -> None:
    config = TrainerConfig()
    assert config.data.source.builtin == "iris"
    dumped = config.model_dump(by_alias=True)
    assert "learningRate" in dumped["training"]["optimizer"]
    assert "hiddenLayers" in dumped["model"]
    assert TrainerConfig.model_validate(dumped) == config


def test_snake_case_names_are_accepted_too() -> None:
    config = trainer_config_from_mapping({"training": {"batch_size": 32}})
    assert config.training.batch_size == 32


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {"training": {"optimizer": {"learningRate": 0}}},
            "training.optimizer.learningRate: Input should be greater than 0",
        ),
        (
            {"training": {"epochs": 0}},
            "training.epochs: Input should be greater than or equal to 1",
        ),
        ({"model": {"hiddenLayers": [8, 0]}}, "model.hiddenLayers.1: Input should be greater"),
        ({"model": {"architecture": "custom"}}, "model: entrypoint is required"),
        ({"model": {"entrypoint": "pkg.mod:fn"}}, "model: entrypoint is only allowed"),
        (
            {"model": {"architecture": "custom", "entrypoint": "not a path"}},
            "model.entrypoint: String should match pattern",
        ),
        ({"model": {"kernelSize": 4}}, "model: kernelSize must be odd"),
        ({"data": {"source": {}}}, "data.source: set exactly one of builtin, synthetic or uri"),
        (
            {"data": {"source": {"builtin": "iris", "uri": "x.csv"}}},
            "data.source: set exactly one of builtin, synthetic or uri (got builtin, uri)",
        ),
        ({"data": {"source": {"builtin": "mnist"}}}, "data.source.builtin: Input should be"),
        ({"data": {"source": {"uri": "x.csv"}}}, "data: target is required"),
        ({"data": {"source": {"uri": "gs://bucket/x.csv"}, "target": "y"}}, "data.source.uri"),
        ({"data": {"split": {"validation": 0.5, "test": 0.4}}}, "data.split: validation + test"),
        (
            {"training": {"optimizer": {"name": "adam", "nesterov": True}}},
            "training.optimizer: nesterov needs name 'sgd' and momentum > 0",
        ),
        ({"training": {"loss": "mse"}}, "training.loss 'mse' is for regression"),
        (
            {"data": {"source": {"synthetic": {"task": "regression"}}}},
            "does not fit data.source.synthetic.task 'regression'",
        ),
        (
            {"training": {"epochs": 3, "schedule": {"warmupEpochs": 3}}},
            "training: schedule.warmupEpochs must be less than epochs",
        ),
        ({"training": {"learningRate": 0.1}}, "training.learningRate: Extra inputs are not"),
        ({"export": {"opset": 12}}, "export.opset: Input should be greater than or equal to 18"),
        (
            {
                "data": {"split": {"validation": 0}},
                "training": {"earlyStopping": {"enabled": True}},
            },
            "training.earlyStopping needs data.split.validation > 0",
        ),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_configs_name_the_field(document: object, expected: str) -> None:
    assert expected in error_of(document)


def test_manifest_keeps_only_trainer_keys(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "ModelTraining",
        "metadata": {"name": "iris"},
        "spec": {
            "workers": 2,
            "output": {"claimName": "models"},
            "model": {"hiddenLayers": [32]},
            "training": {"epochs": 5},
        },
    }
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(manifest))
    config = load_trainer_config(path)
    assert config.model.hidden_layers == [32]
    assert config.training.epochs == 5


def test_bare_json_and_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"checkpoint": {"keep": 3}}))
    assert load_trainer_config(path).checkpoint.keep == 3
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid YAML/JSON"):
        load_trainer_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_trainer_config(tmp_path / "missing.yaml")


def test_every_field_has_a_description() -> None:
    def walk(schema: dict, defs: dict, path: str) -> None:
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{path}.{name} has no description"
            ref = prop.get("$ref") or next(
                (item["$ref"] for item in prop.get("anyOf", []) if "$ref" in item), None
            )
            if ref:
                walk(defs[ref.split("/")[-1]], defs, f"{path}.{name}")

    schema = TrainerConfig.model_json_schema(by_alias=True)
    walk(schema, schema.get("$defs", {}), "")


def test_config_and_contracts_import_no_heavy_modules() -> None:
    code = (
        "import sys, modelyard_trainer.config, modelyard_trainer.contracts;"
        "heavy = [m for m in ('torch', 'numpy', 'onnxruntime', 'onnx', 'pandas', 'sklearn')"
        " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
