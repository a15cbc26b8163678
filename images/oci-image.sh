#!/usr/bin/env bash
# Packs a directory as a single-layer OCI image archive, without Docker or a registry:
#
#   oci-image.sh NAME ROOTFS ENTRYPOINT_JSON ARCHIVE
#   e.g. oci-image.sh spire-rs.test/probe:e2e /tmp/rootfs '["/probe"]' /tmp/probe.tar
#
# The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in a tar;
# `ctr -n k8s.io images import ARCHIVE` loads it under NAME, which the index entry
# carries (io.containerd.image.name). The layer is uncompressed, and both tars are
# deterministic (root-owned, mtime 0, sorted), so the same ROOTFS gives the same digests.
set -euo pipefail

name=${1:?usage: oci-image.sh NAME ROOTFS ENTRYPOINT_JSON ARCHIVE}
rootfs=${2:?usage: oci-image.sh NAME ROOTFS ENTRYPOINT_JSON ARCHIVE}
entrypoint=${3:?usage: oci-image.sh NAME ROOTFS ENTRYPOINT_JSON ARCHIVE}
archive=${4:?usage: oci-image.sh NAME ROOTFS ENTRYPOINT_JSON ARCHIVE}

arch=$(uname -m)
case $arch in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
mkdir -p "$layout/blobs/sha256"

det_tar() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@"; }

# blob FILE MEDIATYPE: stores FILE under blobs/sha256 and prints its descriptor's JSON.
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$layout/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%d}' "$2" "$digest" "$size"
}

det_tar -C "$rootfs" -cf "$work/layer.tar" .
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$entrypoint" "$diff_id" >"$work/config.json"
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
  "$config" "$layer" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
# The manifest's descriptor, with the platform and the names added.
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "${manifest%\}}" "$arch" "$name" "${name##*:}" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
det_tar -C "$layout" -cf "$archive.tmp" .
mv "$archive.tmp" "$archive"
printf '%s %s (%d bytes)\n' "$archive" "$name" "$(stat -c %s "$archive")"
