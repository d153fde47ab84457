#!/usr/bin/env bash
# Benchmark of `openvox-code-worker sync` against `git clone --depth 1` of the same
# branches, in the same run, on loopback servers started here.
#
#   job-image/scripts/bench-sync.sh            # 8 branches x 3,000 files (~40 MB each), 20 modules
#   BRANCHES=2 FILES=500 MB=5 job-image/scripts/bench-sync.sh   # a quick run
#
# Settings (environment): BRANCHES, FILES, MB (per branch), MODULES (of which GIT_MODULES
# are git repositories, the rest Forge releases), SHARED (percent of files identical in
# every branch; 0 = every branch has its own content), WORKER (a worker binary; default:
# a release build of this checkout), BENCH_DIR (where to put the data; default /tmp).
#
# Prints wall time and peak RSS (GNU time -v) of: a cold sync (fetch, Forge downloads,
# trees, writing every environment), a second sync with nothing changed, and the
# baseline: one `git clone --depth 1 --single-branch` per branch (what r10k does for the
# control repository, without modules). Not part of `cargo test`.
set -euo pipefail

BRANCHES=${BRANCHES:-8}
FILES=${FILES:-3000}
MB=${MB:-40}
MODULES=${MODULES:-20}
GIT_MODULES=${GIT_MODULES:-6}
SHARED=${SHARED:-0}

here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
for tool in git python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (tests/scripts/install-deps.sh installs git)" >&2; exit 1; }
done

work=$(mktemp -d "${BENCH_DIR:-/tmp}/ovc-bench.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${WORKER:-}" ]]; then
  echo "building the worker (release)..." >&2
  (cd "$repo_root" && cargo build -q --release -p openvox-code-worker)
  WORKER="$repo_root/target/release/openvox-code-worker"
fi

# free_port, wait_port
source "$repo_root/tests/scripts/ports.sh"

mkdir -p "$work/repos" "$work/forge" "$work/tmp"
free_port git_port
# git-daemon itself (not the `git daemon` wrapper, whose child would outlive a kill).
GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null "$(git --exec-path)/git-daemon" --reuseaddr --export-all --listen=127.0.0.1 \
  --port="$git_port" --base-path="$work/repos" "$work/repos" 2>"$work/git-daemon.log" &
pids+=($!)
free_port forge_port
python3 -m http.server --bind 127.0.0.1 --directory "$work/forge" "$forge_port" >"$work/forge.log" 2>&1 &
pids+=($!)
wait_port "$git_port"
wait_port "$forge_port"

echo "generating $BRANCHES branches x $FILES files (~$MB MB each), $MODULES modules..." >&2
python3 - "$work" "$git_port" "$BRANCHES" "$FILES" "$MB" "$MODULES" "$GIT_MODULES" "$SHARED" <<'PY'
import gzip, hashlib, io, json, os, random, subprocess, sys, tarfile
work, git_port = sys.argv[1], int(sys.argv[2])
branches, files, mb, modules, git_modules, shared = map(int, sys.argv[3:9])
env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
words = ["class", "define", "include", "file", "package", "service", "ensure", "present", "notify",
         "require", "before", "content", "template", "owner", "group", "mode", "undef", "true", "false",
         "hiera", "lookup", "if", "else", "unless", "case", "default", "=>", "{", "}", "$facts", "$title"]

def text(rng, size):
    out, n = [], 0
    while n < size:
        line = "  " + " ".join(rng.choice(words) if rng.random() < 0.7 else "%08x" % rng.getrandbits(32)
                               for _ in range(rng.randint(3, 9))) + "\n"
        out.append(line); n += len(line)
    return "".join(out)[:size].encode()

def fast_import(repo, commits):
    subprocess.run(["git", "init", "-q", "--bare", repo], check=True, env=env)
    p = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=repo, stdin=subprocess.PIPE, env=env)
    for ref, entries in commits:
        w = p.stdin.write
        w(b"commit %s\ncommitter Bench <b@example.com> 1700000000 +0000\ndata 5\nbench\ndeleteall\n" % ref.encode())
        for path, mode, data in entries:
            w(b"M %s inline %s\ndata %d\n" % (mode.encode(), path.encode(), len(data)))
            w(data); w(b"\n")
    p.stdin.close()
    assert p.wait() == 0

# Modules: Forge releases and git repositories, ~100 files each.
lines = []
for i in range(modules):
    rng = random.Random(1000 + i)
    name = "mod%02d" % i
    entries = [("manifests/init.pp", "100644", b"class %s {}\n" % name.encode())]
    entries += [("manifests/part%03d.pp" % j, "100644", text(rng, rng.randint(1000, 7000))) for j in range(99)]
    if i < git_modules:
        fast_import(f"{work}/repos/{name}.git", [("refs/heads/main", entries)])
        lines.append(f"mod '{name}', :git => 'git://127.0.0.1:{git_port}/{name}.git', :branch => 'main'\n")
    else:
        slug, version = f"bench-{name}", "1.0.0"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path, _, data in entries:
                info = tarfile.TarInfo(f"{slug}-{version}/{path}"); info.size = len(data); info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        blob = buf.getvalue()
        os.makedirs(f"{work}/forge/v3/files", exist_ok=True); os.makedirs(f"{work}/forge/v3/releases", exist_ok=True)
        with open(f"{work}/forge/v3/files/{slug}-{version}.tar.gz", "wb") as f: f.write(blob)
        release = {"version": version, "file_uri": f"/v3/files/{slug}-{version}.tar.gz",
                   "file_sha256": hashlib.sha256(blob).hexdigest()}
        with open(f"{work}/forge/v3/releases/{slug}-{version}", "w") as f: json.dump(release, f)
        lines.append(f"mod 'bench-{name}', '{version}'\n")
