#!/usr/bin/env bash
# Builds the real node's container images without Docker or a registry, as OCI image
# archives that `ctr -n k8s.io images import` loads (`make tools` runs this):
#
#   node-images.sh OUTDIR
#     OUTDIR/pause.tar   spire-rs.test/pause:e2e   the pod sandbox image containerd is configured with
#     OUTDIR/probe.tar   spire-rs.test/probe:e2e   a test image: `/probe echo WORD...` prints a line
#
# Both hold one static binary, node/main.go (Go, no cgo, so no libc is needed), packed by
# oci-image.sh.
set -euo pipefail

out=${1:?usage: node-images.sh OUTDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$here/node" && CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o "$work/node-probe" main.go)

for image in pause probe; do
  install -D -m 0755 "$work/node-probe" "$work/$image/$image"
  bash "$here/oci-image.sh" "spire-rs.test/$image:e2e" "$work/$image" "[\"/$image\"]" "$out/$image.tar"
done
