#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver
# (TLS, client-certificate authentication, service-account tokens, RBAC + Node
# authorization) and kube-controller-manager (its own identity; the real Job,
# garbage-collector, service-account-token, TTL and EndpointSlice controllers).
# There is no kubelet and no scheduler; see tests/README.md for the node simulation
# (tests/scripts/node.sh adds a real node and a scheduler).
#
#   cluster.sh up [options]          start in the state dir, leave it running; prints
#                                    the kubeconfig path as the last line
#   cluster.sh down                  stop what `up` started (by PID)
#   cluster.sh run DIR [options]     supervisor for tests: start in DIR, print the
#                                    kubeconfig path, then stop everything as soon as
#                                    standard input reaches EOF (the test process
#                                    exited or crashed) or on SIGTERM/SIGINT
#   cluster.sh install-gateway-api [DIR]   install the Gateway API TLSRoute CRD later
#   cluster.sh fetch-gateway-api     cache the TLSRoute CRD from the Go module proxy
#
# Options: --no-gateway-api           do not install the TLSRoute CRD at start
#          --config-shape single|list  which fixture CRD of openvox-operator's Config
#                                      to install (spec.code object, as in the operator's
#                                      release, or the newer list; default single)
#          --pool-crd ours|operator|none  which Pool CRD to install: ours (crds/pools.yaml,
#                                      default), one shaped like openvox-operator's, or none
#          --no-codesource-crd         do not install our CodeSource CRD (a chart test
#                                      installs it)
#          --remove-on-exit            (run) delete DIR when the supervisor stops after a
#                                      successful start (set OPENVOX_CODE_KEEP_CLUSTER=1
#                                      to keep it for a post-mortem)
#
# State dir of up/down: $OPENVOX_CODE_CLUSTER_DIR or ~/.cache/openvox-code/cluster.
# Everything listens on 127.0.0.1 only. Private keys stay in the state dir (0600)
# and are never printed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${OPENVOX_CODE_CACHE:-$HOME/.cache/openvox-code}"
gateway_api_version="v1.6.3"
gateway_api_crd="gateway.networking.k8s.io_tlsroutes.yaml"
# /20: room for the scale benchmark's 1,000 Pool Services (a /24 ran out at 254).
service_cidr="10.0.0.0/20"

log() { echo "cluster: $*" >&2; }
# elapsed START [END]: seconds between two $EPOCHREALTIME values, to 0.1 s
elapsed() {
  local start=${1/[.,]/} end=${2:-$EPOCHREALTIME}
  end=${end/[.,]/}
  local tenths=$(((end - start) / 100000))
  echo "$((tenths / 10)).$((tenths % 10))"
}
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------
# Inputs: binaries, kubectl, the upstream TLSRoute CRD

control_plane_bin() {
  bash "$here/build-control-plane.sh" | tail -1
}

kubectl_bin() {
  if [[ -n "${OPENVOX_CODE_KUBECTL:-}" ]]; then echo "$OPENVOX_CODE_KUBECTL"; return; fi
  local tools
  tools=$(bash "$here/install-kubectl-helm.sh" 2>/dev/null | tail -1) || true
  if [[ -n "$tools" && -x "$tools/kubectl" ]]; then echo "$tools/kubectl"; return; fi
  command -v kubectl || die "kubectl not found (tests/scripts/install-kubectl-helm.sh failed)"
}

# The TLSRoute CRD exactly as sigs.k8s.io/gateway-api publishes it (standard
# channel), taken from the module through the Go module proxy and cached.
gateway_api_crd_file() {
  local cached="$cache/gateway-api/$gateway_api_version/$gateway_api_crd"
  if [[ ! -s "$cached" ]]; then
    command -v go >/dev/null || die "go is required to fetch the Gateway API CRDs"
    local dir
    dir=$(cd / && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$gateway_api_version" |
      sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
    [[ -n "$dir" && -s "$dir/config/crd/standard/$gateway_api_crd" ]] ||
      die "sigs.k8s.io/gateway-api@$gateway_api_version has no config/crd/standard/$gateway_api_crd"
    mkdir -p "$(dirname "$cached")"
    cp "$dir/config/crd/standard/$gateway_api_crd" "$cached.partial"
    chmod 0644 "$cached.partial"
    mv "$cached.partial" "$cached"
  fi
  echo "$cached"
}

# ---------------------------------------------------------------------------
# Certificates and keys (ECDSA P-256: generated in milliseconds)

new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; chmod 0600 "$1"; }

