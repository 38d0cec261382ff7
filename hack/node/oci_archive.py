#!/usr/bin/env python3
"""Packs a directory into a single-layer container image archive (standard library only).

No registry is reachable from the local node, so its images are made from files on this
machine. The archive is an OCI image layout that also carries Docker's `manifest.json`,
so both `ctr images import` and `docker load` (hence `kind load image-archive`) read it.
The layer is reproducible: sorted entries, owner root, mtime 0; the same directory gives
the same image digest.

    oci_archive.py --root DIR --name modelyard.local/pause:3.10 --entrypoint /pause -o out.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import stat
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def layer_tar(root: Path) -> bytes:
    """A tar of everything under root, as paths relative to it, in a fixed order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p for p in root.rglob("*"))
        for path in paths:
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                raise SystemExit(f"{path}: only files, directories and symlinks can be packed")
    return buf.getvalue()


def go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def blob_entry(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return digest


def file_entry(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(
    root: Path, name: str, entrypoint: list[str], cmd: list[str], env: list[str], out: Path
) -> str:
    layer = layer_tar(root)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": go_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint or None,
            "Cmd": cmd or None,
            "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "hack/node/oci_archive.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        layer_digest = blob_entry(tar, layer)
        config_digest = blob_entry(tar, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": f"sha256:{config_digest}",
                "size": len(config_bytes),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": f"sha256:{layer_digest}", "size": len(layer)}
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = blob_entry(tar, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": f"sha256:{manifest_digest}",
                    "size": len(manifest_bytes),
                    # containerd takes the full name from the first, the OCI spec the tag.
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
        file_entry(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        file_entry(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        docker_manifest = [
            {
                "Config": f"blobs/sha256/{config_digest}",
                "RepoTags": [name],
                "Layers": [f"blobs/sha256/{layer_digest}"],
            }
        ]
        file_entry(tar, "manifest.json", json.dumps(docker_manifest).encode())
    tmp.replace(out)
    return f"sha256:{manifest_digest}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="directory to pack as /")
    parser.add_argument("--name", required=True, help="image reference, e.g. example.local/x:1")
    parser.add_argument("--entrypoint", action="append", default=[], help="repeat per argument")
    parser.add_argument("--cmd", action="append", default=[], help="repeat per argument")
    parser.add_argument("--env", action="append", default=[], help="KEY=value, repeatable")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"--root {args.root}: not a directory")
    digest = pack(args.root, args.name, args.entrypoint, args.cmd, args.env, args.output)
    print(f"{args.name} {digest} {args.output}")


if __name__ == "__main__":
    main()
