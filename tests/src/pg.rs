//! A private Postgres server for fault tests: its own data directory and port, started and
//! stopped by the test (never the machine's shared server).
//!
//! `initdb` refuses to run as root; when the tests run as root the server runs as the
//! `postgres` system user (through `runuser`).

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

/// The directory of `initdb`/`pg_ctl`: `REASONREC_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else `PATH`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REASONREC_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

impl PrivatePostgres {
    /// initdb in a temp dir, then start on a free port (trust auth on 127.0.0.1, user postgres).
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("rr-private-pg-").tempdir()?;
        let as_postgres = is_root();
        let pg = Self { port: free_port()?, dir, bin: pg_bin_dir(), as_postgres };
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(pg.dir.path()).status()?.success();
            anyhow::ensure!(ok, "chown of the private Postgres directory failed");
        }
        let data = pg.data_dir();
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let exe = if exe.exists() { exe } else { PathBuf::from(tool) };
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let socket_dir = self.dir.path().display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket_dir} -c max_connections=200 \
             -c fsync=off -c full_page_writes=off",
            self.port
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data_dir(), "-o", &opts, "-l", &log, "-w", "-t", "60", "start"])
    }

    /// Stops the server (fast shutdown: open connections are cut, committed work is kept).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run("pg_ctl", &["-D", &self.data_dir(), "-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// Starts it again on the same port after [`PrivatePostgres::stop`].
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }

    /// Stop, then start: every client connection is cut and must reconnect.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data_dir(), "-m", "immediate", "-w", "-t", "30", "stop"]);
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
