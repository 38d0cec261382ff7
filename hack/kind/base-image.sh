#!/usr/bin/env bash
# Makes kind's base image without a registry: Debian bookworm from debootstrap, the packages of
# kind's images/base/Dockerfile, kind's own files (from the sigs.k8s.io/kind module in the Go
# module cache), containerd + CNI plugins built from their Go modules, then `docker import`.
#
# Usage: hack/kind/base-image.sh ROOTFS IMAGE
#   ROOTFS: an empty or debootstrapped directory (debootstrap runs when ROOTFS/sbin/init is missing)
# Environment: CONTAINERD_BIN, CNI_BIN, CRICTL_BIN (dirs with the built binaries),
#   DEBIAN_MIRROR, DOCKER (docker CLI; DOCKER_HOST picks the engine).
set -euo pipefail
rootfs="$1" image="$2"
docker="${DOCKER:-docker}"
# shellcheck source=version.env
source "$(dirname "${BASH_SOURCE[0]}")/version.env"
kind_src="$(go env GOMODCACHE)/sigs.k8s.io/kind@v$KIND_VERSION/images/base"
[[ -d "$kind_src/files" ]] || { echo "no kind source at $kind_src (go mod download sigs.k8s.io/kind@v...)" >&2; exit 1; }
log() { echo "[$(date -u +%T)] $*" >&2; }

# The packages of kind's base Dockerfile, less nfs-common/open-iscsi/fuse-overlayfs (no
# rootless, no NFS here), plus runc (Debian's 1.1.5; kind builds 1.3) and socat.
packages=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,runc,socat,ebtables
if [[ ! -e "$rootfs/sbin/init" ]]; then
  log "debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$rootfs.log" 2>&1
fi

log "kind's files (v$KIND_VERSION)"
f="$kind_src/files"
install -m 0755 "$f"/usr/local/bin/* "$rootfs/usr/local/bin/"
mkdir -p "$rootfs/kind/bin" "$rootfs/LICENSES" "$rootfs/etc/containerd" "$rootfs/etc/kubernetes/manifests" \
  "$rootfs/etc/systemd/system/kubelet.service.d" "$rootfs/opt/cni/bin"
install -m 0644 "$f"/kind/README.txt "$rootfs/kind/"
install -m 0755 "$f"/kind/bin/* "$rootfs/kind/bin/"
install -m 0644 "$f"/etc/crictl.yaml "$rootfs/etc/"
install -m 0644 "$f"/etc/containerd/* "$rootfs/etc/containerd/"
install -m 0644 "$f"/etc/default/* "$rootfs/etc/default/"
install -m 0644 "$f"/etc/sysctl.d/* "$rootfs/etc/sysctl.d/"
install -m 0644 "$f"/etc/systemd/system/*.service "$f"/etc/systemd/system/*.slice "$rootfs/etc/systemd/system/"
install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$rootfs/etc/systemd/system/kubelet.service.d/"

# This host's capability bounding set lacks CAP_SYS_RESOURCE: nothing may lower an OOM score.
# containerd.service asks for OOMScoreAdjust=-999 (systemd would refuse to start it), and the
# CRI gives sandboxes -998 (runc fails): keep scores at 0 or above.
mkdir -p "$rootfs/etc/systemd/system/containerd.service.d"
printf '[Service]\nOOMScoreAdjust=0\n' >"$rootfs/etc/systemd/system/containerd.service.d/10-no-oom-adjust.conf"
sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$rootfs/etc/containerd/config.toml"

# The cleanup steps of kind's Dockerfile.
find "$rootfs/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$rootfs"/lib/systemd/system/multi-user.target.wants/* "$rootfs"/etc/systemd/system/*.wants/* \
  "$rootfs"/lib/systemd/system/local-fs.target.wants/* "$rootfs"/lib/systemd/system/sockets.target.wants/*udev* \
  "$rootfs"/lib/systemd/system/sockets.target.wants/*initctl* "$rootfs"/lib/systemd/system/basic.target.wants/*
grep -q '^ReadKMsg=no' "$rootfs/etc/systemd/journald.conf" || echo "ReadKMsg=no" >>"$rootfs/etc/systemd/journald.conf"
systemctl --root="$rootfs" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1 ||
  chroot "$rootfs" systemctl enable kubelet.service containerd.service undo-mount-hacks.service
chroot "$rootfs" systemctl mask systemd-binfmt.service

if [[ -n "${CONTAINERD_BIN:-}" ]]; then
  log "containerd from $CONTAINERD_BIN, CNI plugins from ${CNI_BIN:?}"
  install -m 0755 "$CONTAINERD_BIN"/{containerd,containerd-shim-runc-v2,ctr} "$rootfs/usr/local/bin/"
  install -m 0755 "$CNI_BIN"/* "$rootfs/opt/cni/bin/"
  # crictl: `kind load` and kind's log export run it on the nodes.
  install -m 0755 "${CRICTL_BIN:?}/crictl" "$rootfs/usr/local/bin/"
  # kind's base spec: containerd's default spec, a createContainer hook, no rlimits.
  "$CONTAINERD_BIN/ctr" oci spec |
    jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$rootfs/etc/containerd/cri-base.json"
fi
rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

log "importing $image"
id="$(tar --numeric-owner -C "$rootfs" -c . | "$docker" import \
  --change 'ENV container=docker' \
  --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' - "$image.rootfs")"
# STOPSIGNAL is not among `docker import --change`'s instructions: one Dockerfile line adds it.
printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$image.rootfs" | "$docker" build -q -t "$image" - >/dev/null
"$docker" rmi "$image.rootfs" >/dev/null
log "$image done ($id)"
