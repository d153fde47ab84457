#!/usr/bin/env bash
# Benchmark of issue 19: the release worker next to r10k from Debian, in one run, on the
# same fixture. Not part of `cargo test`.
#
#   job-image/scripts/bench-modules.sh                          # 8 branches x ~50 MB, 20 git modules, 3 runs
#   BRANCHES=2 MB=5 MODULES=4 RUNS=1 job-image/scripts/bench-modules.sh   # a quick run
#
# Fixture (regenerated on every invocation, everything under a tmpfs directory): a
# control repository of BRANCHES branches of about MB MB of Puppet-like files (profiles,
# roles, Hiera data, templates) each, and MODULES git module repositories of a few
# hundred KB to a few MB (a third of it spec/, three commits, two tags), served by
# `git daemon` on 127.0.0.1. Every branch's Puppetfile names every module, in turn by
# :tag, :commit, :branch and `:branch => :control_branch, :default_branch => 'main'`
# (half the branches find a module branch of their name, the others fall back).
#
# Each of RUNS runs, on the same fixture (the changed branch is reset between runs):
#   r10k    cold `r10k deploy environment --modules` into an empty basedir and cachedir;
#           one commit on one branch, then `--modules --incremental`; nothing changed,
#           `--modules` (as in the issue) and `--modules --incremental`; a second
#           commit on the same branch deployed alone (`r10k deploy environment <env>
#           --modules --incremental`, what a webhook runs)
#   worker  cold `build` + push into an empty repository (fresh --work-dir, as a Job's
#           scratch volume); the same one commit (the previous image is the repository's
#           tag, as in bench-image.sh); nothing changed
# and prints the medians (wall time, peak RSS from GNU time -v) as a table with the
# ratios worker / r10k, the issue's targets as PASS/FAIL lines (informational: the
# script exits 0 when everything ran), the worker's step lines of the last run, and
# (CODEC=1, the default) the level trade-off: the cold layers' tar streams deflated as
# the layer compressor does at gzip levels 1, 2, 3, 6 and 9 and as the worker's zstd
# frames (`bench_layer levels`), and zstd's CLI next to them. Each run also builds cold
# and one-branch with `--compression zstd`.
#
# Settings (environment): BRANCHES (8), MB (50, per branch), MODULES (20), RUNS (3),
# CODEC (1), WORKER and BENCH (binaries; default: release builds of this checkout),
# BENCH_DIR (default /dev/shm, else /tmp). Needs r10k (tests/scripts/install-deps.sh
# installs Debian's) and what bench-image.sh needs.
set -euo pipefail

BRANCHES=${BRANCHES:-8}
MB=${MB:-50}
MODULES=${MODULES:-20}
RUNS=${RUNS:-3}
CODEC=${CODEC:-1}

here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
for tool in git python3 /usr/bin/time docker-registry r10k zstd; do
  command -v "$tool" >/dev/null || { echo "missing $tool (tests/scripts/install-deps.sh installs it)" >&2; exit 1; }
done
(( BRANCHES >= 1 && MODULES >= 1 && RUNS >= 1 )) || { echo "BRANCHES, MODULES and RUNS must be at least 1" >&2; exit 1; }

base=${BENCH_DIR:-/dev/shm}
[[ -d "$base" && -w "$base" ]] || base=/tmp
work=$(mktemp -d "$base/ovc-bench-modules.XXXXXX")
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

# git and r10k see neither this machine's nor this user's git configuration.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p "$work/repos" "$work/registry" "$work/logs" "$work/home"
# git-daemon itself (not the `git daemon` wrapper, whose child would outlive a kill).
free_port git_port
"$(git --exec-path)/git-daemon" --reuseaddr --export-all \
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

echo "generating $BRANCHES branches of ~$MB MB and $MODULES git modules in $work..." >&2
python3 - "$work/repos" "$git_port" "$BRANCHES" "$MB" "$MODULES" <<'PY'
import json, os, random, subprocess, sys
repos, port, branches, mb, modules = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
env = dict(os.environ)

