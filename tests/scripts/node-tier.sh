#!/usr/bin/env bash
# The real-node tier of `make test` (issue 18): the few tests that need a container
# runtime, on the node of node.sh (containerd 2.4, runc, kubelet and kube-scheduler
# 1.37) joined to a control plane of cluster.sh, with this checkout's own binaries in
# images built by node-images.sh from Debian packages:
#
#   1. the controller runs from its image under the Helm chart (charts/openvox-code,
#      chart defaults but for the image names), restricted Pod Security Standard; its
#      Deployment becomes Available (readiness probe), /healthz and /readyz answer;
#   2. a CodeSource (control repository on a git daemon, a Puppetfile with one git
#      module, image output to a registry) makes the controller launch a worker Job,
#      which runs as a real pod from the worker image (job-image/Dockerfile's
#      packages + the binary) under the restricted standard; `kubectl logs
#      job/<status.activeJob>` shows its step lines; status.lastBuild gets the digest;
#   3. a server pod (Debian's puppet) mounts that digest as an image volume at
#      /etc/puppetlabs/code/environments: `puppet parser validate` and
#      `puppet apply --noop` compile from it, the git module included;
#   4. one branch changes, a head check is requested, a new build publishes a new
#      digest; a second server pod mounts it, and the registry's request log says the
#      node fetched the new manifest, its config and the changed environment's layer,
#      nothing else (not the unchanged environment's layer);
#   4b. the worker builds the same branches with zstd layers (--compression zstd, what
#      a CodeSource's output.compression asks for); a third server pod mounts that
#      image (containerd reads tar+zstd layers) and compiles staging;
#   5. the controller pod never restarted (liveness probe) and is still Ready.
#
# Every service listens on 127.0.0.1; pods reach the registry and the git daemon at
# 10.88.0.1 through `node.sh expose`, and the API server through the `kubernetes`
# Service (node.sh). Everything runs in a temporary directory and is stopped at the
# end, also on failure (then with the state of pods, events and logs printed first).
# The first failed check stops the tier.
#
#   node-tier.sh [--worker BINARY] [--controller BINARY] [--chart DIR]
#       default: target/debug/openvox-code-{worker,controller} (what `make test` built;
#       $OPENVOX_CODE_WORKER_BINARY / $OPENVOX_CODE_CONTROLLER_BINARY override) and
#       charts/openvox-code (--chart: another copy of it, to try a change of the chart)
#   OPENVOX_CODE_KEEP_NODE_TIER=1   keep the temporary directory (logs) afterwards
#
# Needs root (the node: iptables, mounts, cgroups) and no other node on this machine.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
worker_bin=${OPENVOX_CODE_WORKER_BINARY:-$repo/target/debug/openvox-code-worker}
controller_bin=${OPENVOX_CODE_CONTROLLER_BINARY:-$repo/target/debug/openvox-code-controller}
chart=$repo/charts/openvox-code
while (($#)); do
  case $1 in
    --worker) worker_bin=$2; shift ;;
    --controller) controller_bin=$2; shift ;;
    --chart) chart=$2; shift ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
  shift
done

say() { echo "node-tier: $*"; }
die() { echo "node-tier: FAIL $*" >&2; exit 1; }
elapsed() {
  local start=${1/[.,]/} end=${2:-$EPOCHREALTIME}
  end=${end/[.,]/}
  local tenths=$(((end - start) / 100000))
  echo "$((tenths / 10)).$((tenths % 10))"
}
# seconds between two RFC 3339 times of the API
between() { echo $(($(date -d "$2" +%s) - $(date -d "$1" +%s))); }
passed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
# check CONDITION-STATUS MESSAGE: ok, or stop the tier
check() { if [[ $1 == 0 ]]; then ok "$2"; else die "$2"; fi; }

[[ $(id -u) == 0 ]] || die "the node needs root (iptables, mounts, cgroups)"
[[ -x "$worker_bin" ]] || die "no worker binary at $worker_bin (cargo build --bins)"
[[ -x "$controller_bin" ]] || die "no controller binary at $controller_bin (cargo build --bins)"
if ip link show ovc0 >/dev/null 2>&1; then
  die "the bridge ovc0 exists: another node runs on this machine (make node-down, or node.sh down with its OPENVOX_CODE_NODE_DIR)"
