#!/usr/bin/env bash
# The project's images without a container engine or a registry to pull from: the
# runtime stage of each Dockerfile rebuilt from Debian packages with mmdebstrap, plus
# the built binary as a layer of its own, assembled by oci-image.sh and pushed to a
# registry with skopeo. The base root filesystem is cached under
# ~/.cache/openvox-code/images by its package list, and its compressed layer under its
# digest (images/gzip), so a new binary only changes (and only pushes) the top layer.
# The binary is copied without its symbols (`strip`), as the release profile's
# `strip = "symbols"` leaves it; a debug build keeps its optimisation level.
#
#   node-images.sh worker BINARY REGISTRY/REPO:TAG       job-image/Dockerfile
#   node-images.sh controller BINARY REGISTRY/REPO:TAG   controller/Dockerfile
#   node-images.sh server REGISTRY/REPO:TAG              a stand-in for an OpenVox server:
#                                                        Debian's puppet, to compile code
#                                                        mounted as an image volume
#   node-images.sh check                                 only compare the package lists
#                                                        below with the Dockerfiles
#   node-images.sh bases                                 build (or find) the three cached
#                                                        base root filesystems
#
# Each image's package list is written here and checked against its Dockerfile before
# every build: a build (and `check`) fails when they drift apart. Prints the manifest
# digest last.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${OPENVOX_CODE_CACHE:-$HOME/.cache/openvox-code}/images"
suite=bookworm
die() { echo "node-images: $*" >&2; exit 1; }

# job-image/Dockerfile: FROM debian:bookworm-slim, apt-get install of exactly these.
worker_packages=(ca-certificates git openssh-client)
# controller/Dockerfile: FROM gcr.io/distroless/cc-debian12:nonroot, whose contents are
# these Debian packages (distroless' cc image: glibc, libgcc, libstdc++, libssl, CA
# certificates, tzdata, netbase) and a nonroot user 65532.
controller_base="gcr.io/distroless/cc-debian12:nonroot"
controller_packages=(base-files netbase tzdata ca-certificates libc6 libgcc-s1 libgomp1 libstdc++6 libssl3)

# The server stand-in: Debian's puppet (7.x in bookworm), no Dockerfile of ours.
server_packages=(puppet)

# Packages the final stage of a Dockerfile installs with apt-get install.
dockerfile_packages() {
  awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END {printf "%s", stage}' "$1" |
    sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | grep -o 'apt-get install[^&;]*' |
    tr ' ' '\n' | grep -vE '^(apt-get|install|-.*|)$' | sort -u
}

check_lists() {
  local want got ok=0
  want=$(printf '%s\n' "${worker_packages[@]}" | sort -u)
  got=$(dockerfile_packages "$repo/job-image/Dockerfile")
  if [[ "$want" != "$got" ]]; then
    echo "FAIL job-image/Dockerfile installs [$(echo $got)], node-images.sh builds [$(echo $want)]" >&2; ok=1
  fi
  local from
  from=$(grep '^FROM ' "$repo/controller/Dockerfile" | tail -1 | awk '{print $2}')
  if [[ "$from" != "$controller_base" ]]; then
    echo "FAIL controller/Dockerfile's runtime stage is $from, node-images.sh rebuilds $controller_base" >&2; ok=1
  fi
  if [[ -n "$(dockerfile_packages "$repo/controller/Dockerfile")" ]]; then
    echo "FAIL controller/Dockerfile installs packages, node-images.sh installs none on $controller_base" >&2; ok=1
  fi
  return $ok
}

# base NAME VARIANT PACKAGES... : the cached root filesystem of one image's base
base_rootfs() {
  local name=$1 variant=$2; shift 2
  local key dir
  key=$( (echo "$suite $variant 1"; printf '%s\n' "$@"; declare -f base_hooks_"$name") | sha256sum | cut -c1-12)
  dir="$cache/$name-base-$key"
  if [[ ! -d "$dir/rootfs" ]]; then
    mkdir -p "$cache"
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    local t0=$SECONDS
    "base_hooks_$name" "$dir.partial/rootfs" "$variant" "$@" >&2
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
    echo "built the $name base ($(du -sh "$dir/rootfs" | cut -f1)) in $((SECONDS - t0))s" >&2
  fi
  echo "$dir/rootfs"
}

# debian:bookworm-slim's make-up: minbase without docs, man pages and locales.
slim=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*')

base_hooks_worker() {
  local rootfs=$1 variant=$2; shift 2
  local IFS=,
  mmdebstrap --quiet --variant="$variant" --include="$*" "${slim[@]}" \
    --customize-hook='chroot "$1" useradd --uid 65532 --user-group --no-create-home --home-dir /tmp worker' \
    "$suite" "$rootfs"
}

