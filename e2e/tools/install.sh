#!/usr/bin/env bash
# Installs the real components the tests and the demo run (etcd, kube-apiserver,
# kubectl, SPIRE, helm, csi-sanity and the reference Go tools; for a real node the
# kubelet, kube-scheduler, containerd and the CNI plugins) at the versions pinned in
# versions.env, into a cache directory outside the clone. runc comes from the
# distribution (Debian's package, installed when missing) because it needs libseccomp.
#
#   install.sh           build what is missing, print progress
#   install.sh --print-bin   print the bin directory for the current pins (builds nothing)
#
# Layout of the cache ($SPIRE_RS_TOOLS_DIR, default ~/.cache/spire-rs-tools):
#   pkg/<tool>/<key>/    one directory per tool and cache key; the key hashes the
#                        version and, for wrapper modules, their go.mod and go.sum
#   bin/<set key>/       symlinks to the binaries of the current set of pins
#   go/mod               Go module cache: downloads are kept, so a pin change only recompiles
#   go/build             Go build cache, removed after a run that built everything it had
#                        to (it grows to ~10 GB and only speeds up retries of a failed run)
# A finished tool directory holds a `.done` stamp; anything without it is rebuilt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

root=${SPIRE_RS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-rs-tools}

# tool name -> cache key. The key hashes what decides the binary: the wrapper module's
# files (tools/<name>/), or the pinned version, and the text of the tool's build function.
declare -A key
# Tools built from a wrapper module in tools/<name>/ (go.mod, go.sum, maybe main.go).
# kubelet (with kube-scheduler) is the real node's (issue #13), as are containerd and
# cni-plugins below; each tool has its own key, so adding them rebuilt none of the others.
wrapped=(etcd kubernetes spire spire-controller-manager spiffe-csi kubelet)
# Tools installed with `go install pkg@version` (their module proxy answers serve the
# version list that go install reads).
installed=(helm csi-sanity containerd cni-plugins)
# The node's container images (OCI archives), built by a script of this repository.
generated=(node-images)
declare -A inputs_of=([node-images]="$here/../../images/node-images.sh $here/../../images/oci-image.sh $here/../../images/node/main.go")
# Shell functions a recipe calls; their text is part of the tool's key.
declare -A helpers_of=([kubelet]=kubernetes_ldflags)
tools=("${wrapped[@]}" "${installed[@]}" "${generated[@]}")
builder() { local t=${1//-/_}; echo "build_$t"; }

# Pins in versions.env must agree with the wrapper modules that actually decide the version.
check_pin() { # module file module version
  grep -qE "^(require )?[[:space:]]*$2 $3( // indirect)?\$" "$1" || {
    echo "install.sh: $1 does not require $2 $3 as versions.env says; update one of them" >&2
    exit 1
  }
}
check_pin "$here/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin "$here/kubernetes/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin "$here/kubelet/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin "$here/spire/go.mod" github.com/spiffe/spire "$SPIRE_VERSION"
check_pin "$here/spire-controller-manager/go.mod" github.com/spiffe/spire-controller-manager "$SPIRE_CONTROLLER_MANAGER_VERSION"
check_pin "$here/spiffe-csi/go.mod" github.com/spiffe/spiffe-csi "$SPIFFE_CSI_VERSION"

export GOTOOLCHAIN=local
export GOMODCACHE="$root/go/mod" GOCACHE="$root/go/build"
export GOFLAGS=-buildvcs=false
# The checksum database is not reachable from every machine; the wrapper modules carry
# a go.sum, and the module proxy serves the pinned releases.
export GOSUMDB=off
export CGO_ENABLED=1

started=$SECONDS
built=0

# build <tool> <command...>: runs the command with $out set to a fresh directory,
# then publishes it under the tool's key.
build() {
  local tool=$1; shift
  local dest="$root/pkg/$tool/${key[$tool]}"
  if [[ -f $dest/.done ]]; then
    printf '  %-26s %-12s cached\n' "$tool" "${key[$tool]}"
    return
  fi
  printf '  %-26s %-12s building ...' "$tool" "${key[$tool]}"
  local t0=$SECONDS
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  local log="$dest.tmp/build.log"
  if ! out="$dest.tmp" "$@" >"$log" 2>&1; then
    echo " FAILED"
    tail -n 40 "$log" >&2
    echo "install.sh: building $tool failed; full log: $log" >&2
    exit 1
  fi
  touch "$dest.tmp/.done"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  echo " done in $((SECONDS - t0))s"
  built=$((built + 1))
}

build_etcd() {
  (cd "$here/etcd" && go build -trimpath -o "$out/etcd" .)
}

build_kubernetes() {
  local v=${KUBERNETES_VERSION#v} ldflags=""
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  # The same variables the Kubernetes release build sets, so /version reports the real release.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl)
}

# The variables the Kubernetes release build sets, so binaries report the real release.
# (build_kubernetes keeps its own copy of these lines: moving them would change its key.)
kubernetes_ldflags() {
  local v=${KUBERNETES_VERSION#v} ldflags=""
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

build_kubelet() {
  (cd "$here/kubelet" && go build -trimpath -ldflags "$(kubernetes_ldflags)" -o "$out/" \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-scheduler)
}

build_containerd() {
  # Static (no cgo) and without the snapshotters that need C libraries; the node uses
  # overlayfs. The ldflag makes `containerd --version` report the release.
  CGO_ENABLED=0 go_install -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
}

build_cni_plugins() {
  # containerd's CRI reports the node's network ready only with a CNI configuration
  # whose plugins exist; the node's pods use the host network, so these stay idle.
  CGO_ENABLED=0 go_install \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION"
}

build_node_images() { bash "$here/../../images/node-images.sh" "$out"; }

# runc needs libseccomp (cgo), so the distribution's build is used rather than one of ours.
# Installs Debian's package when runc is missing; says what it found or did.
ensure_runc() {
  local path
  if path=$(command -v runc); then
    printf '  %-26s %-12s present: %s\n' runc system "$path"
    return
  fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    printf '  %-26s %-12s missing: apt-get install runc ...' runc system
    if { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends runc; } \
      >"$root/runc-install.log" 2>&1; then
      echo " done"
      return
    fi
    echo " FAILED (log: $root/runc-install.log)"
  fi
  echo "install.sh: runc is missing and could not be installed; the node tests need it (apt-get install runc)" >&2
}

# PostgreSQL backs the SPIRE servers of the HA and fault tests (two servers, one database,
# as production runs them). Debian's server package, installed when its binaries are missing;
# the harness finds them in /usr/lib/postgresql/<major>/bin (see e2e/src/postgres.rs).
ensure_postgres() {
  local path
  if path=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1) && [[ -n $path ]]; then
    printf '  %-26s %-12s present: %s\n' postgresql system "$path"
    return
  fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    printf '  %-26s %-12s missing: apt-get install postgresql-15 ...' postgresql system
    if { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15; } \
      >"$root/postgresql-install.log" 2>&1; then
      echo " done"
      return
    fi
    echo " FAILED (log: $root/postgresql-install.log)"
  fi
  echo "install.sh: PostgreSQL is missing and could not be installed; the HA and fault tests need it (apt-get install postgresql-15)" >&2
}

# go_install <package@version>...
go_install() {
  GOBIN="$out" go install -trimpath "$@"
}

build_spire() {
  # Without the tag SPIRE reports itself as "<version>-dev-unk".
  (cd "$here/spire" && go build -trimpath -ldflags "-X github.com/spiffe/spire/pkg/common/version.gittag=${SPIRE_VERSION#v}" -o "$out/" \
    github.com/spiffe/spire/cmd/spire-server \
    github.com/spiffe/spire/cmd/spire-agent \
    github.com/spiffe/spire/support/oidc-discovery-provider)
}

build_helm() { go_install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"; }

build_csi_sanity() { go_install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_TEST_VERSION"; }

build_spire_controller_manager() {
  # The main package is cmd/, which `go install` would name `cmd`.
  (cd "$here/spire-controller-manager" && go build -trimpath -o "$out/spire-controller-manager" \
    github.com/spiffe/spire-controller-manager/cmd)
  # Its CRDs, which the reference tests apply exactly as released.
  local src
  src=$(cd "$here/spire-controller-manager" && go list -m -f '{{.Dir}}' github.com/spiffe/spire-controller-manager)
  mkdir -p "$out/crds"
  install -m 0644 "$src"/config/crd/bases/*.yaml "$out/crds/"
}

build_spiffe_csi() {
  (cd "$here/spiffe-csi" && go build -trimpath -o "$out/" github.com/spiffe/spiffe-csi/cmd/spiffe-csi-driver)
}

shopt -s nullglob
for t in "${tools[@]}"; do
  inputs=()
  if [[ " ${wrapped[*]} " == *" $t "* ]]; then
    inputs=("$here/$t"/go.mod "$here/$t"/go.sum "$here/$t"/*.go)
  fi
  # shellcheck disable=SC2206 # the paths have no spaces
  [[ -n ${inputs_of[$t]:-} ]] && inputs=(${inputs_of[$t]})
  recipe=$(declare -f "$(builder "$t")" ${helpers_of[$t]:-})
  # The values of the pins the recipe names (e.g. $HELM_VERSION), not just their names.
  for v in $(grep -oE '[A-Z_]+_VERSION' <<<"$recipe" | sort -u); do
    recipe+=$'\n'"$v=${!v}"
  done
  key[$t]=$( { cat "${inputs[@]}" /dev/null; echo "$recipe"; } | sha256sum | cut -c1-12)
done
shopt -u nullglob
set_key=$(for t in "${tools[@]}"; do echo "$t=${key[$t]}"; done | sha256sum | cut -c1-12)
bin="$root/bin/$set_key"

if [[ ${1:-} == --print-bin ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "install.sh: go is not on PATH (Go 1.26 is required)" >&2; exit 1; }

echo "make tools: installing into $root"
for t in "${tools[@]}"; do
  build "$t" "$(builder "$t")"
done
ensure_runc
ensure_postgres

# Publish the set: a fresh directory of symlinks, swapped in atomically.
mkdir -p "$root/bin"
tmp=$(mktemp -d "$root/bin/.tmp.XXXXXX")
for t in "${tools[@]}"; do
  for f in "$root/pkg/$t/${key[$t]}"/*; do
    # Executables, and the node's image archives.
    [[ -f $f && ( -x $f || $f == *.tar ) ]] && ln -s "$f" "$tmp/$(basename "$f")"
  done
done
# runc beside the rest, so the harness finds every node binary in one directory.
if runc_path=$(command -v runc); then
  ln -s "$runc_path" "$tmp/runc"
fi
if [[ -d $bin ]] && diff <(ls -l "$tmp" | awk '{print $9, $11}') <(ls -l "$bin" | awk '{print $9, $11}') >/dev/null; then
  rm -rf "$tmp"
else
  rm -rf "$bin"
  mv "$tmp" "$bin"
fi

if (( built > 0 )); then
  go clean -cache
fi

echo "make tools: $built built, $(( ${#tools[@]} - built )) cached, $((SECONDS - started))s; binaries in $bin"