puppetfile = "".join(lines).encode()

# Control branches: FILES files adding up to about MB megabytes each.
avg = mb * 1024 * 1024 // files
commits = []
for b in range(branches):
    entries = [("Puppetfile", "100644", puppetfile), ("manifests/site.pp", "100644", b"node default {}\n")]
    for j in range(files - 2):
        seed = j if (j * 100 // files) < shared else (b + 1) * 1_000_003 + j
        rng = random.Random(seed)
        entries.append(("site/profile%02d/manifests/f%04d.pp" % (j % 40, j), "100644",
                        text(rng, rng.randint(avg // 4, avg * 7 // 4))))
    commits.append(("refs/heads/env%02d" % b, entries))
fast_import(f"{work}/repos/control.git", commits)
PY

control="git://127.0.0.1:$git_port/control.git"
forge="http://127.0.0.1:$forge_port"
branch_list=$(git ls-remote --heads "$control" | sed 's#.*refs/heads/##')
pack_size=$(du -sh "$work/repos/control.git/objects" | cut -f1)
echo "control repository: $(echo "$branch_list" | wc -l) branches, objects $pack_size" >&2

# `time -v` into a file; prints "<wall seconds> <max RSS KiB>".
measure() {
  local out=$1; shift
  sync  # flush what earlier steps wrote, so no run pays for another's writeback
  /usr/bin/time -v -o "$out" "$@" >"$out.stdout" 2>"$out.stderr" || { echo "FAILED: $*" >&2; tail -5 "$out.stderr" >&2; exit 1; }
  python3 - "$out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", t).group(1).strip()
parts = [float(p) for p in wall.split(":")]
secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
user = float(re.search(r"User time \(seconds\): (.*)", t).group(1))
system = float(re.search(r"System time \(seconds\): (.*)", t).group(1))
print(f"{secs:.2f} {rss} {user:.2f}/{system:.2f}")
PY
}

# Samples the largest anonymous and file-backed RSS of the newest child of $1 (a
# `time` process) until it exits; peak RSS from `time` counts mmapped pack pages too.
sample_rss() {
  local parent=$1 child="" anon=0 file=0
  while kill -0 "$parent" 2>/dev/null; do
    [[ -z "$child" ]] && child=$(pgrep -n -P "$parent" || true)
    if [[ -n "$child" && -r /proc/$child/status ]]; then
      read -r a f < <(awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{print a+0, f+0}' "/proc/$child/status" 2>/dev/null || echo "0 0")
      (( a > anon )) && anon=$a
      (( f > file )) && file=$f
    fi
    sleep 0.02
  done
  echo "$((anon / 1024)) $((file / 1024))"
}

echo "running..." >&2
sync_cold=$(measure "$work/sync-cold" "$WORKER" sync --url "$control" --branch '*' --forge-url "$forge" \
  --dir "$work/out" --work-dir "$work/tmp")
sync_warm=$(measure "$work/sync-warm" "$WORKER" sync --url "$control" --branch '*' --forge-url "$forge" \
  --dir "$work/out" --work-dir "$work/tmp")
clone_script="set -e; for b in $(echo $branch_list); do git clone -q --depth 1 --single-branch --branch \$b $control $work/clones/\$b; done"
mkdir -p "$work/clones"
clones=$(measure "$work/clones.time" bash -c "$clone_script")

/usr/bin/time -v -o "$work/sync-split" "$WORKER" sync --url "$control" --branch '*' --forge-url "$forge" \
  --dir "$work/out-split" --work-dir "$work/tmp" >/dev/null 2>&1 &
split_pid=$!
split=$(sample_rss "$split_pid")
wait "$split_pid" || { echo "FAILED: sync (RSS split run)" >&2; exit 1; }
rm -rf "$work/out-split"
out_size=$(du -sh --apparent-size "$work/out/.versions" | cut -f1)
clone_size=$(du -sh --apparent-size --exclude=.git "$work/clones" | cut -f1)
read -r sc_wall sc_rss sc_cpu <<<"$sync_cold"
read -r sw_wall sw_rss sw_cpu <<<"$sync_warm"
read -r cl_wall cl_rss cl_cpu <<<"$clones"
printf '\n%s branches x %s files (~%s MB each, %s%% shared), %s modules (%s git, %s Forge); %s cores\n' \
  "$BRANCHES" "$FILES" "$MB" "$SHARED" "$MODULES" "$GIT_MODULES" "$((MODULES - GIT_MODULES))" "$(nproc)"
printf '%-44s %9s %12s %14s\n' "run" "wall s" "peak RSS MiB" "user/sys CPU s"
printf '%-44s %9s %12s %14s\n' "sync, cold (fetch + modules + write)" "$sc_wall" "$((sc_rss / 1024))" "$sc_cpu"
printf '%-44s %9s %12s %14s\n' "sync, nothing changed" "$sw_wall" "$((sw_rss / 1024))" "$sw_cpu"
printf '%-44s %9s %12s %14s\n' "git clone --depth 1, one per branch" "$cl_wall" "$((cl_rss / 1024))" "$cl_cpu"
printf 'written: sync %s (environments with modules), clones %s (without .git, without modules)\n' "$out_size" "$clone_size"
read -r split_anon split_file <<<"$split"
printf 'sync peak RSS split (sampled every 20 ms, separate cold run after the others): anonymous %s MiB, file-backed (mmapped packs) %s MiB\n' \
  "$split_anon" "$split_file"
grep -E ' (fetch|env|write) ' "$work/sync-cold.stderr" | sed 's/^[^ ]* *//' | head -20
