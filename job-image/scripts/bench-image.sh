#!/usr/bin/env bash
# Benchmark of `openvox-code-worker build` against a real registry on loopback, next to
# a baseline doing the same by hand, in the same run. Not part of `cargo test`.
#
#   job-image/scripts/bench-image.sh                     # 8 branches x 3,000 files (~40 MB each)
#   BRANCHES=2 FILES=500 MB=5 job-image/scripts/bench-image.sh   # a quick run
#
# Prints wall time and peak RSS (GNU time -v) of:
#   cold         build + push of every branch into an empty repository
#   incremental  the same after one commit on one branch (one layer rebuilt and sent)
#   baseline     per branch `git clone --depth 1` + `tar | gzip -1`, an OCI layout of
#                those layers, `skopeo copy` of it into the registry
#   gzip floor   the baseline's tar streams through the worker's compressor (zlib-rs,
#                level 6) on every core
#   validation   (VALIDATE=1, the default, when `puppet` is installed) cold and
#                incremental builds of a repository of valid Puppet code (VFILES
#                manifests per branch, default 600), without and with the validator
#                sidecar's script beside the worker: added wall time, time per environment
# Targets (issue 5): cold <= 2x the gzip floor, incremental <= 1/5 of cold, RSS <= 256 MiB.
#
# Settings (environment): BRANCHES, FILES, MB (per branch), WORKER and BENCH (binaries;
# default: release builds of this checkout), BENCH_DIR (default /tmp).
set -euo pipefail

BRANCHES=${BRANCHES:-8}
FILES=${FILES:-3000}
MB=${MB:-40}

here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
for tool in git python3 /usr/bin/time docker-registry skopeo tar gzip; do
  command -v "$tool" >/dev/null || { echo "missing $tool (tests/scripts/install-deps.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d "${BENCH_DIR:-/tmp}/ovc-bench-image.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${WORKER:-}" || -z "${BENCH:-}" ]]; then
  echo "building the worker and the layer bench (release)..." >&2
  (cd "$repo_root" && cargo build -q --release -p openvox-code-worker --bin openvox-code-worker --example bench_layer)
  WORKER=${WORKER:-$repo_root/target/release/openvox-code-worker}
  BENCH=${BENCH:-$repo_root/target/release/examples/bench_layer}
fi

# free_port, wait_port
source "$repo_root/tests/scripts/ports.sh"

mkdir -p "$work/repos" "$work/registry" "$work/tmp" "$work/baseline"
# git-daemon itself (not the `git daemon` wrapper, whose child would outlive a kill).
free_port git_port
GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null "$(git --exec-path)/git-daemon" --reuseaddr --export-all \
  --listen=127.0.0.1 --port="$git_port" --base-path="$work/repos" "$work/repos" 2>"$work/git-daemon.log" &
pids+=($!)
free_port reg_port
cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: "$work/registry"}, delete: {enabled: true}}
http: {addr: "127.0.0.1:$reg_port"}
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_port "$git_port"
wait_port "$reg_port"

echo "generating $BRANCHES branches x $FILES files (~$MB MB each)..." >&2
python3 - "$work/repos/control.git" "$BRANCHES" "$FILES" "$MB" <<'PY'
import os, random, subprocess, sys
repo, branches, files, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
words = ["class", "define", "include", "file", "package", "service", "ensure", "present", "notify", "require",
         "before", "content", "template", "owner", "group", "mode", "undef", "true", "false", "lookup", "if",
         "else", "unless", "case", "default", "=>", "{", "}", "$facts['os']['family']", "$title", "String",
         "Optional[String]", "Stdlib::Absolutepath", "apache", "nginx", "postgresql", "ntp", "ssh", "firewall"]
def text(rng, size):
    out, n = [], 0
    while n < size:
        line = "  " + " ".join(rng.choice(words) if rng.random() < 0.85 else "'%s_%d'" % (rng.choice(words), rng.randint(0, 999))
                               for _ in range(rng.randint(3, 9))) + "\n"
        out.append(line); n += len(line)
    return "".join(out)[:size].encode()
