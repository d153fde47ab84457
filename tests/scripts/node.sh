#!/usr/bin/env bash
# A real node for the node test tier, joined to the control plane of cluster.sh:
# containerd 2.x (CRI, overlayfs, runc from Debian, a CNI bridge from Debian's plugins)
# and kubelet (its own client certificate system:node:NAME signed by the cluster CA,
# so the Node authorizer and NodeRestriction apply), plus kube-scheduler (the control
# plane has none). Binaries from build-node.sh.
#
#   node.sh up       start in the state dir and wait until the Node is Ready; prints
#                    the admin kubeconfig path of the control plane as the last line
#   node.sh down     remove every pod sandbox (CRI), stop what `up` started (by PID),
#                    unmount what is left under the state dir
#   node.sh expose PORT...   let pods reach the host's 127.0.0.1:PORT at 10.88.0.1:PORT
#                    (the bridge's address; a DNAT to loopback, for pods and for the host
#                    alike, so one URL works from both), and let containerd pull from
#                    10.88.0.1:PORT over plain HTTP. Nothing listens on 10.88.0.1 itself.
#   node.sh env      print shell variables: CONTAINERD_ADDRESS, CTR, CRICTL, NODE_NAME…
#
# There is no kube-proxy. Pods reach the API server (in-cluster clients such as the
# controller and the worker use the `kubernetes` Service's ClusterIP:443 from their
# environment) through one DNAT of that address, for packets from the bridge, to the
# API server on 127.0.0.1, as kube-proxy would to the Service's endpoint; no other
# Service has endpoints.
#
# The control plane must run (cluster.sh up); its state dir is $OPENVOX_CODE_CLUSTER_DIR
# or ~/.cache/openvox-code/cluster. The node's state dir is $OPENVOX_CODE_NODE_DIR or
# ~/.cache/openvox-code/node-state. Everything listens on 127.0.0.1 or a unix socket.
# The sandbox (pause) image is imported, never pulled; images on a loopback registry
# (127.0.0.1:PORT) are pulled over plain HTTP without any registry configuration.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache="${OPENVOX_CODE_CACHE:-$HOME/.cache/openvox-code}"
cluster_dir="${OPENVOX_CODE_CLUSTER_DIR:-$cache/cluster}"
dir="${OPENVOX_CODE_NODE_DIR:-$cache/node-state}"
# The node is named after its address: the kubelet takes a hostname override that is
# an IP as its InternalIP without further checks, while --node-ip refuses loopback
# ("nodeIP can't be loopback address"). The API server reaches the kubelet there
# (cluster.sh: --kubelet-preferred-address-types=InternalIP) and the kubelet listens
# on 127.0.0.1 only.
node_name="127.0.0.1"
# Pods' addresses: a bridge on the host with no route out (no masquerading).
pod_cidr="10.88.0.0/24"
host_address="10.88.0.1"
cni_bridge="ovc0"
rule_comment="openvox-code-node"

log() { echo "node: $*" >&2; }
elapsed() {
  local start=${1/[.,]/} end=${2:-$EPOCHREALTIME}
  end=${end/[.,]/}
  local tenths=$(((end - start) / 100000))
  echo "$((tenths / 10)).$((tenths % 10))"
}
die() { log "$*"; exit 1; }

# free_port, wait_port
source "$here/ports.sh"

