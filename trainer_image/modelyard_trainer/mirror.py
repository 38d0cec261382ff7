"""Rank 0's run directory in object storage, when the output is s3://.

The trainer works in a local directory (the pod's scratch volume) and this keeps the copy in
the bucket that readers use: checkpoints go up as they are written (so that any new attempt,
on any node, resumes from them: no shared volume), a resumed attempt pulls them back, and the
finished run is published with metadata.json last. Readers (the operator, a ModelDeployment,
a rerun) take a run as final only when its metadata.json is there, and one object write is
atomic, so nobody sees a half-published run. Every download is verified against the sha256
recorded at upload.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from modelyard_storage.errors import StorageError
from modelyard_storage.local import path_below
from modelyard_storage.store import Store, open_store
from modelyard_storage.uri import is_s3, join_uri

from .contracts import CHECKPOINT_DIR, ENV_OUTPUT_URI, METADATA_FILE, ArtifactMetadata
from .errors import InvalidConfig, StorageFailed

log = logging.getLogger(__name__)


class RunMirror:
    """The run's prefix `<output>/<relpath>/` in object storage."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    @classmethod
    def for_run(cls, environ: Mapping[str, str], relpath: str) -> RunMirror | None:
        """The mirror of this run, or None when the output is not object storage."""
        output = environ.get(ENV_OUTPUT_URI) or ""
        if not is_s3(output):
            return None
        with storage_errors():
            return cls(open_store(output, environ), join_uri(output, relpath))

    def uri(self, name: str) -> str:
        return join_uri(self.prefix, name)

    def pull_final(self, run_dir: Path) -> bool:
        """Download a published run (metadata.json and its model files); False when none."""
        marker = self.uri(METADATA_FILE)
        staged = run_dir / f".{METADATA_FILE}.remote"
        with storage_errors():
            if not self.store.exists(marker):
                return False
            self.store.download(marker, staged)
            try:
                metadata = ArtifactMetadata.model_validate_json(staged.read_text(encoding="utf-8"))
            except ValueError as error:
                log.warning("ignoring unreadable %s: %s", marker, error)
                staged.unlink(missing_ok=True)
                return False
            for name, digest in metadata.files.items():
                # The names come from the bucket: they must stay in the run directory.
                dest = path_below(run_dir, name, f"{marker} files")
                self.store.download(self.uri(name), dest, digest.sha256)
        staged.replace(run_dir / METADATA_FILE)
        return True

    def pull_checkpoints(self, run_dir: Path) -> list[str]:
        """Download the run's checkpoints into run_dir/checkpoints; their names."""
        prefix = self.uri(CHECKPOINT_DIR)
        with storage_errors():
            names = [n for n in self.store.listdir(prefix) if "/" not in n]
            for name in names:
                dest = path_below(run_dir / CHECKPOINT_DIR, name, f"{prefix} listing")
                self.store.download(join_uri(prefix, name), dest)
        if names:
            log.info("pulled %d checkpoint(s) from %s", len(names), prefix)
        return names

    def push_checkpoint(self, path: Path) -> None:
        """Upload a new checkpoint, then drop the remote ones that are gone locally."""
        prefix = self.uri(CHECKPOINT_DIR)
        kept = {p.name for p in path.parent.iterdir() if not p.name.startswith(".")}
        with storage_errors():
            self.store.upload(path, join_uri(prefix, path.name))
            for name in self.store.listdir(prefix):
                if name not in kept:
                    self.store.delete(join_uri(prefix, name))

    def publish(self, run_dir: Path) -> None:
        """Upload the finished run, metadata.json last (checkpoints are there already)."""
        with storage_errors():
            names = self.store.publish_directory(
                run_dir, self.prefix, METADATA_FILE, skip_dirs=(CHECKPOINT_DIR,)
            )
        log.info("published %d file(s) to %s", len(names), self.prefix)

    def upload(self, path: Path) -> None:
        with storage_errors():
            self.store.upload(path, self.uri(path.name))


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """A storage failure becomes the trainer's failure, with a reason that says if a retry helps."""
    try:
        yield
    except StorageError as error:
        raise storage_failure(error) from None


def storage_failure(error: StorageError) -> InvalidConfig | StorageFailed:
    """A missing bucket or a malformed URI cannot get better by retrying; the rest may."""
    if error.reason in ("BucketNotFound", "InvalidUri"):
        return InvalidConfig(error.message)
    return StorageFailed(f"{error.reason}: {error.message}")