subprocess.run(["git", "init", "-q", "--bare", repo], check=True, env=env)
p = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=repo, stdin=subprocess.PIPE, env=env)
w = p.stdin.write
avg = mb * 1024 * 1024 // files
for b in range(branches):
    w(b"commit refs/heads/env%02d\ncommitter Bench <b@example.com> 1700000000 +0000\ndata 5\nbench\ndeleteall\n" % b)
    entries = [("manifests/site.pp", b"node default {}\n"), ("environment.conf", b"modulepath = site:modules\n")]
    for j in range(files - 2):
        rng = random.Random((b + 1) * 1_000_003 + j)
        entries.append(("site/profile%02d/manifests/f%04d.pp" % (j % 40, j), text(rng, rng.randint(avg // 4, avg * 7 // 4))))
    for path, data in entries:
        w(b"M 100644 inline %s\ndata %d\n" % (path.encode(), len(data))); w(data); w(b"\n")
p.stdin.close()
assert p.wait() == 0
PY

control="git://127.0.0.1:$git_port/control.git"
image="127.0.0.1:$reg_port/bench/code"
printf '%s\n' "repository: $(du -sh "$work/repos/control.git" | cut -f1) packed, $BRANCHES branches"

# Runs "$@" under GNU time; prints "<label> <wall> s, peak RSS <n> MiB".
measure() {
  local label=$1; shift
  /usr/bin/time -v -o "$work/time.txt" "$@" >"$work/out.txt" 2>"$work/err.txt" || {
    echo "$label failed:" >&2; tail -20 "$work/err.txt" >&2; exit 1; }
  local wall rss
  wall=$(python3 - "$work/time.txt" <<'PY'
import sys
for line in open(sys.argv[1]):
    if "Elapsed (wall clock)" in line:
        t = line.rsplit(" ", 1)[1].strip().split(":")
        print("%.2f" % sum(float(x) * 60 ** i for i, x in enumerate(reversed(t))))
PY
)
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$work/time.txt")
  # CPU time (user + system) varies far less than wall time on a loaded machine.
  cpu=$(awk -F': ' '/User time|System time/ {t += $2} END {printf "%.2f", t}' "$work/time.txt")
  printf '%-34s %8s s   peak RSS %7s MiB   CPU %7s s\n' "$label" "$wall" "$rss" "$cpu"
  echo "$wall" >"$work/last-wall"
  echo "$cpu" >"$work/last-cpu"
}

build=("$WORKER" build --url "$control" --branch '*' --image "$image" --tag latest --insecure
       --work-dir "$work/tmp" --termination-log "$work/termination-log")
measure "cold build + push" "${build[@]}"
cold=$(cat "$work/last-wall")
cold_cpu=$(cat "$work/last-cpu")
grep -E ' (fetch|decode|reuse|publish) ' "$work/err.txt" | sed 's/^.* INFO /  /' || true

# One commit on one branch: env03 (as in the published numbers), or the last branch of a
# smaller run.
changed=$(printf 'env%02d' $(( BRANCHES > 3 ? 3 : BRANCHES - 1 )))
GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git -C "$work/repos/control.git" fast-import --quiet <<EOF
commit refs/heads/$changed
committer Bench <b@example.com> 1700000100 +0000
data 7
change
from refs/heads/$changed^0
M 100644 inline manifests/site.pp
data 33
node default { include profile }

EOF
measure "incremental (1 branch changed)" "${build[@]}"
incremental=$(cat "$work/last-wall")
incremental_cpu=$(cat "$work/last-cpu")
grep -E ' (fetch|decode|reuse|layer|publish) ' "$work/err.txt" | sed 's/^.* INFO /  /' || true

# Baseline: clone, tar | gzip -1, an OCI layout, skopeo copy.
baseline() {
  local b dir
  for b in $(git ls-remote --heads "$control" | sed 's#.*refs/heads/##'); do
    dir="$work/baseline/$b"
    git clone -q --depth 1 --branch "$b" "$control" "$dir"
    tar -C "$dir" --exclude=.git --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 \
      --transform "s,^\.,$b," -cf "$work/baseline/$b.tar" .
    gzip -1 -n -c "$work/baseline/$b.tar" >"$work/baseline/$b.tar.gz"
  done
  python3 - "$work/baseline" <<'PY'
import glob, hashlib, json, os, sys
root = sys.argv[1]; out = os.path.join(root, "layout"); blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data); return "sha256:" + d, len(data)
layers, diff_ids = [], []
for tar in sorted(glob.glob(os.path.join(root, "*.tar"))):
    diff_ids.append("sha256:" + hashlib.sha256(open(tar, "rb").read()).hexdigest())
    digest, size = put(open(tar + ".gz", "rb").read())
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cd, cs = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": layers}).encode()
md, ms = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
  skopeo copy -q --insecure-policy --dest-tls-verify=false "oci:$work/baseline/layout:latest" "docker://127.0.0.1:$reg_port/baseline/code:latest"
}
export -f baseline
export work control reg_port
measure "baseline clone+tar|gzip -1+skopeo" bash -c baseline
baseline_wall=$(cat "$work/last-wall")

# The gzip floor: the same tar streams through the worker's compressor on every core.
floor_line=$("$BENCH" floor "$work"/baseline/*.tar)
echo "$floor_line"
floor=$(echo "$floor_line" | awk '{for (i=1;i<=NF;i++) if ($i=="s") print $(i-1)}' | head -1)

echo "load average during the run: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores: above 2 means other work shared the CPU)"
python3 - "$cold" "$incremental" "$floor" "$baseline_wall" "$cold_cpu" "$incremental_cpu" <<'PY'
import sys
cold, inc, floor, base, cold_cpu, inc_cpu = map(float, sys.argv[1:7])
print("cold / gzip floor:       %.2fx (target <= 2)" % (cold / floor))
print("incremental / cold:      %.2f  (target <= 0.20)" % (inc / cold))
print("  in CPU time:           %.2f" % (inc_cpu / cold_cpu))
print("cold / baseline:         %.2fx" % (cold / base))
PY

[[ "${VALIDATE:-1}" == 1 ]] || exit 0
# The gate (spec.validate): the same builds of a control repository of valid Puppet
# code, without and with the validator. The validator is the pod's sidecar script
# (crds/src/validator.rs) run here beside the worker with this machine's `puppet`, so
# both share the cores as they share a node.
command -v puppet >/dev/null || { echo "no puppet: skipping the validation runs (install-deps.sh installs Debian's)" >&2; exit 0; }
VFILES=${VFILES:-600}
echo
echo "validation: $BRANCHES branches x $VFILES manifests + $(( VFILES / 10 )) EPP templates, plus examples/ and plans/ that are not validated"
python3 - "$work/repos/valid.git" "$BRANCHES" "$VFILES" <<'PY'
import os, random, subprocess, sys
repo, branches, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
def klass(rng, module, name):
    body = []
    for r in range(rng.randint(3, 12)):
        kind = rng.choice(["file", "package", "service", "exec", "notify"])
        body.append("  %s { '%s_%s_%d':\n    ensure => %s,\n    tag    => ['%s', $facts['os']['family']],\n  }\n"
                    % (kind, module, name, r, rng.choice(["present", "absent", "'latest'"]), module))
        if rng.random() < 0.3:
            body.append("  if $enable {\n    $x%d = lookup('%s::%s::k%d', String, 'first', 'none')\n    notify { \"${x%d} %d\": }\n  }\n"
                        % (r, module, name, r, r, r))
    return "class %s::%s (\n  Boolean $enable = true,\n  Optional[String] $path = undef,\n) {\n%s}\n" % (module, name, "".join(body))
subprocess.run(["git", "init", "-q", "--bare", repo], check=True, env=env)
p = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=repo, stdin=subprocess.PIPE, env=env)
w = p.stdin.write
for b in range(branches):
    w(b"commit refs/heads/env%02d\ncommitter Bench <b@example.com> 1700000000 +0000\ndata 5\nbench\ndeleteall\n" % b)
    entries = [("manifests/site.pp", b"node default {\n  include profile00::c0000\n}\n"),
               ("environment.conf", b"modulepath = site:modules\n"),
               ("plans/rollout.pp", b"plan rollout(TargetSpec $t) {\n  run_task('x', $t)\n}\n"),
               # The same type alias in every environment, as modules have.
               ("site/profile00/types/port.pp", b"type Profile00::Port = Integer[1, 65535]\n")]
    for j in range(files):
        rng = random.Random((b + 1) * 1_000_003 + j)
        module = "profile%02d" % (j % 40)
        entries.append(("site/%s/manifests/c%04d.pp" % (module, j), klass(rng, module, "c%04d" % j).encode()))
        if j % 10 == 0:
            entries.append(("site/%s/templates/t%04d.epp" % (module, j),
                            b"<%%- | String $name, Integer $port = 8140 | -%%>\n# %d\nserver = <%%= $name %%>:<%%= $port %%>\n" % j))
            entries.append(("site/%s/examples/e%04d.pp" % (module, j), b"include %s::c%04d\nbroken(\n" % (module.encode(), j)))
    for path, data in entries:
        w(b"M 100644 inline %s\ndata %d\n" % (path.encode(), len(data))); w(data); w(b"\n")
p.stdin.close()
assert p.wait() == 0
PY
python3 - "$repo_root/crds/src/validator.rs" >"$work/validator.sh" <<'PY'
import re, sys
print(re.search(r'pub const SCRIPT: &str = r#"(.*?)"#;', open(sys.argv[1]).read(), re.S).group(1))
PY
# One build of valid.git into the repository bench/$1; with $2 = validated, the
# validator script runs beside it on a fresh shared directory, as the sidecar does.
validated_build() {
  local args=("$WORKER" build --url "git://127.0.0.1:$git_port/valid.git" --branch '*'
              --image "127.0.0.1:$reg_port/bench/$1" --tag latest --insecure
              --work-dir "$work/tmp" --termination-log "$work/termination-log")
  if [[ "$2" != validated ]]; then
    "${args[@]}"
    return
  fi
  rm -rf "$work/validate" && mkdir -p "$work/validate"
  OPENVOX_VALIDATE_DIR="$work/validate" HOME="$work/validate/home" sh "$work/validator.sh" >"$work/validator.log" 2>&1 &
  local validator=$! rc=0
  "${args[@]}" --validate-dir "$work/validate" || rc=$?
  kill "$validator" 2>/dev/null || true
  wait "$validator" 2>/dev/null || true
  return $rc
}
export -f validated_build
export WORKER git_port
measure "cold, not validated" bash -c 'validated_build plain plain'
plain=$(cat "$work/last-wall")
measure "cold, validated" bash -c 'validated_build checked validated'
checked=$(cat "$work/last-wall")
grep -E ' (stage|validate) ' "$work/err.txt" | sed 's/^.* INFO /  /' || true
per_env=$(grep -E ' validate .*: ok, ' "$work/err.txt" | sed -E 's/.*\(([0-9.]+)s\)$/\1/' | paste -sd' ')
python3 - "$changed" <<'PY' | GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git -C "$work/repos/valid.git" fast-import --quiet
import sys
branch, site = sys.argv[1], "node default {\n  include profile01::c0001\n}\n"
sys.stdout.write("commit refs/heads/%s\ncommitter Bench <b@example.com> 1700000100 +0000\ndata 6\nchange\n"
                 "from refs/heads/%s^0\nM 100644 inline manifests/site.pp\ndata %d\n%s\n" % (branch, branch, len(site), site))
PY
measure "incremental, not validated" bash -c 'validated_build plain plain'
plain_inc=$(cat "$work/last-wall")
measure "incremental, validated" bash -c 'validated_build checked validated'
checked_inc=$(cat "$work/last-wall")
grep -E ' (stage|validate) ' "$work/err.txt" | sed 's/^.* INFO /  /' || true
python3 - "$plain" "$checked" "$plain_inc" "$checked_inc" "$per_env" <<'PY'
import statistics, sys
plain, checked, plain_inc, checked_inc = map(float, sys.argv[1:5])
per_env = [float(t) for t in sys.argv[5].split()]
print("validation adds, cold:        %.2f s (%.2fx the unvalidated build)" % (checked - plain, checked / plain))
print("validation adds, incremental: %.2f s (%.2fx)" % (checked_inc - plain_inc, checked_inc / plain_inc))
if per_env:
    print("per environment:              median %.2f s, max %.2f s (%d environments, two at a time)"
          % (statistics.median(per_env), max(per_env), len(per_env)))
PY