# sign NAME SUBJECT EXTENSIONS: key + certificate signed by the cluster CA
sign() {
  local name=$1 subject=$2 ext=$3
  new_key "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile <(printf '%s\n' "$ext") -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr"
}

make_pki() {
  mkdir -p "$pki"
  chmod 0700 "$pki"
  new_key "$pki/ca.key"
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=openvox-code-test-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt" 2>/dev/null
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign controller-manager-serving "/CN=kube-controller-manager" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
  sign admin "/O=system:masters/CN=openvox-code-admin" "$client"
  sign controller-manager "/CN=system:kube-controller-manager" "$client"
  # The API server's identity towards kubelets (logs, exec) when a real node runs.
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  sign front-proxy-client "/CN=front-proxy-client" "$client"
  # Service-account token signing key pair.
  new_key "$pki/sa.key"
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE USER CERT KEY: self-contained (certificates embedded)
write_kubeconfig() {
  local file=$1 user=$2 cert=$3 key=$4
  umask 077
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: openvox-code-test
  cluster:
    server: https://127.0.0.1:$apiserver_port
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
# Processes, tracked by PID in $dir/pids

# free_port (a loopback port nobody listens on, not handed out before in this run),
# wait_port
source "$here/ports.sh"

# start NAME BINARY ARGS...: background process, its output in $dir/logs/NAME.log.
# Under the supervisor (`run`) each process also gets a parent-death signal, so it
# dies with the supervisor even when the supervisor itself is killed with SIGKILL.
start() {
  local name=$1; shift
  local -a wrap=()
  if [[ "$mode" == run ]] && command -v setpriv >/dev/null; then
    wrap=(setpriv --pdeathsig KILL --)
  fi
  if [[ "$mode" == up ]]; then
    setsid "${wrap[@]}" "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
  else
    "${wrap[@]}" "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
  fi
  echo $! >"$dir/pids/$name.pid"
  # The command line, so `start_again NAME` runs it with the same flags and ports.
  printf '%q ' "$@" >"$dir/pids/$name.cmd"
}

# start_again NAME: start a component stopped by stop_one with its earlier command line.
start_again() {
  local name=$1 cmd
  cmd=$(cat "$dir/pids/$name.cmd") || return 1
  eval "start $name $cmd"
}

# stop_one NAME: stop one component of this control plane.
stop_one() {
  stop_pidfile "$dir/pids/$1.pid"
}

# stop_pidfile FILE: stop the process of a PID file (TERM, then KILL after 5 s), only
# if it is still one of ours, and remove the file.
stop_pidfile() {
  local pidfile=$1 pid
  if ours "$pidfile"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# Commands a test writes to the supervisor's standard input, one per line; each is
# answered with one line on standard output: "ok" or "error: ...". For fault tests.
#   stop-apiserver    stop kube-apiserver (etcd and the controller-manager keep running)
#   start-apiserver   start it again with the same flags and port; answer once ready
supervise() {
  case $1 in
    stop-apiserver) stop_one kube-apiserver; echo ok ;;
    start-apiserver)
      if start_again kube-apiserver && wait_ready; then echo ok
      else echo "error: kube-apiserver did not come back; see $dir/logs"; fi ;;
    "") ;;
    *) echo "error: unknown command $1" ;;
  esac
}

# True when the PID in pids/NAME.pid is alive and still runs one of our binaries
# (a recycled PID is never killed).
ours() {
  local pidfile=$1 pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE '/(etcd|kube-apiserver|kube-controller-manager) '
}

stop_all() {
  local d=$1 pidfile
  [[ -d "$d/pids" ]] || return 0
  # Reverse start order: controller-manager, apiserver, etcd.
  for name in kube-controller-manager kube-apiserver etcd; do
    pidfile="$d/pids/$name.pid"
    [[ -f "$pidfile" ]] || continue
    stop_pidfile "$pidfile"
  done
}

# Fails fast with the component's last log lines when it has exited.
check_alive() {
  local name
  for name in "$@"; do
    if ! ours "$dir/pids/$name.pid"; then
      log "$name exited; last lines of $dir/logs/$name.log:"
      tail -n 20 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
  done
}

curl_api() {
  curl -sS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$apiserver_port$1"
}

wait_ready() {
  local deadline=$((SECONDS + ${OPENVOX_CODE_START_TIMEOUT:-120}))
  until [[ "$(curl_api /readyz 2>/dev/null)" == ok ]]; do
    check_alive etcd kube-apiserver || return 1
    ((SECONDS < deadline)) || { log "kube-apiserver not ready in time; see $dir/logs"; return 1; }
    sleep 0.2
  done
}

