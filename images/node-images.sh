#!/usr/bin/env bash
# Builds the real node's container images without Docker or a registry, as OCI image
# archives that `ctr -n k8s.io images import` loads:
#
#   node-images.sh OUTDIR
#     OUTDIR/pause.tar   spire-rs.test/pause:e2e   the pod sandbox image containerd is configured with
#     OUTDIR/probe.tar   spire-rs.test/probe:e2e   a test image: `/probe echo WORD...` prints a line
#
# Both hold one static binary, node/main.go (Go, no cgo), at the root of a single
# uncompressed layer. The archives are an OCI image layout (oci-layout, index.json,
# blobs/sha256/...) written here with tar and sha256sum; the index entry carries the
# image name containerd imports it under (io.containerd.image.name). The tars are
# deterministic: fixed owner, mode and mtime, sorted names.
set -euo pipefail

out=${1:?usage: node-images.sh OUTDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

arch=$(go env GOARCH)
# One tar flavour for layers and archives: reproducible and owned by root.
det_tar() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@"; }

(cd "$here/node" && CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o "$work/node-probe" main.go)

# blob FILE MEDIATYPE: stores FILE under blobs/sha256 of the layout in $layout and prints
# its descriptor's JSON.
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$layout/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%d}' "$2" "$digest" "$size"
}

# image NAME FILE_IN_ROOT ENTRYPOINT_JSON ARCHIVE
image() {
  local name=$1 file=$2 entrypoint=$3 archive=$4
  layout="$work/layout-$file"
  local rootfs="$work/rootfs-$file"
  mkdir -p "$layout/blobs/sha256" "$rootfs"
  install -m 0755 "$work/node-probe" "$rootfs/$file"
  det_tar -C "$rootfs" -cf "$work/layer-$file.tar" .
  local layer config manifest diff_id
  layer=$(blob "$work/layer-$file.tar" application/vnd.oci.image.layer.v1.tar)
  diff_id=$(sha256sum "$work/layer-$file.tar" | cut -d' ' -f1)
  printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$entrypoint" "$diff_id" >"$work/config-$file.json"
  config=$(blob "$work/config-$file.json" application/vnd.oci.image.config.v1+json)
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config" "$layer" >"$work/manifest-$file.json"
  manifest=$(blob "$work/manifest-$file.json" application/vnd.oci.image.manifest.v1+json)
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
    "${manifest%\}},\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${name##*:}\"}}" \
    >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  det_tar -C "$layout" -cf "$archive.tmp" .
  mv "$archive.tmp" "$archive"
  printf '%s %s (%d bytes)\n' "$archive" "$name" "$(stat -c %s "$archive")"
}

image spire-rs.test/pause:e2e pause '["/pause"]' "$out/pause.tar"
image spire-rs.test/probe:e2e probe '["/probe"]' "$out/probe.tar"