fi

t_start=$EPOCHREALTIME
work=$(mktemp -d /tmp/openvox-code-node-tier.XXXXXX)
export OPENVOX_CODE_CLUSTER_DIR="$work/cluster" OPENVOX_CODE_NODE_DIR="$work/node"
registry_pid="" git_pid="" kubeconfig=""

diagnose() {
  [[ -n "$kubeconfig" ]] || return 0
  echo "--- state at the failure" >&2
  k get nodes,pods,jobs -A -o wide >&2 2>&1 || true
  k get codesource -n puppet -o yaml >&2 2>&1 || true
  k get events -A --sort-by=.lastTimestamp 2>&1 | tail -40 >&2 || true
  echo "--- controller log (last 40 lines)" >&2
  k -n openvox-code logs deploy/openvox-code --tail=40 >&2 2>&1 || true
  echo "--- worker pods' logs (last 20 lines each)" >&2
  k -n puppet logs -l app.kubernetes.io/component=worker --prefix --tail=20 >&2 2>&1 || true
  local name
  for name in kubelet containerd; do
    echo "--- $name log (last 20 lines)" >&2
    tail -n 20 "$work/node/logs/$name.log" >&2 2>/dev/null || true
  done
}
finish() {
  local rc=$?
  ((rc == 0)) || diagnose
  bash "$here/node.sh" down >/dev/null 2>&1 || true
  bash "$here/cluster.sh" down >/dev/null 2>&1 || true
  [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null || true
  [[ -n "$git_pid" ]] && kill "$git_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ -n "${OPENVOX_CODE_KEEP_NODE_TIER:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
  if ((rc == 0)); then
    say "$passed checks passed in $(elapsed "$t_start")s"
  else
    say "failed after $passed passed checks ($(elapsed "$t_start")s)"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ---------------------------------------------------------------------------
# Inputs: the node's binaries and packages, kubectl and helm (all cached)

bash "$here/build-node.sh" deps
bash "$here/build-node.sh" >/dev/null
tools=$(bash "$here/install-kubectl-helm.sh" 2>/dev/null | tail -1)
kubectl=$tools/kubectl helm=$tools/helm
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

# free_port, wait_port
source "$here/ports.sh"

# ---------------------------------------------------------------------------
# Host services: a registry with a request log, a git daemon

free_port reg_port
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $work/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$reg_port}
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
registry_pid=$!
free_port git_port
mkdir -p "$work/git"
git daemon --export-all --base-path="$work/git" --listen=127.0.0.1 --port="$git_port" \
  --reuseaddr >"$work/git-daemon.log" 2>&1 &
git_pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$reg_port/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$reg_port/v2/" >/dev/null || die "the registry did not start"

# ---------------------------------------------------------------------------
# The control plane (no CodeSource or Pool CRD: the chart installs them) and the node

t0=$EPOCHREALTIME
kubeconfig=$(bash "$here/cluster.sh" up --no-gateway-api --no-codesource-crd --pool-crd none 2>"$work/cluster-up.log" | tail -1) ||
  { cat "$work/cluster-up.log" >&2; die "control plane did not start"; }
t1=$EPOCHREALTIME
bash "$here/node.sh" up >/dev/null 2>"$work/node-up.log" || { cat "$work/node-up.log" >&2; die "node did not start"; }
host=$(sed -n 's/^HOST_ADDRESS=//p' "$work/node/node.env")
bash "$here/node.sh" expose "$reg_port" "$git_port"
ok "node Ready (control plane $(elapsed "$t0" "$t1")s, node $(elapsed "$t1")s)"
# Pods and containerd reach the registry and git here; the host reaches them too.
reg=$host:$reg_port
git_base=git://$host:$git_port

# ---------------------------------------------------------------------------
# Images: this checkout's binaries on the Dockerfiles' packages, and the server stand-in

t0=$EPOCHREALTIME
worker_digest=$(bash "$here/node-images.sh" worker "$worker_bin" "127.0.0.1:$reg_port/openvox-code-worker:node-tier" | tail -1)
t1=$EPOCHREALTIME
controller_digest=$(bash "$here/node-images.sh" controller "$controller_bin" "127.0.0.1:$reg_port/openvox-code-controller:node-tier" | tail -1)
t2=$EPOCHREALTIME
server_digest=$(bash "$here/node-images.sh" server "127.0.0.1:$reg_port/server:node-tier" | tail -1)
say "images built and pushed in $(elapsed "$t0")s (worker $(elapsed "$t0" "$t1")s, controller $(elapsed "$t1" "$t2")s, server $(elapsed "$t2")s)"

# ---------------------------------------------------------------------------
# 1. The controller from its image, under the chart

for ns in openvox-code puppet; do
  k create namespace "$ns" >/dev/null
  k label namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >/dev/null
done
t0=$EPOCHREALTIME
"$helm" install openvox-code "$chart" --kubeconfig "$kubeconfig" \
  --namespace openvox-code \
  --set image.repository="$reg/openvox-code-controller" --set image.digest="$controller_digest" \
  --set worker.image.repository="$reg/openvox-code-worker" --set worker.image.tag=node-tier \
  >"$work/helm-install.log" 2>&1 || { cat "$work/helm-install.log" >&2; die "helm install"; }
deployment=$(k -n openvox-code get deployment -l app.kubernetes.io/instance=openvox-code -o name)
[[ "$deployment" == deployment.apps/* ]] || die "the chart made no Deployment"
# Available, or stop at the first crash or failed pull instead of waiting for the timeout.
deadline=$((SECONDS + 180)) rc=0
until [[ "$(k -n openvox-code get "$deployment" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]]; do
  restarts=0 waiting=""
  read -r restarts waiting < <(k -n openvox-code get pod -l app.kubernetes.io/instance=openvox-code -o \
    jsonpath='{.items[0].status.containerStatuses[0].restartCount} {.items[0].status.containerStatuses[0].state.waiting.reason}{"\n"}' 2>/dev/null) || true
  if [[ "${restarts:-0}" != 0 || "$waiting" == *Err* || "$waiting" == *BackOff* ]]; then
    echo "controller pod: restarts ${restarts:-0}, waiting: ${waiting:-no}" >&2; rc=1; break
  fi
  ((SECONDS < deadline)) || { rc=1; break; }
  sleep 0.5
done
controller_pod=$(k -n openvox-code get pod -l app.kubernetes.io/instance=openvox-code -o jsonpath='{.items[0].metadata.name}')
image_id=$(k -n openvox-code get pod "$controller_pod" -o jsonpath='{.status.containerStatuses[0].imageID}')
check $rc "controller Deployment Available $(elapsed "$t0")s after helm install (readiness probe passed)"
[[ "$image_id" == *"@$controller_digest" ]] && rc=0 || rc=1
check $rc "the controller pod runs the image built from this checkout ($image_id)"
pod_ip=$(k -n openvox-code get pod "$controller_pod" -o jsonpath='{.status.podIP}')
healthz=$(curl -s -o /dev/null -w '%{http_code}' "http://$pod_ip:8080/healthz") || true
readyz=$(curl -s -o /dev/null -w '%{http_code}' "http://$pod_ip:8080/readyz") || true
[[ "$healthz" == 200 && "$readyz" == 200 ]] && rc=0 || rc=1
check $rc "the probes' endpoints answer on the pod's address $pod_ip:8080 (/healthz $healthz, /readyz $readyz)"

# ---------------------------------------------------------------------------
# 2. A CodeSource: the worker Job as a real pod

# commit DIR MESSAGE: commit everything in DIR with a fixed identity
commit() {
  git -C "$1" add -A
  git -C "$1" -c user.name=tier -c user.email=tier@example.com commit -qm "$2"
}
mkdir -p "$work/src"
git init -q -b main "$work/src/hello"
mkdir -p "$work/src/hello/manifests"
echo 'class hello { notify { "hello from a git module": } }' >"$work/src/hello/manifests/init.pp"
commit "$work/src/hello" "hello module"
git clone -q --bare "$work/src/hello" "$work/git/hello.git"

git init -q -b production "$work/src/control"
mkdir -p "$work/src/control/manifests" "$work/src/control/site/files"
cat >"$work/src/control/Puppetfile" <<EOF
mod 'hello', :git => '$git_base/hello.git', :branch => 'main'
EOF
echo 'node default { include hello; notify { "production": } }' >"$work/src/control/manifests/site.pp"
# Some weight in the environment that does not change, so that not fetching it shows.
head -c 1000000 /dev/urandom | base64 >"$work/src/control/site/files/unchanged.txt"
commit "$work/src/control" production
git -C "$work/src/control" checkout -q -b staging
echo 'node default { include hello; notify { "staging v1": } }' >"$work/src/control/manifests/site.pp"
rm -r "$work/src/control/site"
commit "$work/src/control" "staging v1"
git clone -q --bare "$work/src/control" "$work/git/control.git"

k apply -f - >/dev/null <<EOF
apiVersion: openvox.voxpupuli.org/v1alpha1
kind: CodeSource
metadata: {name: code, namespace: puppet}
spec:
  git: {url: "$git_base/control.git", branches: [production, staging]}
  schedule: "@daily"
  output: {image: "$reg/puppet/code", insecure: true}
EOF
t_cs=$EPOCHREALTIME

# build PREVIOUS_IMAGE: wait for the next build; sets job, job_seconds, image
build() {
  local previous=$1 deadline=$((SECONDS + 120)) seen_job=""
  job=""
  until [[ -n "$job" ]]; do
    job=$(k -n puppet get codesource code -o jsonpath='{.status.activeJob}') || job=""
    [[ -n "$job" && "$job" == "${2:-}" ]] && job=""
    # A failed head check needs no 120 s to be reported.
    if [[ -z "$job" ]]; then
      fetch_failed=$(k -n puppet get codesource code -o \
        jsonpath='{.status.conditions[?(@.type=="FetchFailed")].status}: {.status.conditions[?(@.type=="FetchFailed")].message}') || true
      [[ "$fetch_failed" != True:* ]] || die "the controller's head check failed (FetchFailed${fetch_failed#True})"
    fi
    ((SECONDS < deadline)) || die "no status.activeJob within 120s"
    [[ -n "$job" ]] || sleep 0.2
  done
  rc=0; k -n puppet wait --for=condition=Complete "job/$job" --timeout=300s >/dev/null || rc=$?
  ((rc == 0)) || die "Job $job did not complete"
  deadline=$((SECONDS + 60))
  until image=$(k -n puppet get codesource code -o jsonpath='{.status.lastBuild.image}') &&
    [[ "$image" == "$reg/puppet/code@sha256:"* && "$image" != "$previous" ]]; do
    ((SECONDS < deadline)) || die "status.lastBuild.image did not change after Job $job (it is '$image')"
    sleep 0.2
  done
  local created completed
  created=$(k -n puppet get job "$job" -o jsonpath='{.metadata.creationTimestamp}')
  completed=$(k -n puppet get job "$job" -o jsonpath='{.status.completionTime}')
  job_seconds=$(between "$created" "$completed")
}

build ""
t1=$EPOCHREALTIME
job1=$job image1=$image
pod=$(k -n puppet get pod -l "batch.kubernetes.io/job-name=$job1" -o jsonpath='{.items[0].metadata.name}')
read -r node pod_image pod_image_id pod_created started finished exit_code < <(k -n puppet get pod "$pod" -o \
  jsonpath='{.spec.nodeName} {.spec.containers[0].image} {.status.containerStatuses[0].imageID} {.metadata.creationTimestamp} {.status.containerStatuses[0].state.terminated.startedAt} {.status.containerStatuses[0].state.terminated.finishedAt} {.status.containerStatuses[0].state.terminated.exitCode}{"\n"}')
[[ "$node" == 127.0.0.1 && "$pod_image" == "$reg/openvox-code-worker:node-tier" && "$pod_image_id" == *"@$worker_digest" && "$exit_code" == 0 ]] && rc=0 || rc=1
check $rc "worker Job $job1 ran as pod $pod on node $node from the worker image ($pod_image_id), exit 0, restricted namespace"
say "first build: CodeSource to digest $(elapsed "$t_cs" "$t1")s; Job $job_seconds s (pod created to container start $(between "$pod_created" "$started")s, container ran $(between "$started" "$finished")s)"
logs=$(k -n puppet logs "job/$job1" 2>&1) || true
echo "$logs" >"$work/job1.log"
# Step lines: "<time>  INFO <step> <subject>: <detail> (<seconds>)", see job-image/src/progress.rs.
steps=$(sed -n -E 's/^[^ ]+ +INFO ([a-z]+) +.*\([0-9.ms]+\)$/\1/p' <<<"$logs" | sort -u | tr '\n' ' ')
rc=0
for step in list fetch module env layer send publish status; do [[ " $steps" == *" $step "* ]] || rc=1; done
check $rc "kubectl logs job/$job1 (status.activeJob) shows the step lines: $steps"
[[ "$(k -n puppet get codesource code -o jsonpath='{.status.lastBuild.jobName}')" == "$job1" ]] && rc=0 || rc=1
check $rc "status.lastBuild.image = $image1, written by $job1"

# ---------------------------------------------------------------------------
# 3. A server pod compiles from the image volume

# fetched FROM: "manifests|blobs REF BYTES" per GET of the code repository the registry
# answered from log line FROM on (the server image's own pull is not counted)
fetched() {
  tail -n +"$1" "$work/registry/log" | grep 'response completed' | grep 'http.request.method=GET' |
    sed -n -E 's%.*http.request.uri="/v2/puppet/code/(manifests|blobs)/([^"]*)".*http.response.written=([0-9]+).*%\1 \2 \3%p'
}
# server NAME IMAGE ENVIRONMENT: a pod that validates both environments and compiles one
server() {
  k -n puppet apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: puppet
    image: $reg/server:node-tier
    command: ["/bin/sh", "-c", "E=/etc/puppetlabs/code/environments; ls \$E/$3/modules; puppet parser validate \$E/production/manifests/site.pp \$E/staging/manifests/site.pp && puppet apply --noop --color=false --environmentpath \$E --environment $3 \$E/$3/manifests/site.pp"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts:
    - {name: code, mountPath: /etc/puppetlabs/code/environments}
    - {name: home, mountPath: /home/puppet}
  volumes:
  - name: code
    image: {reference: "$2", pullPolicy: IfNotPresent}
  - name: home
    emptyDir: {}
EOF
  t0=$EPOCHREALTIME
  rc=0; k -n puppet wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$1" --timeout=180s >/dev/null || rc=$?
  server_seconds=$(elapsed "$t0")
  server_out=$(k -n puppet logs "$1" 2>&1) || true
  echo "$server_out" >"$work/$1.log"
  compiled=$(grep -o 'Compiled catalog[^(]*\|Notify\[[^]]*\]' <<<"$server_out" | sort -u | tr '\n' ' ') || true
  return $rc
}

mark=$(($(wc -l <"$work/registry/log") + 1))
rc=0; server server1 "$image1" production || rc=$?
[[ $rc == 0 && "$compiled" == *"Notify[hello from a git module]"* && "$compiled" == *"Notify[production]"* ]] && rc=0 || rc=1
check $rc "server pod mounts $image1 as an image volume; puppet parser validate + apply --noop (${server_seconds}s, pull included): $compiled"
first_pull=$(fetched "$mark" | awk '{s += $3} END {print s + 0}')

# ---------------------------------------------------------------------------
# 4. One branch changes: a new build, and the node fetches only what changed

echo 'node default { include hello; notify { "staging v2": } }' >"$work/src/control/manifests/site.pp"
commit "$work/src/control" "staging v2"
git -C "$work/src/control" push -q "$work/git/control.git" staging
t0=$EPOCHREALTIME
k -n puppet annotate codesource code --overwrite "openvox.voxpupuli.org/checkRequestedAt=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
build "$image1" "$job1"
job2=$job image2=$image
layer_of() { # ENVIRONMENT: its layer digest in status.lastBuild
  k -n puppet get codesource code -o jsonpath="{.status.lastBuild.environments[?(@.name==\"$1\")].layerDigest}"
}
production_layer=$(layer_of production) staging_layer=$(layer_of staging)
check 0 "staging changed: Job $job2 published $image2 ($(elapsed "$t0")s from the head-check request; Job ${job_seconds}s)"

manifest() { curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$reg_port/v2/puppet/code/manifests/$1"; }
manifest1=$(manifest "${image1#*@}") manifest2=$(manifest "${image2#*@}")
config2=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["config"]["digest"])' "$manifest2")
new_layers=$(python3 -c 'import json,sys
old = {l["digest"] for l in json.loads(sys.argv[1])["layers"]}
print(" ".join(l["digest"] for l in json.loads(sys.argv[2])["layers"] if l["digest"] not in old))' "$manifest1" "$manifest2")
[[ "$new_layers" == "$staging_layer" && -n "$production_layer" && " $(python3 -c 'import json,sys; print(" ".join(l["digest"] for l in json.loads(sys.argv[1])["layers"]))' "$manifest2") " == *" $production_layer "* ]] && rc=0 || rc=1
check $rc "the new image differs from the old one in staging's layer only (production's $production_layer reused)"

mark=$(($(wc -l <"$work/registry/log") + 1))
rc=0; server server2 "$image2" staging || rc=$?
[[ $rc == 0 && "$compiled" == *"Notify[staging v2]"* && "$compiled" == *"Notify[hello from a git module]"* ]] && rc=0 || rc=1
check $rc "second server pod mounts $image2 and compiles staging v2 (${server_seconds}s, pull included): $compiled"
fetched "$mark" >"$work/second-pull.txt"
got=$(awk '{print $2}' "$work/second-pull.txt" | sort | tr '\n' ' ')
want=$(printf '%s\n' "${image2#*@}" "$config2" $new_layers | sort | tr '\n' ' ')
second_pull=$(awk '{s += $3} END {print s + 0}' "$work/second-pull.txt")
staging_bytes=$(awk -v d="$staging_layer" '$2 == d {s += $3} END {print s + 0}' "$work/second-pull.txt")
[[ "$got" == "$want" ]] && ! grep -q "$production_layer" "$work/second-pull.txt" && rc=0 || rc=1
check $rc "the node fetched manifest + config + staging's layer ($staging_bytes B) and nothing else: $second_pull bytes in all (first pull: $first_pull bytes); production's layer not fetched"

# ---------------------------------------------------------------------------
# 4b. zstd layers (CodeSource output.compression: zstd, the worker's --compression):
# containerd's image volume reads them

t0=$EPOCHREALTIME
zstd_out=$("$worker_bin" build --url "$git_base/control.git" --branch production --branch staging \
  --image "$reg/puppet/code-zstd" --insecure --compression zstd --work-dir "$work" 2>"$work/zstd-build.log") ||
  { tail -20 "$work/zstd-build.log" >&2; die "the zstd build failed"; }
image3=$(tail -1 <<<"$zstd_out")
zstd_seconds=$(elapsed "$t0")
manifest3=$(curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://127.0.0.1:$reg_port/v2/puppet/code-zstd/manifests/${image3#*@}")
media_types=$(python3 -c 'import json,sys; print(" ".join(sorted({l["mediaType"] for l in json.loads(sys.argv[1])["layers"]})))' "$manifest3")
rc=0; server server3 "$image3" staging || rc=$?
[[ $rc == 0 && "$media_types" == "application/vnd.oci.image.layer.v1.tar+zstd" && "$compiled" == *"Notify[staging v2]"* && "$compiled" == *"Notify[hello from a git module]"* ]] && rc=0 || rc=1
check $rc "zstd layers ($media_types, built in ${zstd_seconds}s): a server pod mounts $image3 and compiles staging v2 (${server_seconds}s, pull included): $compiled"

# ---------------------------------------------------------------------------
# 5. The controller kept running

read -r restarts ready < <(k -n openvox-code get pod "$controller_pod" -o \
  jsonpath='{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}{"\n"}')
[[ "$restarts" == 0 && "$ready" == true ]] && rc=0 || rc=1
check $rc "the controller pod never restarted (liveness probe) and is Ready, $(elapsed "$t_cs")s after the CodeSource"
