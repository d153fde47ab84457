#!/usr/bin/env bash
# Assembles directories into an OCI image layout, one gzip layer per directory, with
# reproducible layers (sorted names, mtime 0, numeric owners, no atime/ctime): the same
# inputs give the same digests. No container engine involved. Push the result with
# `skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:TAG`, or make an archive for
# `ctr images import` with --archive.
#
#   oci-image.sh --name REF [--layer DIR | --cached-layer DIR]... [--entrypoint JSON]
#                [--cmd JSON] [--user UID:GID] [--env NAME=VALUE]... [--archive FILE]
#                [--gzip-cache DIR] LAYOUT
#
#   --name REF        full reference, e.g. 127.0.0.1:5000/busybox:1 (its tag is the
#                     layout's ref name; io.containerd.image.name carries all of it)
#   --layer DIR       a root filesystem or a directory of files (repeatable, bottom first)
#   --entrypoint JSON, --cmd JSON   the config's Entrypoint / Cmd, as JSON arrays
#   --user UID:GID    the config's User
#   --env NAME=VALUE  an environment variable besides PATH (repeatable; no quotes)
#   --archive FILE    also write the layout as one tar (for `ctr images import`)
#   --cached-layer DIR   a layer like --layer whose compressed form is kept in the
#                     --gzip-cache DIR under its uncompressed digest (the diff_id) and
#                     taken from there next time: the tar is still made and hashed, the
#                     gzip (most of the time of a big base layer) is skipped. Same
#                     bytes, same digests as without the cache. For layers that rarely
#                     change (a base root filesystem), so the cache does not grow.
#
# Prints the manifest digest (sha256:…) as its last line.
set -euo pipefail

die() { echo "oci-image: $*" >&2; exit 1; }

name="" entrypoint=null cmd=null archive="" user="" gzip_cache="" layers=()
env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
while (($#)); do
  case $1 in
    --name) name=$2; shift ;;
    --layer) layers+=("plain:$2"); shift ;;
    --cached-layer) layers+=("cached:$2"); shift ;;
    --entrypoint) entrypoint=$2; shift ;;
    --cmd) cmd=$2; shift ;;
    --archive) archive=$2; shift ;;
    --gzip-cache) gzip_cache=$2; shift ;;
    --user) user=$2; shift ;;
    --env) [[ "$2" != *[\\\"]* ]] || die "--env $2: no quotes or backslashes"; env+=",\"$2\""; shift ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
  shift
done
layout=${1:-}
[[ -z "$gzip_cache" ]] && [[ " ${layers[*]} " == *" cached:"* ]] && die "--cached-layer needs --gzip-cache"
[[ -n "$layout" && -n "$name" && ${#layers[@]} -gt 0 ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
tag=${name##*/}; tag=${tag#*:}
[[ "$tag" != "${name##*/}" ]] || tag=latest

rm -rf "$layout"
mkdir -p "$layout/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

# put FILE: move FILE into the blob store, print its digest and size
put() {
  local sum size
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/$sum"
  echo "sha256:$sum $size"
}

layer_descs="" diff_ids=""
for layer in "${layers[@]}"; do
  dir=${layer#*:}
  [[ -d "$dir" ]] || die "layer $dir is not a directory"
  tmp="$layout/layer.tar"
  tar --sort=name --mtime=@0 --numeric-owner --xattrs --xattrs-include='security.capability' \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$dir" -cf "$tmp" .
  diff_id=sha256:$(sha256sum "$tmp" | cut -d' ' -f1)
  cached=""
  [[ "$layer" == cached:* ]] && cached="$gzip_cache/${diff_id#sha256:}.tar.gz"
  if [[ -n "$cached" && -s "$cached" ]]; then
    rm -f "$tmp"
    cp "$cached" "$tmp.gz"
  else
    gzip -n -6 "$tmp"
    if [[ -n "$cached" ]]; then
      mkdir -p "$gzip_cache"
      cp "$tmp.gz" "$cached.partial.$$" && mv "$cached.partial.$$" "$cached"
    fi
  fi
  read -r digest size < <(put "$tmp.gz")
  layer_descs+="${layer_descs:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$digest\",\"size\":$size}"
  diff_ids+="${diff_ids:+,}\"$diff_id\""
done

printf '{"architecture":"amd64","os":"linux","config":{"User":"%s","Entrypoint":%s,"Cmd":%s,"Env":[%s]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$user" "$entrypoint" "$cmd" "$env" "$diff_ids" >"$layout/config.json"
read -r config_digest config_size < <(put "$layout/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
  "$config_digest" "$config_size" "$layer_descs" >"$layout/manifest.json"
read -r manifest_digest manifest_size < <(put "$layout/manifest.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" "$tag" >"$layout/index.json"

if [[ -n "$archive" ]]; then
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$archive" .
fi
echo "$manifest_digest"
