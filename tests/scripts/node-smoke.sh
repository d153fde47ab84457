#!/usr/bin/env bash
# Feasibility check and measurement of the real node (issue 18), end to end on this
# machine, with everything in a temporary directory and stopped at the end:
#
#   1. a loopback registry (Debian's docker-registry, request log at info level);
#   2. a busybox image: Debian's busybox-static unpacked by mmdebstrap, assembled by
#      oci-image.sh, pushed with skopeo;
#   3. cluster.sh up + node.sh up: the Node must become Ready;
#   4. a pod from that image runs to completion, `kubectl logs` reads it through the
#      kubelet, `kubectl exec` works;
#   5. a Job (placed by the real scheduler), `kubectl logs job/…`;
#   6. a pod mounts a two-layer data image as an image volume (read-only) at
#      /etc/puppetlabs/code/environments;
#   7. one layer changes; a second pod mounts the new image; the registry log says
#      which blobs the node fetched, and how many bytes;
#   8. a pod reaches a service of the host (the registry on 127.0.0.1) through
#      `node.sh expose` at 10.88.0.1, and the node pulls from that address too;
#   9. when a worker binary is at hand (target/{release,debug}/openvox-code-worker or
#      $OPENVOX_CODE_WORKER_BINARY), the worker image from node-images.sh runs under
#      the restricted Pod Security Standard;
#  10. a server stand-in (Debian's puppet, node-images.sh server) compiles the code
#      image mounted as an image volume: puppet parser validate, puppet apply --noop.
#
#   node-smoke.sh            run it; prints one "ok"/"FAIL" line per check, the
#                            timings and byte counts, and "N passed, N failed" last
#   OPENVOX_CODE_KEEP_SMOKE=1   keep the temporary directory (logs) afterwards
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/openvox-code-node-smoke.XXXXXX)
export OPENVOX_CODE_CLUSTER_DIR="$work/cluster" OPENVOX_CODE_NODE_DIR="$work/node"
passed=0 failed=0
check() {
  if [[ $1 == 0 ]]; then echo "ok   $2"; passed=$((passed + 1)); else echo "FAIL $2"; failed=$((failed + 1)); fi
}
elapsed() {
  local start=${1/[.,]/} end=${2:-$EPOCHREALTIME}
  end=${end/[.,]/}
  local tenths=$(((end - start) / 100000))
  echo "$((tenths / 10)).$((tenths % 10))"
}
registry_pid=""
finish() {
  bash "$here/node.sh" down >/dev/null 2>&1 || true
  bash "$here/cluster.sh" down >/dev/null 2>&1 || true
  [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null || true
  if [[ -n "${OPENVOX_CODE_KEEP_SMOKE:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap finish EXIT

bash "$here/build-node.sh" deps
bash "$here/build-node.sh" >/dev/null

# 1. registry
port=$((20000 + RANDOM % 12000))
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $work/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port

# 2. busybox image
t0=$EPOCHREALTIME
mmdebstrap --quiet --variant=extract --include=busybox-static bookworm "$work/busybox-rootfs" >/dev/null 2>&1
bash "$here/oci-image.sh" --name "$reg/busybox:1" --layer "$work/busybox-rootfs" \
  --entrypoint '["/bin/busybox"]' --cmd '["sh"]' "$work/busybox-oci" >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/busybox-oci:1" "docker://$reg/busybox:1"
echo "busybox image (mmdebstrap + oci-image.sh + push): $(elapsed "$t0")s"

# 3. control plane and node
t0=$EPOCHREALTIME
kubeconfig=$(bash "$here/cluster.sh" up --no-gateway-api 2>/dev/null | tail -1)
t1=$EPOCHREALTIME
rc=0; bash "$here/node.sh" up >/dev/null 2>"$work/node-up.log" || rc=$?
check $rc "node Ready (control plane $(elapsed "$t0" "$t1")s, node $(elapsed "$t1")s)"
((rc == 0)) || { tail -20 "$work/node-up.log"; exit 1; }
kubectl=$(bash "$here/install-kubectl-helm.sh" 2>/dev/null | tail -1)/kubectl
[[ -x "$kubectl" ]] || kubectl=kubectl
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
for _ in $(seq 1 100); do k get serviceaccount default >/dev/null 2>&1 && break; sleep 0.1; done

# 4. a pod, its logs, exec
t0=$EPOCHREALTIME
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: $reg/busybox:1
    command: ["/bin/busybox", "sh", "-c", "echo hello from a real pod; /bin/busybox sleep 3"]
EOF
rc=0; k wait --for=condition=Ready pod/hello --timeout=60s >/dev/null || rc=$?
check $rc "pod running ($(elapsed "$t0")s from create, image pull included)"
out=$(k exec hello -- /bin/busybox echo exec-ok 2>&1) || true
[[ "$out" == exec-ok ]] && rc=0 || rc=1; check $rc "kubectl exec ($out)"
rc=0; k wait --for=jsonpath='{.status.phase}'=Succeeded pod/hello --timeout=60s >/dev/null || rc=$?
check $rc "pod Succeeded ($(k get pod hello -o jsonpath='{.status.phase} {.status.containerStatuses[0].state}'))"
out=$(k logs hello 2>&1) || true
[[ "$out" == "hello from a real pod" ]] && rc=0 || rc=1; check $rc "kubectl logs pod ($out)"

# 5. a Job through the scheduler
t0=$EPOCHREALTIME
k apply -f - >/dev/null <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: job1}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: main
        image: $reg/busybox:1
        command: ["/bin/busybox", "sh", "-c", "echo step 1 as \$(/bin/busybox id -u); echo step 2"]
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
rc=0; k wait --for=condition=Complete job/job1 --timeout=90s >/dev/null || rc=$?
check $rc "Job complete, restricted security context ($(elapsed "$t0")s)"
out=$(k logs job/job1 2>&1 | tr '\n' ' ') || true
[[ "$out" == "step 1 as 65532 step 2 " ]] && rc=0 || rc=1; check $rc "kubectl logs job/job1 ($out)"

# 6. image volume
mkdir -p "$work/code/a/production/manifests" "$work/code/b/staging/manifests"
echo 'node default { notify { "production": } }' >"$work/code/a/production/manifests/site.pp"
echo 'node default { notify { "staging v1": } }' >"$work/code/b/staging/manifests/site.pp"
head -c 3000000 /dev/urandom >"$work/code/a/production/data.bin"
head -c 2000000 /dev/urandom >"$work/code/b/staging/data.bin"
bash "$here/oci-image.sh" --name "$reg/code:1" --layer "$work/code/a" --layer "$work/code/b" "$work/code-oci1" >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/code-oci1:1" "docker://$reg/code:1"
server_pod() { # NAME TAG
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: $reg/busybox:1
    command: ["/bin/busybox", "sh", "-c", "/bin/busybox cat /etc/puppetlabs/code/environments/*/manifests/site.pp; /bin/busybox touch /etc/puppetlabs/code/environments/x 2>/dev/null && echo writable || echo read-only"]
    volumeMounts: [{name: code, mountPath: /etc/puppetlabs/code/environments}]
  volumes:
  - name: code
    image: {reference: "$reg/code:$2", pullPolicy: IfNotPresent}
EOF
}
# fetched FROM_LINE: "digest-or-manifest bytes" per GET the registry answered since then
fetched() {
  tail -n +"$1" "$work/registry/log" | grep 'response completed' | grep 'http.request.method=GET' |
    sed -n -E 's%.*http.request.uri="/v2/[^"]*/(manifests|blobs)/([^"]*)".*http.response.written=([0-9]+).*%\1 \2 \3%p'
}
mark=$(($(wc -l <"$work/registry/log") + 1))
t0=$EPOCHREALTIME
server_pod server1 1
rc=0; k wait --for=jsonpath='{.status.phase}'=Succeeded pod/server1 --timeout=60s >/dev/null || rc=$?
out=$(k logs server1 2>&1 | tr '\n' ' ') || true
[[ $rc == 0 && "$out" == *'"production"'*'"staging v1"'*read-only* ]] && rc=0 || rc=1
check $rc "image volume mounted read-only ($(elapsed "$t0")s): $out"
echo "first pull of code:1:"; fetched "$mark" | sed 's/^/  /'

# 7. one layer changes
echo 'node default { notify { "staging v2": } }' >"$work/code/b/staging/manifests/site.pp"
bash "$here/oci-image.sh" --name "$reg/code:2" --layer "$work/code/a" --layer "$work/code/b" "$work/code-oci2" >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/code-oci2:2" "docker://$reg/code:2"
layers=$(python3 -c 'import json,sys; print(" ".join(l["digest"] for l in json.load(open(sys.argv[1]))["layers"]))' \
  "$work/code-oci2/blobs/sha256/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"][7:])' "$work/code-oci2/index.json")")
mark=$(($(wc -l <"$work/registry/log") + 1))
t0=$EPOCHREALTIME
server_pod server2 2
rc=0; k wait --for=jsonpath='{.status.phase}'=Succeeded pod/server2 --timeout=60s >/dev/null || rc=$?
out=$(k logs server2 2>&1 | tr '\n' ' ') || true
[[ $rc == 0 && "$out" == *'"staging v2"'* ]] && rc=0 || rc=1; check $rc "changed image volume ($(elapsed "$t0")s): $out"
echo "pull of code:2 (one layer changed):"; fetched "$mark" | sed 's/^/  /'
read -r unchanged changed <<<"$layers"
total=$(fetched "$mark" | awk '{s += $3} END {print s + 0}')
fetched "$mark" | grep -q "$changed" && ! fetched "$mark" | grep -q "$unchanged" && rc=0 || rc=1
check $rc "only the changed layer fetched, not the unchanged one; $total bytes fetched in all"

# 8. host services from pods
bash "$here/node.sh" expose "$port"
host=$(sed -n 's/^HOST_ADDRESS=//p' "$work/node/node.env")
k run reach --restart=Never --image="$host:$port/busybox:1" --command -- \
  /bin/busybox sh -c "/bin/busybox wget -q -O- http://$host:$port/v2/_catalog" >/dev/null
rc=0; k wait --for=jsonpath='{.status.phase}'=Succeeded pod/reach --timeout=60s >/dev/null || rc=$?
out=$(k logs reach 2>&1) || true
[[ $rc == 0 && "$out" == *busybox* ]] && rc=0 || rc=1; check $rc "pod pulled from and reached the host's 127.0.0.1:$port at $host:$port ($out)"

# 9. the worker image
repo=$(cd "$here/../.." && pwd)
worker=${OPENVOX_CODE_WORKER_BINARY:-}
for candidate in "$repo/target/release/openvox-code-worker" "$repo/target/debug/openvox-code-worker"; do
  [[ -z "$worker" && -x "$candidate" ]] && worker=$candidate
done
if [[ -n "$worker" ]]; then
  t0=$EPOCHREALTIME
  bash "$here/node-images.sh" worker "$worker" "$reg/worker:1" >/dev/null
  echo "worker image (node-images.sh, base cached after the first run): $(elapsed "$t0")s"
  t0=$EPOCHREALTIME
  k label namespace default pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: worker}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: main
    image: $reg/worker:1
    args: ["--version"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
  rc=0; k wait --for=jsonpath='{.status.phase}'=Succeeded pod/worker --timeout=90s >/dev/null || rc=$?
  out=$(k logs worker 2>&1 | head -1) || true
  check $rc "worker image runs as restricted ($(elapsed "$t0")s): $out"
else
  echo "skip worker image: no target/*/openvox-code-worker (cargo build -p openvox-code-worker)"
fi

# 10. puppet compiles from the image volume
t0=$EPOCHREALTIME
bash "$here/node-images.sh" server "$reg/server:1" >/dev/null
echo "server image (node-images.sh server, base cached after the first run): $(elapsed "$t0")s"
t0=$EPOCHREALTIME
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: puppet}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: main
    image: $reg/server:1
    command: ["/bin/sh", "-c", "E=/etc/puppetlabs/code/environments; puppet parser validate \$E/production/manifests/site.pp && puppet apply --noop --color=false --environmentpath \$E --environment staging \$E/staging/manifests/site.pp"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts:
    - {name: code, mountPath: /etc/puppetlabs/code/environments}
    - {name: home, mountPath: /home/puppet}
  volumes:
  - name: code
    image: {reference: "$reg/code:2", pullPolicy: IfNotPresent}
  - name: home
    emptyDir: {}
EOF
rc=0; k wait --for=jsonpath='{.status.phase}'=Succeeded pod/puppet --timeout=120s >/dev/null || rc=$?
out=$(k logs puppet 2>&1 | grep -o 'Compiled catalog[^(]*\|Notify\[[^]]*\]' | tr '\n' ' ') || true
[[ $rc == 0 && "$out" == *"Notify[staging v2]"* ]] && rc=0 || rc=1
check $rc "puppet compiles from the image volume ($(elapsed "$t0")s, image pull included): $out"

echo "$passed passed, $failed failed"
((failed == 0))
