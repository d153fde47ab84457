#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from the Go module proxy
# (wrapper module in tests/k8s) into a cache directory keyed by the Kubernetes
# version and the wrapper's go.sum, outside the checkout. A second run with the same
# inputs returns at once. Prints the bin directory as its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
module="$here/k8s"
version=$(grep -E "^\s*k8s.io/kubernetes v" "$module/go.mod" | awk "{print \$2}" | head -1)
# Bump when the build flags below change, so cached binaries are rebuilt.
build_format=2
key=$( (echo "$build_format"; cat "$module/go.mod" "$module/go.sum" "$module"/cmd/*/main.go) | sha256sum | cut -c1-12)
cache="${OPENVOX_CODE_CACHE:-$HOME/.cache/openvox-code}"
bin="$cache/control-plane/$version-$key/bin"

built() { [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/etcd" ]]; }
if built; then
  echo "$bin"
  exit 0
fi

# Test binaries start control planes in parallel; one builds, the others wait for it.
mkdir -p "$cache/control-plane"
exec 9>"$cache/control-plane/.build.lock"
flock 9
if built; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build the control plane" >&2; exit 1; }
mkdir -p "$bin.partial"
start=$(date +%s)
echo "building Kubernetes $version control plane into $bin (first run only; takes a while on 2 cores)" >&2
(
  cd "$module"
  # -trimpath and no DWARF keep the binaries small; CGO off gives static binaries.
  export CGO_ENABLED=0 GOFLAGS=-mod=mod
  # Stamp the Kubernetes version the way the upstream release build does, so clients
  # (kubectl's skew check, Helm's kubeVersion) see v1.x.y and not v0.0.0-master.
  minor=${version#v1.}; minor=${minor%%.*}
  pkg=k8s.io/component-base/version
  stamp="-X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp="$stamp -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  for cmd in etcd kube-apiserver kube-controller-manager; do
    t0=$(date +%s)
    go build -trimpath -ldflags="-s -w $stamp" -o "$bin.partial/$cmd" "./cmd/$cmd"
    echo "  built $cmd in $(( $(date +%s) - t0 ))s" >&2
  done
)
rm -rf "$bin"
mv "$bin.partial" "$bin"
# Older builds stay: a control plane may be starting from one right now.
# `make clean-cache` removes them.
echo "control plane built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