# start NAME BINARY ARGS...: detached background process, output in logs/NAME.log
start() {
  local name=$1; shift
  setsid "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

ours() {
  local pidfile=$1 pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE '/(containerd|kubelet|kube-scheduler) '
}

stop_pidfile() {
  local pidfile=$1 pid
  if ours "$pidfile"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

check_alive() {
  local name
  for name in "$@"; do
    if ! ours "$dir/pids/$name.pid"; then
      log "$name exited; last lines of $dir/logs/$name.log:"
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
  done
}

kubectl_bin() {
  if [[ -n "${OPENVOX_CODE_KUBECTL:-}" ]]; then echo "$OPENVOX_CODE_KUBECTL"; return; fi
  local tools
  tools=$(bash "$here/install-kubectl-helm.sh" 2>/dev/null | tail -1) || true
  if [[ -n "$tools" && -x "$tools/kubectl" ]]; then echo "$tools/kubectl"; return; fi
  command -v kubectl || die "kubectl not found"
}

# ---------------------------------------------------------------------------
# Certificates, signed by the control plane's CA

new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; chmod 0600 "$1"; }

# sign NAME SUBJECT EXTENSIONS
sign() {
  local name=$1 subject=$2 ext=$3 cpki="$cluster_dir/pki"
  new_key "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$cpki/ca.crt" -CAkey "$cpki/ca.key" \
    -CAserial "$pki/ca.srl" -CAcreateserial \
    -days 30 -sha256 -extfile <(printf '%s\n' "$ext") -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr"
}

make_pki() {
  mkdir -p "$pki"
  chmod 0700 "$pki"
  cp "$cluster_dir/pki/ca.crt" "$pki/ca.crt"
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The kubelet's identity: the Node authorizer and NodeRestriction key on it.
  sign kubelet-client "/O=system:nodes/CN=system:node:$node_name" "$client"
  # The kubelet's serving certificate (logs, exec), for the API server to verify.
  sign kubelet-serving "/CN=$node_name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:$node_name,DNS:localhost"
  sign scheduler "/CN=system:kube-scheduler" "$client"
}

write_kubeconfig() {
  local file=$1 user=$2 cert=$3 key=$4
  umask 077
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: openvox-code-test
  cluster:
    server: $apiserver
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: $user@openvox-code-test
  context: {cluster: openvox-code-test, user: $user}
current-context: $user@openvox-code-test
EOF
  umask 022
}

# ---------------------------------------------------------------------------
# containerd

containerd_address() { echo "$dir/containerd/containerd.sock"; }

write_containerd_config() {
  local sock
  sock=$(containerd_address)
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam"
  cat >"$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  # kubectl exec / attach / port-forward stream through here; loopback, any free port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "$snapshotter"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$pause_image"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$dir/containerd/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  # These machines withhold CAP_SYS_RESOURCE even from root, so no process may lower
  # its oom_score_adj: runc fails every sandbox (-998) with "nsexec: failed to update
  # /proc/self/oom_score_adj: Permission denied". Clamp to containerd's own score.
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$runc"
        Root = "$dir/runc"
        SystemdCgroup = false
EOF
  mkdir -p "$dir/containerd/certs.d"
  cat >"$dir/cni/net.d/10-openvox-code.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "openvox-code",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$cni_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr"}]],
        "routes": [{"dst": "$apiserver_service_ip/32"}]
      }
    }
  ]
}
EOF
}

# The sandbox image, from build-node.sh's pause binary, imported (never pulled).
import_pause_image() {
  local rootfs="$dir/pause-rootfs"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  cp "$bin/pause" "$rootfs/pause"
  bash "$here/oci-image.sh" --name "$pause_image" --layer "$rootfs" --entrypoint '["/pause"]' \
    --archive "$dir/pause.tar" "$dir/pause-oci" >/dev/null
  "$bin/ctr" --address "$(containerd_address)" -n k8s.io images import \
    --snapshotter "$snapshotter" "$dir/pause.tar" >/dev/null
}

