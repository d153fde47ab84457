//! The hand-over between the worker and the Puppet validator container of the same
//! pod (`spec.validate`). Both mount one emptyDir at [`DIR`]; the validator runs
//! [`SCRIPT`] in an image the user names, so the protocol is plain files and POSIX
//! shell:
//!
//! 1. the worker copies the files Puppet compiles of each rebuilt environment to
//!    `envs/<environment>/` (same relative paths) and then writes the names, one per
//!    line, to `request` (written elsewhere and renamed, so it appears whole);
//! 2. the validator, which waited for `request`, validates the environments two at a
//!    time (for two cores), each with `puppet parser validate` on its `.pp` files
//!    beside `puppet epp validate --continue_on_error` on its `.epp` files. It touches
//!    `results/<environment>.start` first, writes the outputs to
//!    `results/<environment>.pp.log` and `.epp.log`, and then the two exit codes to
//!    `results/<environment>.exit`. One process per environment is a must, not a
//!    choice: a `puppet` process remembers the type aliases it has parsed and reports
//!    the same alias in a second environment as "Attempt to redefine entity";
//! 3. the worker reads each result as it appears (the time between the two files is
//!    the environment's); an image without `puppet` writes `results/.error` instead.
//!
//! The validator is a native sidecar (an init container with `restartPolicy: Always`):
//! the kubelet starts it before the worker and stops it when the worker has ended, so
//! a build that validates nothing, or fails early, never waits for it. Environment
//! names are the worker's (`[a-z0-9_]`), never file names from the repository; the
//! script passes repository file names only through `find -exec`, never through the
//! shell.

/// Where the shared directory is mounted in both containers.
pub const DIR: &str = "/var/lib/openvox-code/validate";
/// Name of the validator container.
pub const CONTAINER: &str = "validator";
/// The request file (environment names, one per line).
pub const REQUEST: &str = "request";
/// Directory of the staged environments.
pub const ENVS: &str = "envs";
/// Directory of the results.
pub const RESULTS: &str = "results";
/// Written by the validator when it cannot validate at all (one line why).
pub const ERROR: &str = ".error";

/// The validator's command (`sh -c`). `OPENVOX_VALIDATE_DIR` names the shared
/// directory, `HOME` a writable directory for Puppet's own state.
pub const SCRIPT: &str = r#"set -u
PATH="$PATH:/opt/puppetlabs/bin:/opt/puppetlabs/puppet/bin"
dir="$OPENVOX_VALIDATE_DIR"
trap 'exit 0' TERM INT
mkdir -p "$dir/results" "$HOME"
if ! command -v puppet >/dev/null 2>&1; then
  echo "the validator image has no puppet command (looked in PATH and /opt/puppetlabs/bin)" > "$dir/results/.error"
  echo "validator: no puppet command in this image" >&2
else
  puppet --version | sed 's/^/validator: puppet /'
  while [ ! -e "$dir/request" ]; do sleep 1 & wait $!; done
  validate_env() {
    : > "$dir/results/$1.start"
    cd "$dir/envs/$1" || return
    find . -type f -name '*.pp' -exec puppet parser validate --color=false {} + > "$dir/results/$1.pp.log" 2>&1 &
    parser=$!
    find . -type f -name '*.epp' -exec puppet epp validate --continue_on_error --color=false {} + > "$dir/results/$1.epp.log" 2>&1
    epp=$?
    wait "$parser"
    pp=$?
    echo "$pp $epp" > "$dir/results/$1.tmp" && mv "$dir/results/$1.tmp" "$dir/results/$1.exit"
    echo "validator: $1: parser exit $pp, epp exit $epp"
  }
  # Environment names are the worker's ([a-z0-9_]), safe as words.
  set -- $(cat "$dir/request")
  while [ $# -gt 0 ]; do
    validate_env "$1" &
    other=$!
    shift
    if [ $# -gt 0 ]; then
      (validate_env "$1")
      shift
    fi
    wait "$other"
  done
fi
while :; do sleep 3600 & wait $!; done
"#;