base_hooks_controller() {
  local rootfs=$1 variant=$2; shift 2
  local IFS=,
  # Unpacked only (no dpkg, no shell, as distroless); what the maintainer scripts
  # would do is done here: the CA bundle, the nonroot user.
  mmdebstrap --quiet --variant="$variant" --include="$*" "${slim[@]}" \
    --customize-hook='mkdir -p "$1/etc/ssl/certs" && cat "$1"/usr/share/ca-certificates/*/*.crt >"$1/etc/ssl/certs/ca-certificates.crt"' \
    --customize-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >"$1/etc/passwd"' \
    --customize-hook='printf "root:x:0:\nnonroot:x:65532:\n" >"$1/etc/group" && mkdir -p "$1/home/nonroot" "$1/tmp" && chown 65532:65532 "$1/home/nonroot" && chmod 1777 "$1/tmp"' \
    --customize-hook='rm -rf "$1/var/lib/dpkg" "$1/var/cache/apt" "$1/var/lib/apt"' \
    "$suite" "$rootfs"
}

base_hooks_server() {
  local rootfs=$1 variant=$2; shift 2
  local IFS=,
  mmdebstrap --quiet --variant="$variant" --include="$*" "${slim[@]}" \
    --customize-hook='chroot "$1" useradd --uid 65532 --user-group --create-home --home-dir /home/puppet puppet-user' \
    "$suite" "$rootfs"
}

server_image() {
  local ref=$1 base out digest
  base=$(base_rootfs server minbase "${server_packages[@]}")
  out=$(mktemp -d)
  digest=$(bash "$here/oci-image.sh" --name "$ref" --gzip-cache "$cache/gzip" --cached-layer "$base" \
    --user 65532:65532 --env HOME=/home/puppet --cmd '["/usr/bin/puppet","--version"]' "$out/oci" | tail -1)
  push "$out/oci" "$ref"
  rm -rf "$out"
  echo "$digest"
}

# push LAYOUT REF: to a loopback registry over plain HTTP
push() {
  skopeo copy --quiet --dest-tls-verify=false "oci:$1:${2##*:}" "docker://$2"
}

image() {
  local kind=$1 binary=$2 ref=$3 base top out digest
  [[ -x "$binary" ]] || die "$binary is not an executable"
  check_lists || die "package lists drifted; fix node-images.sh or the Dockerfile"
  command -v mmdebstrap >/dev/null || bash "$here/build-node.sh" deps
  case $kind in
    worker) base=$(base_rootfs worker minbase "${worker_packages[@]}") ;;
    controller) base=$(base_rootfs controller extract "${controller_packages[@]}") ;;
  esac
  out=$(mktemp -d)
  top="$out/top"
  mkdir -p "$top/usr/local/bin"
  strip --strip-all -o "$top/usr/local/bin/openvox-code-$kind" "$binary"
  chmod 0755 "$top/usr/local/bin/openvox-code-$kind"
  case $kind in
    worker)
      digest=$(bash "$here/oci-image.sh" --name "$ref" --gzip-cache "$cache/gzip" \
        --cached-layer "$base" --layer "$top" --entrypoint '["/usr/local/bin/openvox-code-worker"]' \
        --user 65532:65532 --env HOME=/tmp --env TMPDIR=/tmp "$out/oci" | tail -1) ;;
    controller)
      digest=$(bash "$here/oci-image.sh" --name "$ref" --gzip-cache "$cache/gzip" \
        --cached-layer "$base" --layer "$top" --entrypoint '["/usr/local/bin/openvox-code-controller"]' \
        --user 65532:65532 --env MALLOC_ARENA_MAX=2 "$out/oci" | tail -1) ;;
  esac
  push "$out/oci" "$ref"
  rm -rf "$out"
  echo "$digest"
}

case ${1:-} in
  server) [[ $# == 2 ]] || die "usage: node-images.sh server REGISTRY/REPO:TAG"; server_image "$2" ;;
  check) check_lists && echo "ok   node-images.sh package lists match the Dockerfiles" ;;
  bases)
    check_lists || die "package lists drifted; fix node-images.sh or the Dockerfile"
    command -v mmdebstrap >/dev/null || bash "$here/build-node.sh" deps
    base_rootfs worker minbase "${worker_packages[@]}" >/dev/null
    base_rootfs controller extract "${controller_packages[@]}" >/dev/null
    base_rootfs server minbase "${server_packages[@]}" >/dev/null ;;
  worker|controller) [[ $# == 3 ]] || die "usage: node-images.sh $1 BINARY REGISTRY/REPO:TAG"; image "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
