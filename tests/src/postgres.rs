//! Debian's PostgreSQL server, a cluster of the test's own on a free loopback port.
//!
//! PostgreSQL refuses to run as root, which the tests are: as root the cluster belongs to the
//! `postgres` user the package created, in a directory of its own outside the test's private
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The superuser's name and its database's.
pub const USER: &str = "neoflix";

/// A PostgreSQL cluster, killed with the test.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    tls: bool,
}

/// The newest installed server's programs (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/test installs the postgresql package)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/postgres")
        .1
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as the cluster's owner.
fn owner_command(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The processes whose parent is `parent` (from `/proc/<pid>/stat`).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid: i32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

impl Postgres {
    /// A new cluster with superuser [`USER`] (password [`Postgres::password`], SCRAM over
    /// TCP) and its database, started and listening.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("neoflix-pg-")
            .tempdir()
            .unwrap();
        if as_root() {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown postgres {}", dir.path().display());
        }
        let pw = dir.path().join("password");
        std::fs::write(&pw, format!("{}\n", Self::password())).unwrap();
        let bin = bin_dir();
        let out = owner_command(&bin.join("initdb"))
            .args([
                "-A",
                "scram-sha-256",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg("--pwfile")
            .arg(&pw)
            .arg("-D")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
            child: None,
            tls: false,
        };
        pg.start_again();
        let out = pg.psql("postgres", &format!("CREATE DATABASE {USER}"));
        assert!(out.is_empty() || out.contains("CREATE DATABASE"), "{out}");
        pg
    }

    /// The superuser's password.
    pub fn password() -> &'static str {
        "test-password-not-secret"
    }

    /// A file holding the password, readable by the test's user.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// `postgres://neoflix@127.0.0.1:PORT/neoflix` (no password: it is in the file).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{USER}", self.port)
    }

    /// The `[database]` section of a `neoflix-ingest.toml` using it.
    pub fn database_section(&self) -> String {
        format!(
            "[database]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            self.url(),
            self.password_file().display()
        )
    }

    /// (Re)starts the server on its port and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = owner_command(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("port={}", self.port))
            .args(["-c", "unix_socket_directories=", "-c", "fsync=off"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres does not start");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections:\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Serves TLS with `cert` and `key` (PEM) from now on: restarts the server.
    pub fn use_tls(&mut self, cert: &Path, key: &Path) {
        let data = self.dir.path().join("data");
        std::fs::copy(cert, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        if as_root() {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status()
                .unwrap();
            assert!(st.success());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        self.kill();
        self.tls = true;
        self.start_again();
    }

    /// Runs `sql` with psql as the superuser in `db`; its output (panics on failure).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// Like [`Postgres::psql`], but an error is returned as its message.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args([
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-A",
                "-t",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", Self::password())
            .output()
            .expect("psql (the postgresql package) runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }

    /// SIGKILL: the server dies as in a crash; returns once its processes are gone, so that
    /// it can be started again.
    pub fn kill(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let alive = |pid: i32| {
            // SAFETY: kill with signal 0 only checks that the process exists.
            unsafe { libc::kill(pid, 0) == 0 }
        };
        // The postmaster (under runuser when root), and its children, which outlive it
        // briefly and hold its shared memory: a restart before they are gone is refused.
        let postmaster = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        let mut pids: Vec<i32> = postmaster.into_iter().collect();
        if let Some(pm) = postmaster {
            pids.extend(children_of(pm));
        }
        for &pid in &pids {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = c.kill();
        let _ = c.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