# Lines of Puppet, Hiera, ERB/EPP and Ruby, each with its own names and values; files are
# drawn from these pools, so text compresses about like real code (~5x with gzip -6;
# Puppet's own Ruby library, tarred, compresses 4.5x).
def pools(seed):
    rng = random.Random(seed)
    ident = lambda: "%s_%s%d" % (rng.choice(["app", "web", "db", "mon", "log", "net", "sec", "base", "ci", "mq"]),
                                 rng.choice(["conf", "port", "user", "dir", "pkg", "svc", "opts", "key", "url", "host"]),
                                 rng.randint(0, 9999))
    kinds = ["file", "package", "service", "exec", "user", "group", "cron", "concat::fragment", "apache::vhost"]
    pp = []
    for _ in range(12000):
        r = rng.random()
        if r < 0.2:
            pp.append("  %s { '%s':\n" % (rng.choice(kinds), ident()))
        elif r < 0.6:
            pp.append("    %-8s => %s,\n" % (rng.choice(["ensure", "owner", "group", "mode", "content", "require",
                                                           "notify", "source", "path", "before", "tag"]),
                      rng.choice(["present", "'root'", "'0644'", "$%s" % ident(), "Package['%s']" % ident(),
                                  "template('profile/%s.erb')" % ident(), "\"/etc/%s/%s.conf\"" % (ident(), ident()),
                                  "lookup('profile::%s')" % ident(), "true", "undef"])))
        elif r < 0.75:
            pp.append("  }\n")
        elif r < 0.85:
            pp.append("  # %s\n" % " ".join(rng.choice(["ensure", "the", "service", "is", "restarted", "when", "config",
                                                        "changes", "see", "ticket", "OPS-%d" % rng.randint(1, 9999)])
                                             for _ in range(rng.randint(3, 10))))
        else:
            pp.append("  if $facts['os']['family'] == '%s' {\n    include profile::%s\n  }\n"
                      % (rng.choice(["Debian", "RedHat", "Suse"]), ident()))
    # Hiera data: keys made unique per file when drawn (the worker checks the YAML).
    yaml = [("%s::%s" % (rng.choice(["profile", "role", "ntp", "apache", "postgresql", "sshd"]), ident()),
             rng.choice(["true", "false", str(rng.randint(0, 65535)), "'%s.example.com'" % ident(),
                         "\"%%{lookup('%s')}\"" % ident(), "\n  - '%s'\n  - '%s'" % (ident(), ident())]))
            for _ in range(6000)]
    rb = ["    %s\n" % rng.choice(["def %s(args)" % ident(), "end", "return nil if %s.nil?" % ident(),
                                  "%s = call_function('lookup', '%s')" % (ident(), ident()),
                                  "it { is_expected.to contain_file('%s') }" % ident(),
                                  "let(:params) { { %s: '%s' } }" % (ident(), ident()),
                                  "expect(subject).to compile.with_all_deps", "context 'on %s' do" % ident()])
          for _ in range(6000)]
    erb = pp[:3000] + ["%s: <%%= @%s %%>\n" % kv for kv in yaml[:3000]]
    return rng, {"pp": pp, "yaml": yaml, "rb": rb, "erb": erb}

