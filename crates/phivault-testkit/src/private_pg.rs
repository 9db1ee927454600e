//! A PostgreSQL server of a test's own (`initdb` + `pg_ctl` in a temporary directory, on a
//! free loopback port), for tests that stop, restart or reconfigure the database itself,
//! which they must not do to the shared server other tests use at the same time.
//!
//! PostgreSQL refuses to run as root: as root the cluster is made and run as the `postgres`
//! user (through `runuser`), owning the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A running (or stopped) private PostgreSQL. Dropping it stops the server and removes its
/// files.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

/// The directory of `initdb` and `pg_ctl`: on the PATH, else Debian's newest versioned one.
fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        && out.status.success()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let real = std::fs::canonicalize(&path).unwrap_or(path);
        return real.parent().map(Path::to_owned);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl PrivatePostgres {
    /// Makes and starts a fresh cluster (trust authentication on loopback, user `postgres`).
    /// None when the PostgreSQL server programs are not installed; under CI (`CI` set) that
    /// is a failure instead, so the tests that need it cannot silently pass.
    pub fn start() -> Option<PrivatePostgres> {
        let Some(bin) = pg_bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have the PostgreSQL server programs (initdb, pg_ctl)"
            );
            eprintln!("skipped: no initdb/pg_ctl on this machine");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("phivault-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let as_postgres = is_root();
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
            bin,
            as_postgres,
        };
        if as_postgres {
            pg.run_plain("chown", &["postgres:postgres", &pg.path_text()]);
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data_text(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        pg.start_again();
        Some(pg)
    }

    fn path_text(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn data_text(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The directory of the cluster's files (its configuration is `data/postgresql.conf`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Appends `line` to `postgresql.conf` (applied at the next start).
    pub fn configure(&self, line: &str) {
        let conf = self.dir.path().join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", conf.display()));
        text.push('\n');
        text.push_str(line);
        text.push('\n');
        std::fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.path_text()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_text(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint, every session cut; the next start recovers from the write-ahead log).
    pub fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data_text(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program).display().to_string();
        if self.as_postgres {
            let mut all = vec!["-u", "postgres", "--", exe.as_str()];
            all.extend(args);
            self.run_plain("runuser", &all);
        } else {
            self.run_plain(&exe, args);
        }
    }

    fn run_plain(&self, program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl").display().to_string();
        let data = self.data_text();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            let mut all = vec!["-u", "postgres", "--", exe.as_str()];
            all.extend(args);
            Command::new("runuser").args(all).output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