wait_containerd() {
  local deadline=$((SECONDS + 30))
  until "$bin/ctr" --address "$(containerd_address)" version >/dev/null 2>&1; do
    check_alive containerd || return 1
    ((SECONDS < deadline)) || { log "containerd did not answer in time"; return 1; }
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------
# kubelet

write_kubelet_config() {
  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$(containerd_address)
# These machines mount cgroup v1 (the v2 hierarchy beside it has no controllers);
# since Kubernetes 1.35 the kubelet refuses v1 unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
podLogsDir: $dir/pod-logs
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
registerNode: true
# The disk is shared with builds; evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
serializeImagePulls: false
nodeStatusReportFrequency: 10s
EOF
}

wait_node_ready() {
  local deadline=$((SECONDS + ${OPENVOX_CODE_NODE_TIMEOUT:-120})) status
  until status=$("$kubectl" --kubeconfig "$cluster_dir/admin.kubeconfig" get node "$node_name" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) && [[ "$status" == True ]]; do
    check_alive containerd kubelet || return 1
    ((SECONDS < deadline)) || {
      log "node $node_name not Ready in time; Ready condition:"
      "$kubectl" --kubeconfig "$cluster_dir/admin.kubeconfig" get node "$node_name" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}' >&2 2>/dev/null || true
      echo >&2
      return 1
    }
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------

stop_all() {
  [[ -d "$dir/pids" ]] || return 0
  local name
  for name in kube-scheduler kubelet; do stop_pidfile "$dir/pids/$name.pid"; done
  # Pods outlive the kubelet (their shims are their own processes): remove every
  # sandbox through the CRI, which also tears down its network namespace.
  if ours "$dir/pids/containerd.pid" && [[ -x "${bin:-}/crictl" ]]; then
    "$bin/crictl" --runtime-endpoint "unix://$(containerd_address)" --timeout 30s rmp -af >/dev/null 2>&1 || true
  fi
  stop_pidfile "$dir/pids/containerd.pid"
  # Whatever is still mounted under the state dir (rootfs, secret tmpfs), deepest first.
  local mnt
  while read -r mnt; do
    [[ -n "$mnt" ]] && umount -l "$mnt" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | grep -F "$dir/" | sort -r)
  remove_rules
  # The pods' bridge and the kubelet's (now empty) cgroups.
  ip link delete "$cni_bridge" 2>/dev/null || true
  find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods -depth -type d \
    -exec rmdir {} + 2>/dev/null || true
}

# expose PORT...: DNAT 10.88.0.1:PORT to 127.0.0.1:PORT, from pods (arriving on the
# bridge) and from the host itself; a registry configuration for containerd.
expose() {
  local port
  for port in "$@"; do
    [[ "$port" =~ ^[0-9]+$ ]] || die "expose: $port is not a port"
    local -a match=(-d "$host_address/32" -p tcp --dport "$port" -m comment --comment "$rule_comment"
      -j DNAT --to-destination "127.0.0.1:$port")
    iptables -t nat -C PREROUTING -i "$cni_bridge" "${match[@]}" 2>/dev/null ||
      iptables -t nat -A PREROUTING -i "$cni_bridge" "${match[@]}"
    iptables -t nat -C OUTPUT "${match[@]}" 2>/dev/null || iptables -t nat -A OUTPUT "${match[@]}"
    mkdir -p "$dir/containerd/certs.d/$host_address:$port"
    printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "$host_address:$port" "$host_address:$port" >"$dir/containerd/certs.d/$host_address:$port/hosts.toml"
  done
}