def draw(rng, pool, size):
    out = "".join(rng.choices(pool, k=max(1, size // 40)))
    return out[:size].encode()

def draw_yaml(rng, pool, size):
    out = ["---\n"]
    out += ["%s_%d: %s\n" % (k, i, v) for i, (k, v) in enumerate(rng.choices(pool, k=max(1, size // 40)))]
    return "".join(out).encode()

def fast_import(repo, script):
    if not os.path.isdir(repo):
        subprocess.run(["git", "init", "-q", "--bare", repo], check=True, env=env)
    p = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=repo, stdin=subprocess.PIPE, env=env)
    p.stdin.write(script)
    p.stdin.close()
    assert p.wait() == 0

def commit(ref, when, message, entries, parent=None, mark=None, deleteall=False):
    out = [b"commit %s\n" % ref.encode()]
    if mark: out.append(b"mark :%d\n" % mark)
    out.append(b"committer Bench <b@example.com> %d +0000\ndata %d\n%s\n" % (when, len(message), message.encode()))
    if parent: out.append(b"from %s\n" % parent.encode())
    if deleteall: out.append(b"deleteall\n")
    for path, data in entries:
        out.append(b"M 100644 inline %s\ndata %d\n" % (path.encode(), len(data))); out.append(data); out.append(b"\n")
    return b"".join(out)

# Modules: 200 KB to 3 MB (log-uniform), a third of it spec/; v1.0.0, v1.1.0, then main.
rng, pool = pools(19)
puppetfile, control_branch_mods = [], []
for i in range(modules):
    name = "mod%02d" % i
    mrng = random.Random(1000 + i)
    size = int(200_000 * (15 ** mrng.random()))
    entries = [("metadata.json", json.dumps({"name": "bench-" + name, "version": "1.1.0", "author": "bench",
                                              "dependencies": []}, indent=2).encode()),
               ("README.md", draw(mrng, pool["erb"], 4000)),
               ("manifests/init.pp", b"class %s {\n  contain %s::config\n}\n" % (name.encode(), name.encode()))]
    n = 0
    while n < size:
        r = mrng.random()
        k = len(entries)
        if r < 0.45:
            path, data = "manifests/part%03d.pp" % k, draw(mrng, pool["pp"], mrng.randint(1500, 12000))
        elif r < 0.55:
            path, data = "templates/t%03d.epp" % k, draw(mrng, pool["erb"], mrng.randint(500, 6000))
        elif r < 0.67:
            path, data = "lib/puppet/functions/%s/f%03d.rb" % (name, k), draw(mrng, pool["rb"], mrng.randint(800, 8000))
        else:
            path, data = "spec/classes/c%03d_spec.rb" % k, draw(mrng, pool["rb"], mrng.randint(1000, 9000))
        entries.append((path, data)); n += len(data)
    def touched(seed, count):
        trng = random.Random(seed)
        return [(p, d + b"# %d\n" % seed) for p, d in trng.sample(entries[3:], min(count, len(entries) - 3))]
    script = commit("refs/heads/main", 1699000000, "v1.0.0", entries, mark=1, deleteall=True)
    script += b"reset refs/tags/v1.0.0\nfrom :1\n\n"
    script += commit("refs/heads/main", 1699100000, "v1.1.0", touched(2 * i, 6), parent=":1", mark=2)
    script += b"reset refs/tags/v1.1.0\nfrom :2\n\n"
    script += commit("refs/heads/main", 1699200000, "work", touched(2 * i + 1, 4), parent=":2", mark=3)
    kind = i % 4
    if kind == 3:
        # A module branch for every other control branch; the rest use :default_branch.
        for b in range(0, branches, 2):
            script += commit("refs/heads/env%02d" % b, 1699300000 + b, "env%02d" % b,
                             touched(1000 * i + b, 2), parent=":3")
    repo = os.path.join(repos, name + ".git")
    fast_import(repo, script)
    url = "git://127.0.0.1:%d/%s.git" % (port, name)
    if kind == 0:
        puppetfile.append("mod '%s',\n  :git => '%s',\n  :tag => 'v1.0.0'\n" % (name, url))
    elif kind == 1:
        sha = subprocess.run(["git", "rev-parse", "v1.1.0^{commit}"], cwd=repo, env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        puppetfile.append("mod '%s',\n  :git => '%s',\n  :commit => '%s'\n" % (name, url, sha))
    elif kind == 2:
        puppetfile.append("mod '%s',\n  :git => '%s',\n  :branch => 'main'\n" % (name, url))
    else:
        puppetfile.append("mod '%s',\n  :git => '%s',\n  :branch => :control_branch,\n  :default_branch => 'main'\n"
                          % (name, url))
puppetfile = ("# %d modules, all from git\n\n" % modules + "\n".join(puppetfile)).encode()

# Control branches: about MB MB each (~14 KB per file), every branch its own content.
total = mb * 1024 * 1024
script = []
for b in range(branches):
    brng = random.Random(100 + b)
    entries = [("Puppetfile", puppetfile),
               ("environment.conf", b"modulepath = site:modules:$basemodulepath\n"),
               ("hiera.yaml", b"---\nversion: 5\nhierarchy:\n  - name: nodes\n    path: nodes/%{trusted.certname}.yaml\n"
                              b"  - name: common\n    path: common.yaml\n"),
               ("manifests/site.pp", b"node default {\n  include role::base\n}\n")]
    n, k = 0, 0
    while n < total:
        r = brng.random(); k += 1
        if r < 0.55:
            path, data = "site/profile/manifests/%s/p%04d.pp" % (brng.choice(["app", "db", "web", "base", "mon"]), k), \
                         draw(brng, pool["pp"], brng.randint(3000, 25000))
        elif r < 0.65:
            path, data = "site/role/manifests/r%04d.pp" % k, draw(brng, pool["pp"], brng.randint(1000, 6000))
        elif r < 0.85:
            path, data = "data/nodes/node%04d.example.com.yaml" % k, draw_yaml(brng, pool["yaml"], brng.randint(2000, 20000))
        elif r < 0.95:
            path, data = "site/profile/templates/t%04d.erb" % k, draw(brng, pool["erb"], brng.randint(1000, 15000))
        else:
            path, data = "site/profile/files/f%04d.conf" % k, draw(brng, pool["erb"], brng.randint(500, 30000))
        entries.append((path, data)); n += len(data)
    script.append(commit("refs/heads/env%02d" % b, 1700000000, "bench", entries, deleteall=True))
fast_import(os.path.join(repos, "control.git"), b"".join(script))
PY

control="git://127.0.0.1:$git_port/control.git"
# The changed branch: env03 (as in bench-image.sh), or the last branch of a smaller run.
changed=$(printf 'env%02d' $(( BRANCHES > 3 ? 3 : BRANCHES - 1 )))
changed_at=$(git -C "$work/repos/control.git" rev-parse "refs/heads/$changed")
# One commit on the changed branch ($1: 1 or 2, each a fixed commit on top of the last).
commit_change() {
  local body
  body=$(printf 'node default {\n  include role::base\n  include profile::change%s\n}' "$1")
  printf 'commit refs/heads/%s\ncommitter Bench <b@example.com> %d +0000\ndata 8\nchange %s\nfrom refs/heads/%s^0\nM 100644 inline manifests/site.pp\ndata %d\n%s\n\n' \
    "$changed" $((1700000100 + $1)) "$1" "$changed" $(( ${#body} + 1 )) "$body" |
    git -C "$work/repos/control.git" fast-import --quiet
}
reset_change() { git -C "$work/repos/control.git" update-ref "refs/heads/$changed" "$changed_at"; }

module_sizes=$(du -sb "$work"/repos/mod*.git | awk '{s += $1} END {printf "%.1f", s / 1048576}')
echo "fixture: control.git $(du -sh "$work/repos/control.git" | cut -f1) packed ($BRANCHES branches of ~$MB MB);" \
  "$MODULES module repositories, $module_sizes MiB packed; in $work ($(df --output=fstype "$work" | tail -1))"

# r10k: shellgit (r10k 3.15's default, as Debian ships no rugged), spec/ left out as the
# worker does by default, basedir and cachedir in the work directory.
cat >"$work/r10k.yaml" <<EOF
---
cachedir: '$work/r10k/cache'
git:
  provider: shellgit
sources:
  bench:
    remote: '$control'
    basedir: '$work/r10k/environments'
deploy:
  exclude_spec: true
EOF
r10k=(env HOME="$work/home" r10k deploy environment -c "$work/r10k.yaml")

# Runs "$@" under GNU time as case $1 of run $run; appends "<case> <wall> <rss MiB> <cpu>"
# to the results and keeps the output in logs/<case>.<run>.{out,err}.
measure() {
  local name=$1; shift
  local log="$work/logs/$name.$run"
  /usr/bin/time -v -o "$log.time" "$@" >"$log.out" 2>"$log.err" || {
    echo "$name (run $run) failed:" >&2; tail -20 "$log.err" >&2; exit 1; }
  python3 - "$name" "$log.time" >>"$work/results" <<'PY'
import re, sys
t = open(sys.argv[2]).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", t).group(1).strip()
secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): (.*)", t))
print("%s %.2f %.1f %.2f" % (sys.argv[1], secs, rss, cpu))
PY
  printf '  %-22s %s\n' "$name" "$(tail -1 "$work/results" | awk '{printf "%6.2f s  %6.1f MiB  CPU %6.2f s", $2, $3, $4}')" >&2
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$work/results"
for run in $(seq "$RUNS"); do
  echo "run $run of $RUNS" >&2
  reset_change
  rm -rf "$work/r10k"
  measure r10k-cold "${r10k[@]}" --modules
  commit_change 1
  measure r10k-one-branch "${r10k[@]}" --modules --incremental
  measure r10k-unchanged "${r10k[@]}" --modules
  measure r10k-unchanged-incr "${r10k[@]}" --modules --incremental
  commit_change 2
  measure r10k-webhook "${r10k[@]}" "$changed" --modules --incremental

  reset_change
  image="127.0.0.1:$reg_port/bench/code-run$run"
  build=("$WORKER" build --url "$control" --branch '*' --image "$image" --tag latest --insecure
         --work-dir "$work/scratch" --termination-log "$work/termination-log")
  # Each build starts with an empty scratch directory, as a Job's pod does.
  rm -rf "$work/scratch" && mkdir -p "$work/scratch"
  measure worker-cold "${build[@]}"
  commit_change 1
  rm -rf "$work/scratch" && mkdir -p "$work/scratch"
  measure worker-one-branch "${build[@]}"
  rm -rf "$work/scratch" && mkdir -p "$work/scratch"
  measure worker-unchanged "${build[@]}"

  # The same two builds with zstd layers (--compression zstd), into a repository of
  # their own.
  reset_change
  zbuild=("$WORKER" build --url "$control" --branch '*' --image "$image-zstd" --tag latest --insecure
          --compression zstd --work-dir "$work/scratch" --termination-log "$work/termination-log")
  rm -rf "$work/scratch" && mkdir -p "$work/scratch"
  measure worker-cold-zstd "${zbuild[@]}"
  commit_change 1
  rm -rf "$work/scratch" && mkdir -p "$work/scratch"
  measure worker-one-branch-zstd "${zbuild[@]}"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# Same work on both sides: the files of the cold environments (r10k's checkouts without
# .git and .r10k-deploy.json; the worker's cold layers, pulled back from the registry).
cold_ref=$(tail -1 "$work/logs/worker-cold.1.out")
mkdir -p "$work/codec"
python3 - "$cold_ref" "$work/codec" "$work/r10k/environments" <<'PY'
import gzip, json, os, sys, tarfile, urllib.request
ref, out, envs = sys.argv[1:4]
host, rest = ref.split("/", 1)
repo, digest = rest.split("@")
accept = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
def get(kind, d):
    req = urllib.request.Request("http://%s/v2/%s/%s/%s" % (host, repo, kind, d), headers={"Accept": accept})
    return urllib.request.urlopen(req).read()
manifest = json.loads(get("manifests", digest))
if "manifests" in manifest:
    manifest = json.loads(get("manifests", manifest["manifests"][0]["digest"]))
files = size = compressed = 0
for i, layer in enumerate(manifest["layers"]):
    blob = get("blobs", layer["digest"]); compressed += len(blob)
    path = os.path.join(out, "layer%02d.tar" % i)
    with open(path, "wb") as f:
        f.write(gzip.decompress(blob))
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                files += 1; size += m.size
r_files = r_size = 0
for top, dirs, names in os.walk(envs):
    dirs[:] = [d for d in dirs if d != ".git"]
    for n in names:
        if n != ".r10k-deploy.json":
            r_files += 1; r_size += os.path.getsize(os.path.join(top, n))
print("cold content: worker %d layers, %d files, %.1f MiB (%.1f MiB gzip); r10k %d files, %.1f MiB"
      " (after the runs' commits)" % (len(manifest["layers"]), files, size / 1048576, compressed / 1048576,
                                      r_files, r_size / 1048576))
PY

echo
printf '%s branches x ~%s MB, %s git modules in every Puppetfile; medians of %s runs; %s cores;' \
  "$BRANCHES" "$MB" "$MODULES" "$RUNS" "$(nproc)"
echo " load average $load_start at the start, $load_end at the end"
echo "$(r10k version) (ruby $(ruby -e 'print RUBY_VERSION' 2>/dev/null || echo '?')), shellgit, exclude_spec: true; worker $("$WORKER" --version 2>/dev/null || echo "$WORKER")"
python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, wall, rss, cpu = line.split()
    runs.setdefault(name, []).append((float(wall), float(rss), float(cpu)))
med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in runs.items()}
cell = lambda k: "%6.2f s %5.0f MiB" % med[k][:2]
rows = [("cold: everything", "r10k-cold", "worker-cold"),
        ("one commit on one branch", "r10k-one-branch", "worker-one-branch"),
        ("nothing changed", "r10k-unchanged", "worker-unchanged"),
        ("nothing changed, r10k --incremental", "r10k-unchanged-incr", "worker-unchanged"),
        ("one commit, r10k deploys that env only", "r10k-webhook", "worker-one-branch"),
        ("cold, --compression zstd", "r10k-cold", "worker-cold-zstd"),
        ("one commit on one branch, --compression zstd", "r10k-one-branch", "worker-one-branch-zstd")]
print("| %-45s | %-20s | %-20s | %5s |" % ("work", "r10k", "worker", "ratio"))
print("|%s|%s|%s|%s|" % ("-" * 47, "-" * 22, "-" * 22, "-" * 7))
for label, r, w in rows:
    print("| %-45s | %-20s | %-20s | %5.2f |" % (label, cell(r), cell(w), med[w][0] / med[r][0]))
print("each run (wall s): " + "; ".join("%s %s" % (k, " ".join("%.2f" % r[0] for r in v)) for k, v in runs.items()))
print("CPU s (user + sys, medians): " + ", ".join("%s %.2f" % (k, v[2]) for k, v in med.items()))
def target(what, value, limit, unit=""):
    print("%s %-52s %.2f%s (target <= %s%s)" % ("PASS" if value <= limit else "FAIL", what, value, unit, limit, unit))
target("one branch changed: worker / r10k --incremental", med["worker-one-branch"][0] / med["r10k-one-branch"][0], 0.2)
target("cold: worker build + push / r10k cold deploy", med["worker-cold"][0] / med["r10k-cold"][0], 0.3)
target("cold, zstd layers: worker / r10k cold deploy", med["worker-cold-zstd"][0] / med["r10k-cold"][0], 0.3)
target("worker peak RSS, largest of all runs", max(r[1] for k, v in runs.items() if k.startswith("worker") for r in v),
       256, " MiB")
PY

# Where the worker's time goes, from its step lines in the last run: per step, how many
# lines, their durations added up (steps overlap: modules and layers run in parallel),
# and when the first began and the last ended, in seconds after the build started.
for name in worker-cold worker-one-branch worker-unchanged worker-cold-zstd; do
  echo "worker steps, $name (run $RUNS):"
  python3 - "$work/logs/$name.$RUNS.err" "$work/logs/$name.$RUNS.time" <<'PY'
import datetime, re, sys
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", open(sys.argv[2]).read()).group(1).strip()
wall = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
steps, order, verbatim, first = {}, [], [], None
for line in open(sys.argv[1]):
    m = re.match(r"(\S+Z)\s+(\w+)\s+(\w+)\s+(.*?)\s*\(([0-9.]+)s\)$", line.rstrip())
    if not m:
        continue
    at = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    step, took = m.group(3), float(m.group(5))
    first = at - took if first is None else min(first, at - took)
    if step not in steps:
        steps[step] = [0, 0.0, at - took, at]; order.append(step)
    s = steps[step]
    s[0] += 1; s[1] += took; s[2] = min(s[2], at - took); s[3] = max(s[3], at)
    if step in ("previous", "check", "reuse", "publish"):
        verbatim.append("    %-8s %s (%ss)" % (step, m.group(4), m.group(5)))
# The first line's start is the closest to the process start the log shows.
for step in order:
    n, total, begin, end = steps[step]
    print("  %-9s %3d lines  %6.2f s added up  from %5.2f to %5.2f s" % (step, n, total, begin - first, end - first))
print("  (process wall time %.2f s)" % wall)
print("\n".join(verbatim[:12]))
PY
done

[[ "$CODEC" == 1 ]] || exit 0
echo
echo "codec: the cold layers' tar streams (run 1), deflated as the layer compressor does"
"$BENCH" levels 1,2,3,6,9 "$work"/codec/layer*.tar | tee "$work/levels.txt"
level6=$(awk '/the default/ {for (i = 1; i <= NF; i++) if ($i == "MiB") print $(i-1)}' "$work/levels.txt")
# zstd (containerd reads zstd layers) through its CLI on every core, for comparison.
for level in 1 3 9; do
  python3 - "$level" "${level6:-0}" "$work"/codec/layer*.tar <<'PY'
import os, subprocess, sys, time
level, level6, files = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
size = sum(os.path.getsize(f) for f in files)
start = time.monotonic(); out = 0
for f in files:
    out += len(subprocess.run(["zstd", "-q", "-T0", "-%s" % level, "-c", f], capture_output=True, check=True).stdout)
t = time.monotonic() - start
against = "  %+6.1f %% vs gzip level 6" % ((out / 1048576 / level6 - 1) * 100) if level6 else ""
print("zstd CLI -%-2s -T0 (libzstd, not the worker) %8.1f MB/s  %6.2f s  %8.2f MiB  ratio %6.3f%s"
      % (level, size / 1048576 / t, t, out / 1048576, out / size, against))
PY
done
