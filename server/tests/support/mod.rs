//! Test support shared by the server's integration tests: a real PostgreSQL server from the machine's
//! packages, started once per test binary and stopped when the binary exits, with a fresh database per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's data directory (the default of `otter-server`).
    Sqlite,
    /// A fresh database on the test binary's PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The `--database` URL for a test (`None`: the SQLite default in the data directory).
    pub fn url(self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_database()),
        }
    }
}

struct Cluster {
    bin: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Debian installs PostgreSQL under /usr/lib/postgresql/VERSION/bin; take the newest.
fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_PG_BIN") {
        return p.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): run tests/install-deps")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql: run tests/install-deps")
}

/// Runs a PostgreSQL tool; as root it runs as the `postgres` user (the server refuses to run as root).
fn pg(bin: &Path, tool: &str, args: &[&str]) {
    let is_root = nix_uid() == 0;
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    let out = cmd.args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nix_uid() -> u32 {
    // /proc/self/status "Uid:" line, real uid first.
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(1)
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("otter-pg-").tempdir().unwrap();
        if nix_uid() == 0 {
            let st = Command::new("chown").arg("postgres:").arg(dir.path()).status().unwrap();
            assert!(st.success());
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        pg(
            &bin,
            "initdb",
            &["-D", data_s, "-A", "trust", "-U", "otter", "-E", "UTF8", "--no-sync", "--no-instructions"],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!("-h 127.0.0.1 -p {port} -k {} -F -c max_connections=300", dir.path().display());
        let log = dir.path().join("log");
        pg(&bin, "pg_ctl", &["-D", data_s, "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
        // Stop the server when this test binary exits, however it exits.
        let stop = format!(
            "while [ -d /proc/{} ]; do sleep 1; done; {} -D {data_s} -m immediate stop >/dev/null 2>&1",
            std::process::id(),
            bin.join("pg_ctl").display()
        );
        let mut watcher = if nix_uid() == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &stop]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &stop]);
            c
        };
        watcher
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Deliberately not waited for: it outlives this process to stop the server after it.
        std::mem::forget(watcher.spawn().expect("starting the PostgreSQL watcher"));
        Cluster { bin, port, _dir: dir }
    })
}

/// A fresh, empty database on the test binary's PostgreSQL server.
pub fn postgres_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let c = cluster();
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    pg(&c.bin, "createdb", &["-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "otter", &name]);
    format!("postgres://otter@127.0.0.1:{}/{name}", c.port)
}
