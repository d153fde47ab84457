//! A complete setting for `sync` tests: a git daemon serving the control repository and
//! module repositories, and a static Forge, each on its own port.

use std::path::PathBuf;

use harness::fixtures::{Bare, ForgeDir, Scratch, Server, git_daemon, static_http};

use super::{Run, leftovers, worker};

pub struct World {
    pub scratch: Scratch,
    pub repos: PathBuf,
    pub daemon: Server,
    pub forge: ForgeDir,
    pub forge_server: Server,
    pub control: Bare,
    /// TMPDIR of the worker.
    pub tmp: PathBuf,
    /// Output directory.
    pub out: PathBuf,
}

impl World {
    pub fn new() -> Self {
        let scratch = Scratch::new();
        let repos = scratch.mkdir("repos");
        let control = Bare::init(&repos.join("control.git"));
        let daemon = git_daemon(&repos, scratch.path("git-daemon.log"));
        let forge = ForgeDir::new(scratch.mkdir("forge"));
        let forge_server = static_http(&forge.root, scratch.path("forge.log"));
        let tmp = scratch.mkdir("tmp");
        let out = scratch.dir.path().join("out");
        Self {
            scratch,
            repos,
            daemon,
            forge,
            forge_server,
            control,
            tmp,
            out,
        }
    }

    /// A new bare repository served by the daemon.
    pub fn repo(&self, name: &str) -> Bare {
        Bare::init(&self.repos.join(name))
    }

    pub fn git_url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.daemon.port)
    }

    pub fn forge_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.forge_server.port)
    }

    /// Runs `sync` of the control repository into `out` with `args` (branches and
    /// options) and checks that no temporary file was left behind.
    pub fn sync(&self, args: &[&str]) -> Run {
        let url = self.git_url("control.git");
        let forge = self.forge_url();
        let mut all = vec![
            "sync",
            "--url",
            url.as_str(),
            "--forge-url",
            forge.as_str(),
            "--dir",
            self.out.to_str().unwrap(),
            "--timeout",
            "30s",
        ];
        all.extend_from_slice(args);
        let run = worker(&all, &self.tmp);
        assert!(
            leftovers(&self.tmp).is_empty(),
            "temporary files left: {:?}\n{}",
            leftovers(&self.tmp),
            run.stderr
        );
        run
    }

    /// How often the Forge served `path` (from its access log).
    pub fn forge_requests(&self, path: &str) -> usize {
        self.forge_server
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("\"GET {path} ")))
            .count()
    }

    /// A file of environment `env`, as servers see it (through the symlink).
    pub fn env_path(&self, env: &str, rel: &str) -> PathBuf {
        self.out.join(env).join(rel)
    }

    pub fn read(&self, env: &str, rel: &str) -> String {
        std::fs::read_to_string(self.env_path(env, rel))
            .unwrap_or_else(|e| panic!("{env}/{rel}: {e}"))
    }

    /// The version directory the environment symlink points to.
    pub fn version(&self, env: &str) -> String {
        let target =
            std::fs::read_link(self.out.join(env)).unwrap_or_else(|e| panic!("{env}: {e}"));
        target.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The input record of the current version of `env`.
    pub fn record(&self, env: &str) -> serde_json::Value {
        let path = self
            .out
            .join(".versions")
            .join(env)
            .join(format!("{}.json", self.version(env)));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    /// Version directories of `env`.
    pub fn versions(&self, env: &str) -> Vec<String> {
        let mut names: Vec<String> = leftovers(&self.out.join(".versions").join(env))
            .into_iter()
            .filter(|n| !n.ends_with(".json"))
            .collect();
        names.sort();
        names
    }
}