# Audit log of the requests made with service-account credentials outside kube-system
# (controllers and workers under test; kube-controller-manager's own controllers run
# in kube-system and are left out), at Metadata level: who, verb, resource,
# subresource, answer. Tests compare it with the RBAC they grant (docs/security.md).
# Requests of the admin certificate, most of the traffic, are not logged at all.
write_audit_policy() {
  cat >"$1" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
# ResponseStarted stays: a watch is logged when it starts, not only when it ends.
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
EOF
}

start_control_plane() {
  local bin
  bin=$(control_plane_bin)
  write_audit_policy "$dir/audit-policy.yaml"
  free_port etcd_port
  local etcd_peer_port
  free_port etcd_peer_port
  free_port apiserver_port
  free_port controller_manager_port

  start etcd "$bin/etcd" \
    --name=default --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="default=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --log-level=warn

  start kube-apiserver "$bin/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$apiserver_port" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --requestheader-client-ca-file="$pki/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --authorization-mode=Node,RBAC --anonymous-auth=false \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$service_cidr" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true --profiling=false \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/logs/audit.log" \
    --audit-log-format=json --audit-log-maxsize=200 --audit-log-maxbackup=1 \
    --cert-dir="$dir/apiserver-certs"

  write_kubeconfig "$dir/admin.kubeconfig" openvox-code-admin "$pki/admin.crt" "$pki/admin.key"
  write_kubeconfig "$dir/controller-manager.kubeconfig" system:kube-controller-manager \
    "$pki/controller-manager.crt" "$pki/controller-manager.key"

  wait_ready || return 1

  local kcm_kubeconfig="$dir/controller-manager.kubeconfig"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$kcm_kubeconfig" \
    --authentication-kubeconfig="$kcm_kubeconfig" --authorization-kubeconfig="$kcm_kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$controller_manager_port" \
    --tls-cert-file="$pki/controller-manager-serving.crt" \
    --tls-private-key-file="$pki/controller-manager-serving.key" \
    --controllers='*' --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range="$service_cidr" \
    --leader-elect=false --profiling=false
}

install_crds() {
  local kubectl=$1 with_gateway_api=$2 config_shape=$3 pool_crd=$4 codesource_crd=$5
  local -a files=("$repo/tests/fixtures/crds/config-code-$config_shape.yaml"
    "$repo/tests/fixtures/crds/server.yaml"
    "$repo/tests/fixtures/crds/certificate.yaml")
  if [[ "$with_gateway_api" == yes ]]; then files+=("$dir/crds/$gateway_api_crd"); fi
  if [[ "$codesource_crd" == yes ]]; then files+=("$repo/crds/codesources.yaml"); fi
  case $pool_crd in
    ours) files+=("$repo/crds/pools.yaml") ;;
    operator) files+=("$repo/tests/fixtures/crds/pool-operator.yaml") ;;
  esac
  local -a args=()
  local f
  for f in "${files[@]}"; do
    [[ -f "$f" ]] || die "CRD file $f is missing"
    args+=(-f "$f")
  done
  # Server-side apply: the TLSRoute CRD is too large for the last-applied annotation.
  "$kubectl" --kubeconfig "$dir/admin.kubeconfig" apply --server-side --force-conflicts \
    --field-manager=openvox-code-tests "${args[@]}" >/dev/null
  "$kubectl" --kubeconfig "$dir/admin.kubeconfig" wait --for=condition=Established \
    --timeout=60s "${args[@]}" >/dev/null
}

# The Gateway API CRD into an already running control plane ("installed later").
install_gateway_api() {
  local kubectl
  kubectl=$(kubectl_bin)
  "$kubectl" --kubeconfig "$dir/admin.kubeconfig" apply --server-side --force-conflicts \
    --field-manager=openvox-code-tests -f "$dir/crds/$gateway_api_crd" >/dev/null
  "$kubectl" --kubeconfig "$dir/admin.kubeconfig" wait --for=condition=Established \
    --timeout=60s -f "$dir/crds/$gateway_api_crd" >/dev/null
}