# The `kubernetes` Service's ClusterIP:443 for pods, to the API server on loopback (its
# serving certificate names the ClusterIP). Pods have no default route: the CNI
# configuration routes this one address through the bridge.
route_apiserver() {
  local ip port=${apiserver##*:} deadline=$((SECONDS + 30))
  until ip=$("$kubectl" --kubeconfig "$cluster_dir/admin.kubeconfig" -n default get service kubernetes \
    -o jsonpath='{.spec.clusterIP}' 2>/dev/null) && [[ -n "$ip" ]]; do
    ((SECONDS < deadline)) || { log "no kubernetes Service in the default namespace"; return 1; }
    sleep 0.2
  done
  local -a match=(-i "$cni_bridge" -d "$ip/32" -p tcp --dport 443 -m comment --comment "$rule_comment"
    -j DNAT --to-destination "127.0.0.1:$port")
  iptables -t nat -C PREROUTING "${match[@]}" 2>/dev/null || iptables -t nat -A PREROUTING "${match[@]}"
  apiserver_service_ip=$ip
}

remove_rules() {
  local chain rule
  for chain in PREROUTING OUTPUT; do
    iptables -t nat -S "$chain" 2>/dev/null | grep -F -- "--comment $rule_comment" | sed 's/^-A /-D /' |
      while read -r rule; do
        # shellcheck disable=SC2086 # the rule as iptables -S printed it
        iptables -t nat $rule || true
      done || true # grep finds no rule
  done
}

bring_up() {
  local t0=$EPOCHREALTIME
  [[ -f "$cluster_dir/cluster.env" && -f "$cluster_dir/pki/ca.key" ]] ||
    die "no control plane in $cluster_dir: run cluster.sh up first"
  apiserver=$(sed -n 's|^APISERVER=||p' "$cluster_dir/cluster.env")
  kubectl=$(kubectl_bin)
  "$kubectl" --kubeconfig "$cluster_dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1 ||
    die "the control plane in $cluster_dir does not answer at $apiserver"
  bin=$(bash "$here/build-node.sh" | tail -1)
  runc=$(command -v runc) || die "runc is missing (build-node.sh deps installs it)"
  [[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are missing (build-node.sh deps installs them)"
  k8s_version=$("$bin/kubelet" --version | awk '{print $2}')
  pause_image="openvox-code.test/pause:$k8s_version"
  snapshotter=${OPENVOX_CODE_SNAPSHOTTER:-overlayfs}
  # CAP_SYS_RESOURCE is bit 24 of the capability sets.
  if (( (0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24) & 1 )); then restrict_oom=false
  else restrict_oom=true; fi

  rm -rf "$dir/pids" "$dir/logs" "$dir/pki" "$dir/kubelet/config.yaml"
  mkdir -p "$dir/pids" "$dir/logs" "$dir/kubelet" "$dir/pod-logs"
  pki="$dir/pki"
  make_pki
  write_kubeconfig "$dir/kubelet.kubeconfig" "system:node:$node_name" "$pki/kubelet-client.crt" "$pki/kubelet-client.key"
  write_kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler "$pki/scheduler.crt" "$pki/scheduler.key"

  # The pods' bridge exists before the first pod, so that route_localnet (the DNAT of
  # `expose` to 127.0.0.1) can be set on it.
  ip link add "$cni_bridge" type bridge 2>/dev/null || true
  ip addr replace "$host_address/24" dev "$cni_bridge"
  ip link set "$cni_bridge" up
  sysctl -qw "net.ipv4.conf.$cni_bridge.route_localnet=1"

  route_apiserver || return 1
  write_containerd_config
  start containerd "$bin/containerd" --config "$dir/containerd/config.toml"
  wait_containerd || return 1
  import_pause_image || return 1
  local t_containerd=$EPOCHREALTIME

  free_port kubelet_port
  free_port kubelet_healthz_port
  write_kubelet_config
  start kubelet "$bin/kubelet" \
    --config="$dir/kubelet/config.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
    --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" \
    --hostname-override="$node_name" --v="${OPENVOX_CODE_KUBELET_V:-1}"

  local scheduler_port
  free_port scheduler_port
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$scheduler_port" \
    --leader-elect=false --profiling=false

  wait_node_ready || return 1
  check_alive kube-scheduler || return 1
  cat >"$dir/node.env" <<EOF
NODE_NAME=$node_name
CONTAINERD_ADDRESS=$(containerd_address)
CTR="$bin/ctr --address $(containerd_address) -n k8s.io"
CRICTL="$bin/crictl --runtime-endpoint unix://$(containerd_address)"
KUBELET=https://127.0.0.1:$kubelet_port
HOST_ADDRESS=$host_address
SNAPSHOTTER=$snapshotter
PAUSE_IMAGE=$pause_image
EOF
  log "node $node_name Ready in $(elapsed "$t0")s (containerd up after $(elapsed "$t0" "$t_containerd")s;" \
    "state in $dir)"
}

cmd=${1:-}
case $cmd in
  up)
    mkdir -p "$dir"
    bin=$(bash "$here/build-node.sh" | tail -1)
    stop_all
    if ! bring_up; then
      stop_all
      die "start failed; logs in $dir/logs"
    fi
    echo "$cluster_dir/admin.kubeconfig"
    ;;
  down)
    # Only where a node was started: finding the binaries builds them when missing.
    bin=""
    [[ -d "$dir/pids" ]] && { bin=$(bash "$here/build-node.sh" 2>/dev/null | tail -1) || bin=""; }
    stop_all
    log "stopped (state in $dir)"
    ;;
  expose)
    shift
    expose "$@"
    ;;
  env)
    cat "$dir/node.env"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
