#!/usr/bin/env bash
# Builds the real node of the node test tier from the Go module proxy: kubelet and
# kube-scheduler (wrapper module tests/node/kubelet, the same k8s.io/kubernetes version
# as the control plane in tests/k8s), containerd 2.x with its runc shim and ctr
# (wrapper module tests/node/containerd), crictl (tests/node/crictl), and the sandbox's
# pause binary (upstream
# build/pause/linux/pause.c from the k8s.io/kubernetes module, built with gcc -static). runc and the CNI plugins come from Debian (install_node_deps
# below, also run by install-deps.sh). Cached outside the checkout, keyed by both
# versions and both wrappers' go.mod/go.sum; a second run with the same inputs returns
# at once. Prints the bin directory as its last line.
#
#   build-node.sh            build (or find) the binaries, print the bin directory
#   build-node.sh deps       only install the Debian packages the node needs
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
kubelet_module="$here/node/kubelet"
containerd_module="$here/node/containerd"
crictl_module="$here/node/crictl"

# Debian packages of the node: the OCI runtime, the CNI plugins (bridge, host-local,
# loopback, portmap) and mmdebstrap for root filesystems of test images.
install_node_deps() {
  local -a packages=(runc containernetworking-plugins mmdebstrap iptables gcc libc6-dev) missing=()
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    local sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

if [[ "${1:-}" == deps ]]; then
  install_node_deps
  exit 0
fi

k8s_version=$(grep -E "^\s*k8s.io/kubernetes v" "$kubelet_module/go.mod" | awk "{print \$2}" | head -1)
control_plane_version=$(grep -E "^\s*k8s.io/kubernetes v" "$here/k8s/go.mod" | awk "{print \$2}" | head -1)
[[ "$k8s_version" == "$control_plane_version" ]] ||
  { echo "tests/node/kubelet has k8s.io/kubernetes $k8s_version, the control plane $control_plane_version" >&2; exit 1; }
containerd_version=$(grep -E "^\s*github.com/containerd/containerd/v2 v" "$containerd_module/go.mod" | awk "{print \$2}" | head -1)
# Bump when the build flags below change, so cached binaries are rebuilt.
build_format=1
key=$( (echo "$build_format"; cat "$kubelet_module/go.mod" "$kubelet_module/go.sum" \
  "$kubelet_module"/cmd/*/main.go "$containerd_module/go.mod" "$containerd_module/go.sum" \
  "$crictl_module/go.mod" "$crictl_module/go.sum") |
  sha256sum | cut -c1-12)
cache="${OPENVOX_CODE_CACHE:-$HOME/.cache/openvox-code}"
bin="$cache/node/$k8s_version-containerd-$containerd_version-$key/bin"
binaries=(kubelet kube-scheduler containerd containerd-shim-runc-v2 ctr crictl pause)

built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}
if built; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/node"
exec 9>"$cache/node/.build.lock"
flock 9
if built; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build the node" >&2; exit 1; }
mkdir -p "$bin.partial"
start=$(date +%s)
echo "building kubelet $k8s_version and containerd $containerd_version into $bin" \
  "(first run only; takes a while on 2 cores)" >&2
(
  # -trimpath and no DWARF keep the binaries small; CGO off gives static binaries
  # (what containerd's own static release and the Kubernetes release do too).
  export CGO_ENABLED=0 GOFLAGS=-mod=mod
  cd "$kubelet_module"
  minor=${k8s_version#v1.}; minor=${minor%%.*}
  pkg=k8s.io/component-base/version
  stamp="-X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp="$stamp -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  for cmd in kubelet kube-scheduler; do
    t0=$(date +%s)
    go build -trimpath -ldflags="-s -w $stamp" -o "$bin.partial/$cmd" "./cmd/$cmd"
    echo "  built $cmd in $(( $(date +%s) - t0 ))s" >&2
  done
  # The pause binary of the pod sandbox image, as build/pause/Makefile builds it.
  src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  gcc -Os -Wall -Werror -static -DVERSION="$k8s_version-openvox-code" -o "$bin.partial/pause" "$src"
  strip "$bin.partial/pause"

  cd "$containerd_module"
  pkg=github.com/containerd/containerd/v2
  stamp="-X $pkg/version.Version=$containerd_version -X $pkg/version.Revision=go-module-proxy"
  # No btrfs, devmapper or zfs snapshotters: cgo-only or unused here.
  tags=no_btrfs,no_devmapper,no_zfs
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    t0=$(date +%s)
    go build -trimpath -tags "$tags" -ldflags="-s -w $stamp" -o "$bin.partial/$cmd" "$pkg/cmd/$cmd"
    echo "  built $cmd in $(( $(date +%s) - t0 ))s" >&2
  done

  cd "$crictl_module"
  crictl_version=$(grep -E "^\s*sigs.k8s.io/cri-tools v" go.mod | awk "{print \$2}" | head -1)
  t0=$(date +%s)
  go build -trimpath -ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
    -o "$bin.partial/crictl" sigs.k8s.io/cri-tools/cmd/crictl
  echo "  built crictl in $(( $(date +%s) - t0 ))s" >&2
)
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "node built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
