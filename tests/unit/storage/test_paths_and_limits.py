"""Storage paths stay under their mount, downloads are capped, failure text holds no secret.

Real files, real symlinks, the real fetch command: the attacks of issue #17 (H2, M10) as a
user would send them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from modelyard_server import fetch
from modelyard_server.contracts import LoadFailure
from modelyard_storage.errors import StorageError
from modelyard_storage.local import LocalStore, local_path, path_below
from modelyard_storage.redact import PLACEHOLDER, ScrubFilter, scrub
from modelyard_storage.store import byte_limit, write_stream_atomically
from modelyard_storage.uri import LocalUri, UriError, join_uri, parse_uri

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("pvc://claim/../../../proc/self/environ", "a '..' path segment"),
        ("pvc://claim/a/../b", "a '..' path segment"),
        ("pvc://claim/./b", "a '.' path segment"),
        ("pvc://claim/a//b", "an empty path segment"),
        ("pvc://claim//b", "an empty path segment"),
        ("pvc://claim/a\\..\\b", "backslash"),
        ("pvc://claim/a\x00b", "NUL byte"),
        ("s3://bucket/runs/../other", "a '..' path segment"),
        ("s3://bucket//key", "an empty path segment"),
        ("file:///srv/../etc/passwd", "a '..' path segment"),
        ("../secrets.csv", "a '..' path segment"),
        ("data/../../x.csv", "a '..' path segment"),
    ],
)
def test_the_parser_refuses_paths_that_climb_or_hide(uri: str, words: str) -> None:
    with pytest.raises(UriError) as caught:
        parse_uri(uri, "data.source.uri")
    assert str(caught.value).startswith("data.source.uri: ")
    assert words in str(caught.value)


def test_plain_local_paths_keep_dot_and_a_trailing_slash() -> None:
    assert parse_uri("./out", "--output") == LocalUri("./out")
    assert str(parse_uri("pvc://claim/runs/", "output.uri")) == "pvc://claim/runs"
    with pytest.raises(UriError, match=re.escape("path: 'a/../b' has a '..'")):
        join_uri("s3://bucket/runs", "a/../b")


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    """A mount root with a claim `claim` that holds a file, and a secret file outside it."""
    root = tmp_path / "pvc"
    (root / "claim" / "sets").mkdir(parents=True)
    (root / "claim" / "sets" / "iris.csv").write_text("a,b\n1,2\n")
    (tmp_path / "secret.csv").write_text(f"{SECRET},x\n1,2\n")
    return root


def test_pvc_paths_resolve_under_their_claim(mount: Path) -> None:
    assert (
        local_path("pvc://claim/sets/iris.csv", str(mount))
        == (mount / "claim" / "sets" / "iris.csv").resolve()
    )
    # A symlink that stays inside the claim is fine.
    (mount / "claim" / "latest.csv").symlink_to(mount / "claim" / "sets" / "iris.csv")
    assert local_path("pvc://claim/latest.csv", str(mount)).name == "iris.csv"
    # Paths outside the mount root are the machine's own (a laptop's files).
    outside = mount.parent / "secret.csv"
    assert local_path(str(outside), str(mount)) == outside


@pytest.mark.parametrize("form", ["pvc", "plain", "file"])
def test_a_symlink_out_of_the_claim_is_refused(mount: Path, form: str) -> None:
    (mount / "claim" / "data.csv").symlink_to(mount.parent / "secret.csv")
    (mount / "other").mkdir()
    (mount / "claim" / "peer").symlink_to(mount / "other")  # another claim is outside too
    path = mount / "claim" / "data.csv"
    uri = {"pvc": "pvc://claim/data.csv", "plain": str(path), "file": path.as_uri()}[form]
    for target in (uri, uri.replace("data.csv", "peer")):
        with pytest.raises(StorageError) as caught:
            local_path(target, str(mount), "data.source.uri")
        assert caught.value.reason == "InvalidUri"
        assert caught.value.message.startswith("data.source.uri: ")
        assert "symbolic link" in caught.value.message and "secret" not in caught.value.message


def test_relative_names_stay_below_their_directory(mount: Path) -> None:
    claim = mount / "claim"
    assert path_below(claim, "sets/iris.csv") == (claim / "sets" / "iris.csv").resolve()
    with pytest.raises(StorageError, match=re.escape("metadata.json files: '../x' has a '..'")):
        path_below(claim, "../x", "metadata.json files")
    (claim / "escape").symlink_to(mount.parent)
    with pytest.raises(StorageError, match="symbolic link"):
        path_below(claim, "escape/secret.csv")


def _fetch(tmp_path: Path, source: str, *extra: str) -> tuple[int, LoadFailure | None]:
    log = tmp_path / "termination-log"
    log.unlink(missing_ok=True)
    dest = str(tmp_path / "model" / "m.onnx")
    code = fetch.main(["--source", source, "--dest", dest, "--termination-log", str(log), *extra])
    text = log.read_text() if log.exists() else ""
    return code, LoadFailure.model_validate_json(text) if text else None


def test_the_fetcher_keeps_the_model_path_in_its_claim(
    mount: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_PVC_MOUNT_ROOT", str(mount))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    (mount / "claim" / "model.onnx").symlink_to(mount.parent / "secret.csv")
    claim = mount / "claim"
    for source in (
        # What the operator passes: the claim's mount path, here with a traversal in it.
        f"{claim}/../../secret.csv",
        "pvc://claim/../../secret.csv",
        f"{claim}/model.onnx",
        "pvc://claim/model.onnx",
    ):
        code, failure = _fetch(tmp_path, source)
        assert code == fetch.EXIT_LOAD_FAILURE, source
        assert failure is not None and failure.reason == "InvalidConfig", source
        assert SECRET not in failure.message
    assert not (tmp_path / "model" / "m.onnx").exists()
    code, failure = _fetch(tmp_path, "pvc://claim/sets/iris.csv")
    assert code == 0 and failure is None
    assert (tmp_path / "model" / "m.onnx").read_text() == "a,b\n1,2\n"


def test_the_fetcher_refuses_a_model_over_the_limit(
    mount: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_PVC_MOUNT_ROOT", str(mount))
    (mount / "claim" / "big.onnx").write_bytes(b"x" * 2048)
    monkeypatch.setenv("MODELYARD_MAX_MODEL_BYTES", "1024")
    code, failure = _fetch(tmp_path, "pvc://claim/big.onnx")
    assert code == fetch.EXIT_LOAD_FAILURE and failure is not None
    assert failure.reason == "FetchFailed"
    assert "pvc://claim/big.onnx" in failure.message and "1024 bytes" in failure.message
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())
    monkeypatch.setenv("MODELYARD_MAX_MODEL_BYTES", "2048")
    assert _fetch(tmp_path, "pvc://claim/big.onnx")[0] == 0
    monkeypatch.setenv("MODELYARD_MAX_MODEL_BYTES", "lots")
    code, failure = _fetch(tmp_path, "pvc://claim/big.onnx")
    assert failure is not None and failure.reason == "InvalidConfig"
    assert "MODELYARD_MAX_MODEL_BYTES" in failure.message


def test_the_local_store_caps_by_size_and_while_streaming(mount: Path, tmp_path: Path) -> None:
    store = LocalStore(str(mount))
    dest = tmp_path / "copy" / "iris.csv"
    with pytest.raises(StorageError) as caught:
        store.download("pvc://claim/sets/iris.csv", dest, max_bytes=4)
    assert caught.value.reason == "TooLarge"
    assert caught.value.message == (
        "pvc://claim/sets/iris.csv holds more than the limit of 4 bytes; not downloaded"
    )
    assert not dest.parent.exists()  # refused from the size, before anything was written
    # A source that announces no size (or a smaller one) is cut off while it streams.
    chunks = iter([b"abc", b"def", b"ghi"])
    with pytest.raises(StorageError, match="more than the limit of 5 bytes"):
        write_stream_atomically(chunks, dest, "s3://b/k", [], max_bytes=5, size=1)
    assert list(dest.parent.iterdir()) == []  # the temp file is gone too
    assert store.download("pvc://claim/sets/iris.csv", dest, max_bytes=8) is not None


def test_byte_limits_come_from_the_environment() -> None:
    assert byte_limit({}, "MODELYARD_MAX_DATA_BYTES", 7) == 7
    assert byte_limit({"MODELYARD_MAX_DATA_BYTES": "10"}, "MODELYARD_MAX_DATA_BYTES", 7) == 10
    for bad in ("0", "-1", "1e9"):
        with pytest.raises(StorageError, match=f"MODELYARD_MAX_DATA_BYTES={bad!r}"):
            byte_limit({"MODELYARD_MAX_DATA_BYTES": bad}, "MODELYARD_MAX_DATA_BYTES", 7)


def test_the_scrubber_hides_credential_values() -> None:
    environ = {
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEBYaDH",
        "HF_TOKEN": "hf_abcdefghijklmnop",
        "DB_PASSWORD": "correct-horse",
        "MY_SECRET_NAME": "short",  # too short to hide without mangling messages
        "HOME": "/root/home-directory",
    }
    text = f"AWS_SECRET_ACCESS_KEY={SECRET}\0AWS_ACCESS_KEY_ID={KEY_ID}\0" + "\0".join(
        f"{k}={v}" for k, v in environ.items()
    )
    scrubbed = scrub(text, environ)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        assert environ[name] not in scrubbed
    assert "hf_abcdefghijklmnop" not in scrubbed and "correct-horse" not in scrubbed
    assert "MY_SECRET_NAME=short" in scrubbed and "/root/home-directory" in scrubbed
    assert scrubbed.count(PLACEHOLDER) == 7


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    logger = logging.getLogger("test-scrub")
    caplog.handler.addFilter(ScrubFilter())
    try:
        raise ValueError(f"columns: {SECRET}")
    except ValueError:
        logger.exception("cannot read %s", f"key={SECRET}")
    assert caplog.text and SECRET not in caplog.text
    assert f"key={PLACEHOLDER}" in caplog.text and f"columns: {PLACEHOLDER}" in caplog.text