parse_options() {
  with_gateway_api=yes
  remove_on_exit=no
  config_shape=${OPENVOX_CODE_CONFIG_SHAPE:-single}
  pool_crd=ours
  codesource_crd=yes
  while (($#)); do
    case $1 in
      --no-gateway-api) with_gateway_api=no ;;
      --remove-on-exit) remove_on_exit=yes ;;
      --config-shape) config_shape=${2:-}; shift ;;
      --config-shape=*) config_shape=${1#*=} ;;
      --pool-crd) pool_crd=${2:-}; shift ;;
      --pool-crd=*) pool_crd=${1#*=} ;;
      --no-codesource-crd) codesource_crd=no ;;
      *) die "unknown option $1" ;;
    esac
    shift
  done
  [[ "$config_shape" == single || "$config_shape" == list ]] ||
    die "--config-shape must be single or list"
  [[ "$pool_crd" == ours || "$pool_crd" == operator || "$pool_crd" == none ]] ||
    die "--pool-crd must be ours, operator or none"
}

# Everything from an empty state dir to a ready control plane with CRDs installed.
bring_up() {
  local t0=$EPOCHREALTIME kubectl crd
  rm -rf "$dir/etcd" "$dir/pids" "$dir/logs" "$dir/pki" "$dir/crds" "$dir/apiserver-certs"
  mkdir -p "$dir/pids" "$dir/logs" "$dir/crds"
  pki="$dir/pki"
  # Inputs first, so a missing tool fails before anything is started.
  kubectl=$(kubectl_bin)
  crd=$(gateway_api_crd_file)
  cp "$crd" "$dir/crds/$gateway_api_crd"
  make_pki
  start_control_plane || return 1
  local t_ready=$EPOCHREALTIME
  install_crds "$kubectl" "$with_gateway_api" "$config_shape" "$pool_crd" "$codesource_crd" || return 1
  check_alive etcd kube-apiserver kube-controller-manager || return 1
  cat >"$dir/cluster.env" <<EOF
APISERVER=https://127.0.0.1:$apiserver_port
ETCD=http://127.0.0.1:$etcd_port
CONTROLLER_MANAGER=https://127.0.0.1:$controller_manager_port
GATEWAY_API=$with_gateway_api
CONFIG_SHAPE=$config_shape
POOL_CRD=$pool_crd
EOF
  log "control plane ready at https://127.0.0.1:$apiserver_port in $(elapsed "$t0")s" \
    "(/readyz after $(elapsed "$t0" "$t_ready")s; state in $dir)"
}

# ---------------------------------------------------------------------------

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
  up)
    mode=up
    dir="${OPENVOX_CODE_CLUSTER_DIR:-$cache/cluster}"
    parse_options "$@"
    mkdir -p "$dir"
    if ours "$dir/pids/kube-apiserver.pid" 2>/dev/null && ours "$dir/pids/etcd.pid"; then
      pki="$dir/pki"
      apiserver_port=$(sed -n 's|^APISERVER=https://127.0.0.1:||p' "$dir/cluster.env" 2>/dev/null)
      if [[ -n "$apiserver_port" && "$(curl_api /readyz 2>/dev/null)" == ok ]]; then
        log "already running (state in $dir)"
        echo "$dir/admin.kubeconfig"
        exit 0
      fi
    fi
    stop_all "$dir"
    if ! bring_up; then
      stop_all "$dir"
      die "start failed; logs in $dir/logs"
    fi
    echo "$dir/admin.kubeconfig"
    ;;
  down)
    dir="${OPENVOX_CODE_CLUSTER_DIR:-$cache/cluster}"
    stop_all "$dir"
    rm -rf "$dir/etcd"
    log "stopped (state in $dir)"
    ;;
  run)
    mode=run
    dir=${1:-}
    [[ -n "$dir" ]] || die "usage: cluster.sh run DIR [options]"
    shift
    parse_options "$@"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    started=no
    # Whatever happens from here on (EOF on stdin, a signal, a failed start), every
    # process started here is stopped before the supervisor exits.
    finish() {
      stop_all "$dir"
      if [[ $started == yes && $remove_on_exit == yes && -z "${OPENVOX_CODE_KEEP_CLUSTER:-}" ]]; then
        rm -rf "$dir"
      fi
    }
    trap finish EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    bring_up || die "start failed; logs in $dir/logs"
    started=yes
    echo "$dir/admin.kubeconfig"
    # Block until the test process closes our stdin (exits, crashes or is killed),
    # running the commands it sends meanwhile.
    while IFS= read -r line; do supervise "$line"; done
    ;;
  install-gateway-api)
    dir="${1:-${OPENVOX_CODE_CLUSTER_DIR:-$cache/cluster}}"
    install_gateway_api
    ;;
  fetch-gateway-api)
    gateway_api_crd_file
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
