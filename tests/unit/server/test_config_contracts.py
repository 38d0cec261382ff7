"""ServerConfig/ServerSettings round trips and the operator-facing contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard_server.config import (
    ServerConfig,
    ServerSettings,
    SettingsError,
    default_max_inflight_bytes,
)
from modelyard_server.contracts import (
    TERMINATION_MESSAGE_MAX_BYTES,
    LoadFailure,
    model_route,
    parse_load_failure,
)


def test_to_env_round_trips_through_from_env() -> None:
    config = ServerConfig.model_validate(
        {"maxBatchSize": 8, "maxBatchDelayMs": 0.5, "graphOptimizationLevel": "basic"}
    )
    settings = ServerSettings.from_env(config.to_env())
    assert ServerConfig.model_validate(settings.model_dump(include=set(ServerConfig.model_fields)))
    assert settings.max_batch_size == 8
    assert settings.max_batch_delay_ms == 0.5
    assert settings.graph_optimization_level == "basic"
    assert config.to_env()["MODELYARD_SERVER_MAX_BATCH_SIZE"] == "8"


def test_cli_overrides_win_and_none_is_ignored() -> None:
    env = {"MODELYARD_SERVER_PORT": "9000", "MODELYARD_SERVER_MODEL_NAME": "iris"}
    settings = ServerSettings.from_env(env, port=9100, model_name=None)
    assert settings.port == 9100
    assert settings.model_name == "iris"


def test_empty_variable_counts_as_unset_and_sha_is_lowercased() -> None:
    env = {"MODELYARD_SERVER_SHA256": "", "MODELYARD_SERVER_PORT": ""}
    assert ServerSettings.from_env(env).sha256 is None
    assert ServerSettings.from_env({}, sha256="AB" * 32).sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MODELYARD_SERVER_PORT": "eighty"}, "MODELYARD_SERVER_PORT"),
        ({"MODELYARD_SERVER_MAX_BATCH_SIZE": "0"}, "MODELYARD_SERVER_MAX_BATCH_SIZE"),
        ({"MODELYARD_SERVER_SHA256": "xyz"}, "MODELYARD_SERVER_SHA256"),
        ({"MODELYARD_SERVER_EXECUTION_PROVIDER": "tpu"}, "MODELYARD_SERVER_EXECUTION_PROVIDER"),
        (
            {"MODELYARD_SERVER_MAX_BATCH": "4"},
            "unknown environment variable MODELYARD_SERVER_MAX_BATCH",
        ),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        ServerSettings.from_env(env)


def test_cli_errors_name_the_option() -> None:
    with pytest.raises(SettingsError, match="option --shutdown-grace-seconds"):
        ServerSettings.from_env({}, shutdown_grace_seconds=0)


def test_config_schema_is_crd_friendly() -> None:
    schema = ServerConfig.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
        assert "default" in prop, name
        assert "anyOf" not in prop and "oneOf" not in prop, name


def test_load_failure_fits_the_termination_message_and_parses_back() -> None:
    failure = LoadFailure.create("ChecksumMismatch", "\u00e9\u0001" * 4000)
    text = failure.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    parsed = parse_load_failure(text)
    assert parsed is not None and parsed.reason == "ChecksumMismatch"


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "Traceback (most recent call last):",
        "[1]",
        '{"reason": "Other"}',
        "[" * 100000,
        b"\xff",
    ],
)
def test_parse_load_failure_never_raises(text: str | bytes | None) -> None:
    assert parse_load_failure(text) is None


def test_parse_load_failure_accepts_bytes() -> None:
    raw = json.dumps({"reason": "ModelNotFound", "message": "no /m.onnx"}).encode()
    assert parse_load_failure(raw) == LoadFailure(reason="ModelNotFound", message="no /m.onnx")


def test_model_route() -> None:
    assert model_route("m") == "/v2/models/m"
    assert model_route("m", "3") == "/v2/models/m/versions/3"


def test_config_modules_are_cheap_to_import() -> None:
    code = (
        "import sys, modelyard_server, modelyard_server.config, modelyard_server.contracts;"
        "heavy = {'numpy', 'onnxruntime', 'onnx', 'torch', 'uvicorn', 'prometheus_client'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shutdown_delay_must_fit_in_the_grace_period() -> None:
    with pytest.raises(ValueError, match="shutdownDelaySeconds must be less than"):
        ServerConfig.model_validate({"shutdownDelaySeconds": 5, "shutdownGraceSeconds": 5})
    with pytest.raises(SettingsError, match="shutdownDelaySeconds must be less than"):
        ServerSettings.from_env({"MODELYARD_SERVER_SHUTDOWN_GRACE_SECONDS": "1"})


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("1073741824\n", None, 128 * 1024 * 1024),  # cgroup v2, 1 GiB
        ("max\n", None, 256 * 1024 * 1024),  # v2 without a limit
        (None, "2147483648\n", 256 * 1024 * 1024),  # cgroup v1, 2 GiB
        (None, "9223372036854771712\n", 256 * 1024 * 1024),  # v1 without a limit
        (None, None, 256 * 1024 * 1024),  # no cgroup files
        ("4194304\n", None, 1024 * 1024),  # a tiny limit: never under 1 MiB
    ],
)
def test_inflight_bound_follows_the_container_memory_limit(
    tmp_path: Path, v2: str | None, v1: str | None, expected: int
) -> None:
    files = (str(tmp_path / "memory.max"), str(tmp_path / "memory.limit_in_bytes"))
    for path, text in zip(files, (v2, v1), strict=True):
        if text is not None:
            Path(path).write_text(text)
    assert default_max_inflight_bytes(files) == expected


def test_admission_settings_come_from_the_environment() -> None:
    settings = ServerSettings.from_env(
        {
            "MODELYARD_SERVER_MAX_INFLIGHT_BYTES": str(64 * 1024 * 1024),
            "MODELYARD_SERVER_MAX_CONCURRENT_UPLOADS": "4",
            "MODELYARD_SERVER_HEADER_TIMEOUT_SECONDS": "2.5",
            "MODELYARD_SERVER_BODY_TIMEOUT_SECONDS": "3",
        }
    )
    assert settings.max_inflight_bytes == 64 * 1024 * 1024
    assert settings.max_concurrent_uploads == 4
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds) == (2.5, 3.0)
    with pytest.raises(SettingsError, match="MODELYARD_SERVER_MAX_INFLIGHT_BYTES"):
        ServerSettings.from_env({"MODELYARD_SERVER_MAX_INFLIGHT_BYTES": "10"})
