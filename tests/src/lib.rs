//! Harness for the black-box tests: starts the real `neoflixd` with a config written for the
//! test, talks to it over its control socket, runs the real `neoflix` and `ffprobe`.
//!
//! The binaries are the ones cargo built next to the test executable (`cargo test --workspace`
//! builds every member's binaries).
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use neoflix_control::{Reply, Request, Status};

pub mod browser;
pub use browser::Browser;
pub mod garage;
pub mod postgres;
pub mod synth;
pub use postgres::Postgres;

/// Path of a workspace binary: next to the test executable, or in `NEOFLIX_E2E_BIN_DIR` (the
/// arm64 build, for instance).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("NEOFLIX_E2E_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(|d| d.parent())
                .expect("target/<profile>")
                .to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` (or cargo test --workspace)",
        p.display()
    );
    p
}

/// A command running a workspace binary, through `NEOFLIX_E2E_RUNNER` when set (a
/// space-separated prefix such as `qemu-aarch64 -L /path/to/arm64-sysroot`).
pub fn command(name: &str) -> Command {
    let runner = std::env::var("NEOFLIX_E2E_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    match parts.next() {
        None => Command::new(bin(name)),
        Some(first) => {
            let mut c = Command::new(first);
            c.args(parts).arg(bin(name));
            c
        }
    }
}

/// Runs `neoflix` with `args`.
pub fn neoflix(args: &[&str]) -> Output {
    command("neoflix")
        .args(args)
        .output()
        .expect("neoflix runs")
}

/// Where a lab lives: a temporary directory removed with it, or one kept (a lab opened again by
/// [`Lab::at`], in a VM that outlives the process that made it).
enum LabDir {
    /// Removed with the lab.
    Temp(tempfile::TempDir),
    /// Left in place: another process (a VM boot) made it or goes on with it.
    Kept(PathBuf),
}

/// A scratch area with a department key pair.
pub struct Lab {
    dir: LabDir,
    /// The network namespace neoflixd runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// The device id the daemon's config gets.
    pub device: String,
    /// Whether [`Lab::config`] gives the box a signing identity (as every real box has) when
    /// the config has no `[upload]` or `[signing]` of its own.
    pub signing: bool,
}

impl Lab {
    /// Creates the scratch area and a department key pair in `keys/`.
    pub fn new() -> Lab {
        Lab::named("room-e2e")
    }

    /// A lab whose daemon is called `device`.
    pub fn named(device: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("neoflix-e2e")
            .tempdir()
            .expect("tempdir");
        let out = neoflix(&["keygen", "--out", dir.path().join("keys").to_str().unwrap()]);
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Lab {
            dir: LabDir::Temp(dir),
            netns: None,
            device: device.to_string(),
            signing: true,
        }
    }

    /// The lab made earlier at `dir` for `device`, kept when this value is dropped.
    pub fn at(dir: &Path, device: &str) -> Lab {
        Lab {
            dir: LabDir::Kept(dir.to_owned()),
            netns: None,
            device: device.to_string(),
            signing: true,
        }
    }

    /// The lab's directory.
    pub fn root(&self) -> &Path {
        match &self.dir {
            LabDir::Temp(t) => t.path(),
            LabDir::Kept(p) => p,
        }
    }

    /// A lab whose box has no signing identity: it records unsigned recordings.
    pub fn unsigned(mut self) -> Lab {
        self.signing = false;
        self
    }

    /// What `neoflix verify` and `export` are given about custody in this lab: the CA when
    /// there is one, `--allow-unsigned` for an unsigned lab.
    pub fn custody_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.ca().exists() {
            args.extend(["--ca".into(), self.ca().display().to_string()]);
        }
        if !self.signing {
            args.push("--allow-unsigned".into());
        }
        args
    }

    /// The department CA certificate (made by [`Lab::pki`]).
    pub fn ca(&self) -> PathBuf {
        self.path("ca/ca.crt")
    }

    /// The `[signing]` section for this lab's device, issuing its certificate if needed.
    pub fn signing_section(&self) -> String {
        let ca = self.path("ca");
        if !ca.join(format!("{}.crt", self.device)).exists() {
            self.pki(&[&self.device]);
        }
        format!(
            "[signing]\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.join(format!("{}.crt", self.device)).display(),
            ca.join(format!("{}.key", self.device)).display()
        )
    }

    /// A path below the scratch area.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// The department secret key file.
    pub fn key(&self) -> PathBuf {
        self.path("keys/department.key")
    }

    /// `neoflix-ingest --config <lab>/ingest.toml ARGS`, the admin's subcommands: (exit code,
    /// stdout, stderr).
    pub fn ingest_admin(&self, args: &[&str]) -> (i32, String, String) {
        let out = command("neoflix-ingest")
            .arg("--config")
            .arg(self.path("ingest.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The chair's enrolment on the workstation with the department key: `neoflix reviewer
    /// enrol NAME` with `passphrase` (from a file), written to `<lab>/NAME.reviewer`.
    pub fn enrol_reviewer(&self, name: &str, passphrase: &str) -> PathBuf {
        self.enrol_as(name, passphrase, &["reviewer"])
    }

    /// A recording of about `secs` seconds by `d` (room `device`), waited for until the server
    /// holds its manifest and the box has deleted its copy, and the box is ready again; its id.
    pub fn record_delivered(
        &self,
        d: &mut Daemon,
        ingest: &Ingest,
        device: &str,
        secs: u64,
    ) -> String {
        d.wait_ready(Duration::from_secs(60));
        let id = d.ctl(Request::Start {}).recording.expect("a recording id");
        std::thread::sleep(Duration::from_secs(secs));
        assert!(d.ctl(Request::Stop {}).ok);
        let srv = self.path("server").join(device).join(&id);
        wait_until(
            "the recording delivered to the server",
            Duration::from_secs(60),
            || srv.join("manifest.json").exists() && self.recordings().is_empty(),
            &|| d.log_text() + &ingest.log_text(),
        );
        d.wait_ready(Duration::from_secs(60));
        id
    }

    /// [`Lab::enrol_reviewer`] with `roles` (`chair`, `reviewer`, `privacy-officer`,
    /// `it-admin`).
    pub fn enrol_as(&self, name: &str, passphrase: &str, roles: &[&str]) -> PathBuf {
        let pass = self.path(&format!("{name}.pass"));
        std::fs::write(&pass, format!("{passphrase}\n")).unwrap();
        let file = self.path(&format!("{name}.reviewer"));
        let key = self.key();
        let mut args = vec![
            "reviewer",
            "enrol",
            name,
            "--key",
            key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
            "-o",
            file.to_str().unwrap(),
        ];
        for r in roles {
            args.extend(["--role", r]);
        }
        let out = neoflix(&args);
        assert!(
            out.status.success(),
            "reviewer enrol: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        file
    }

    /// Writes a config with the given `[capture]` lines and extra sections, and returns its path.
    pub fn config(&self, capture: &str, preroll_secs: u32, extra: &str) -> PathBuf {
        let signing = if self.signing && !extra.contains("[upload]") && !extra.contains("[signing]")
        {
            self.signing_section()
        } else {
            String::new()
        };
        let extra = format!("{extra}\n{signing}");
        let text = format!(
            "device_id = \"{device}\"\n\
             [capture]\n{capture}\n\
             [ring]\ndir = \"{ring}\"\npreroll_secs = {preroll_secs}\n\
             [recordings]\ndir = \"{rec}\"\nrecipient = \"{recipient}\"\n{extra}\n\
             [control]\nsocket = \"{sock}\"\n\
             [readiness]\nrequire_clock_sync = false\n",
            device = self.device,
            ring = self.path("ring").display(),
            rec = self.path("recordings").display(),
            recipient = self.path("keys/department.pub").display(),
            sock = self.path("control.sock").display(),
        );
        let p = self.path("neoflixd.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts neoflixd on the config written by [`Lab::config`].
    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    /// Starts neoflixd with extra environment variables (systemd's `NOTIFY_SOCKET`, ...).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("neoflixd.log"))
            .unwrap();
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("neoflixd"));
                c
            }
            None => command("neoflixd"),
        };
        let child = c
            .arg("--config")
            .arg(self.path("neoflixd.toml"))
            .env("NEOFLIX_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("neoflixd starts");
        Daemon {
            child: Some(child),
            socket: self.path("control.sock"),
            log: self.path("neoflixd.log"),
        }
    }

    /// The recording directories, oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("recordings"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Exports a recording, its signer checked against the lab's CA (an unsigned lab's with
    /// `--allow-unsigned`); returns the command's output.
    pub fn export(&self, recording: &Path, out: &Path) -> Output {
        let mut args = vec![
            "export".to_string(),
            recording.display().to_string(),
            "--key".into(),
            self.key().display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(self.custody_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        neoflix(&args)
    }

    /// Every regular file below the scratch area's daemon-written directories.
    pub fn daemon_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(list) = std::fs::read_dir(dir) else {
                return;
            };
            for e in list.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path("ring"), &mut out);
        walk(&self.path("recordings"), &mut out);
        out
    }
}

/// A CA made with `neoflix pki` in `<lab>/ca`.
impl Lab {
    /// A TLS client trusting the lab's CA, with the certificate `neoflix pki` issued to `name`.
    pub fn client_tls(&self, name: &str) -> Result<rustls::ClientConfig, neoflix_pki::PkiError> {
        let ca = self.path("ca");
        neoflix_pki::client_tls(
            &ca.join("ca.crt"),
            Some((
                &ca.join(format!("{name}.crt")),
                &ca.join(format!("{name}.key")),
            )),
        )
    }

    /// Issues the server certificate for `ip` (once), from the CA made by [`Lab::pki`].
    pub fn issue_server(&self, ip: &str) {
        let ca = self.path("ca");
        if ca.join(format!("{ip}.crt")).exists() {
            return;
        }
        let out = neoflix(&[
            "pki",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--server",
            ip,
        ]);
        assert!(
            out.status.success(),
            "pki issue server {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates the CA (once) and issues `names` as devices.
    pub fn pki(&self, devices: &[&str]) -> PathBuf {
        let ca = self.path("ca");
        if !ca.join("ca.crt").exists() {
            let out = neoflix(&["pki", "init", "--dir", ca.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "pki init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.issue_server("127.0.0.1");
        }
        for d in devices {
            if ca.join(format!("{d}.crt")).exists() {
                continue;
            }
            let out = neoflix(&["pki", "issue", "--dir", ca.to_str().unwrap(), "--device", d]);
            assert!(
                out.status.success(),
                "pki issue {d}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ca
    }

    /// The `[upload]` section for device `device` against `ingest`.
    pub fn upload_section(&self, ingest: &Ingest, device: &str) -> String {
        let ca = self.path("ca");
        format!(
            "[upload]\nurl = \"https://{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ingest.addr,
            ca.join("ca.crt").display(),
            ca.join(format!("{device}.crt")).display(),
            ca.join(format!("{device}.key")).display()
        )
    }

    /// Writes the ingest config (storage in `<lab>/server`) on a free loopback port.
    pub fn ingest_config(&self, max_object_bytes: u64) -> Ingest {
        self.ingest_config_with(max_object_bytes, "")
    }

    /// [`Lab::ingest_config`] with `extra` TOML appended (a `[limits]` section, say).
    pub fn ingest_config_with(&self, max_object_bytes: u64, extra: &str) -> Ingest {
        self.ingest_config_at("127.0.0.1", max_object_bytes, extra)
    }

    /// [`Lab::ingest_config_with`] listening on `ip` (a local address), with a server
    /// certificate for it.
    pub fn ingest_config_at(&self, ip: &str, max_object_bytes: u64, extra: &str) -> Ingest {
        self.issue_server(ip);
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ca = self.path("ca");
        let cfg = self.path("ingest.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"{ip}:{port}\"\n[tls]\ncert = \"{c}/{ip}.crt\"\nkey = \"{c}/{ip}.key\"\nclient_ca = \"{c}/ca.crt\"\ncrl = \"{c}/ca.crl\"\n[storage]\ndir = \"{s}\"\nmax_object_bytes = {max_object_bytes}\n{extra}\n",
                c = ca.display(),
                s = self.path("server").display()
            ),
        )
        .unwrap();
        Ingest {
            addr: format!("{ip}:{port}"),
            config: cfg,
            log: self.path("ingest.log"),
            child: None,
        }
    }
}

/// A neoflix-ingest server.
pub struct Ingest {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Ingest {
    /// The server of a config written earlier (by [`Lab::ingest_config`]) listening on `addr`.
    pub fn from_config(config: PathBuf, addr: String, log: PathBuf) -> Ingest {
        Ingest {
            addr,
            config,
            log,
            child: None,
        }
    }

    /// Starts it and waits until it accepts connections.
    pub fn start(&mut self) {
        let mut c = command("neoflix-ingest");
        c.arg("--config").arg(&self.config);
        self.child = Some(spawn_server(c, &self.log, &self.addr, "neoflix-ingest"));
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server's log satisfies `cond` and returns it. The server
    /// logs a refused handshake after the client has already seen the alert,
    /// so a test reading the log right after a refusal races the server.
    pub fn wait_log(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log_text();
            if cond(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the server never logged {what}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it runs (it may have been killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, as systemd stops it: its exit code once it has stopped (panics after 30 s).
    pub fn terminate(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "neoflix-ingest did not stop on SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the server on its config expecting it to refuse to start: returns its exit code and
    /// stderr. Panics if it is still running after 20 s.
    pub fn start_expecting_exit(&self) -> (i32, String) {
        let mut child = command("neoflix-ingest")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("neoflix-ingest starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("neoflix-ingest kept running on {}", self.config.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
        (code, err)
    }
}

/// A raw mutual-TLS connection to the ingest server as the device `ca/<name>.crt`: for requests
/// curl will not make (a malformed chunked body, a body that trickles).
pub struct RawTls(rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>);

impl RawTls {
    /// Connects and completes the handshake.
    pub fn connect(lab: &Lab, ingest: &Ingest, name: &str) -> std::io::Result<RawTls> {
        let cfg = lab.client_tls(name).map_err(std::io::Error::other)?;
        let server = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server)
            .map_err(std::io::Error::other)?;
        let tcp = std::net::TcpStream::connect(&ingest.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(RawTls(s))
    }

    /// Writes `bytes` and flushes them onto the wire.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.0.write_all(bytes)?;
        self.0.flush()
    }

    /// Reads the response's status code (and whatever follows, until the server closes or
    /// `limit` passes); `None` when the connection ended without one.
    pub fn status(&mut self, limit: Duration) -> Option<u16> {
        use std::io::Read;
        self.0.sock.set_read_timeout(Some(limit)).ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(2).any(|w| w == b"\r\n") {
            match self.0.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&got);
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `cond` every 100 ms until it holds; fails after `limit`, naming `what` and showing
/// `log()` (a program's log, say).
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs curl against the ingest server with a device's certificate (`None`: no certificate);
/// returns (HTTP status, body), status 0 when the TLS handshake failed.
pub fn curl(
    lab: &Lab,
    ingest: &Ingest,
    cert: Option<(&Path, &Path)>,
    args: &[&str],
    path: &str,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(lab.path("ca/ca.crt"));
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = c
        .args(args)
        .arg(format!("https://{}{path}", ingest.addr))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A running neoflixd.
pub struct Daemon {
    child: Option<Child>,
    /// Its control socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Sends a control request.
    pub fn ctl(&self, req: Request) -> Reply {
        neoflix_control::call(&self.socket, &req)
            .unwrap_or_else(|e| panic!("control call failed: {e}\n{}", self.log_text()))
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.ctl(Request::Status {}).status.expect("status reply")
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `cond(status)` holds; panics with the log after `limit`.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(code)) = c.try_wait()
            {
                panic!(
                    "neoflixd exited ({code}) while waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            if self.socket.exists()
                && let Ok(r) = neoflix_control::call(&self.socket, &Request::Status {})
                && let Some(s) = r.status
                && cond(&s)
            {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `ready`.
    pub fn wait_ready(&mut self, limit: Duration) -> Status {
        self.wait_for("ready", limit, |s| s.ready)
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn terminate(mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().expect("wait");
        status.code().unwrap_or(-1)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the crash.
    pub fn kill9(mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("kill -9");
        c.wait().expect("wait");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What ffprobe says of a file.
#[derive(Debug)]
pub struct Probe {
    /// Container duration in seconds.
    pub duration: f64,
    /// Frames decoded.
    pub frames: u64,
    /// Width.
    pub width: u64,
    /// Height.
    pub height: u64,
    /// Codec.
    pub codec: String,
}

/// ffprobe's JSON for `file` with `what` (`-show_streams`, ...).
fn ffprobe_json(file: &Path, what: &[&str]) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json"])
        .args(what)
        .arg(file)
        .output()
        .expect("ffprobe is installed (scripts/test installs ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs ffprobe (counting frames) on `file`.
pub fn ffprobe(file: &Path) -> Probe {
    let v = ffprobe_json(file, &["-count_frames", "-show_format", "-show_streams"]);
    let s = &v["streams"][0];
    Probe {
        duration: v["format"]["duration"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap(),
        frames: s["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap(),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        codec: s["codec_name"].as_str().unwrap_or("").into(),
    }
}

/// One stream of a media file, as ffprobe reads it.
#[derive(Debug, Clone)]
pub struct StreamProbe {
    /// `video` or `audio`.
    pub kind: String,
    /// `h264`, `opus`, ...
    pub codec: String,
    /// When its first frame is presented, seconds.
    pub start: f64,
    /// Its duration, seconds.
    pub duration: f64,
    /// Video: its frame size.
    pub width: u64,
    /// See `width`.
    pub height: u64,
    /// Audio: channels and sample rate.
    pub channels: u64,
    /// See `channels`.
    pub sample_rate: u64,
}

/// Every stream of `file`.
pub fn ffprobe_streams(file: &Path) -> Vec<StreamProbe> {
    let v = ffprobe_json(file, &["-show_streams"]);
    let num = |s: &serde_json::Value, k: &str| -> f64 {
        s[k].as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::NAN)
    };
    v["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| StreamProbe {
            kind: s["codec_type"].as_str().unwrap_or("").into(),
            codec: s["codec_name"].as_str().unwrap_or("").into(),
            start: num(s, "start_time"),
            duration: num(s, "duration"),
            width: s["width"].as_u64().unwrap_or(0),
            height: s["height"].as_u64().unwrap_or(0),
            channels: s["channels"].as_u64().unwrap_or(0),
            sample_rate: s["sample_rate"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        })
        .collect()
}

/// Runs ffmpeg on `file` with `args` (after the input) into nothing; its log, at info level.
fn ffmpeg_log(file: &Path, args: &[&str]) -> String {
    ffmpeg_null(file, &["-hide_banner", "-nostats"], args)
}

/// Runs ffmpeg with `options`, input `file`, `args`, into nothing; its log.
fn ffmpeg_null(file: &Path, options: &[&str], args: &[&str]) -> String {
    let out = Command::new("ffmpeg")
        .args(options)
        .arg("-i")
        .arg(file)
        .args(args)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// When the first video track of `file` shows a white frame (mean luma above half), seconds on
/// the file's timeline, as a player decodes it: the flashes of `source = "test-sync"`.
pub fn ffmpeg_flashes(file: &Path) -> Vec<f64> {
    let log = ffmpeg_log(
        file,
        &[
            "-map",
            "0:v:0",
            "-vf",
            "signalstats,metadata=print:key=lavfi.signalstats.YAVG",
        ],
    );
    let mut out = Vec::new();
    let mut at = None;
    for line in log.lines() {
        if let Some(t) = line.split("pts_time:").nth(1) {
            at = t
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<f64>().ok());
        } else if let Some(y) = line.split("lavfi.signalstats.YAVG=").nth(1)
            && let (Some(t), Ok(y)) = (at.take(), y.trim().parse::<f64>())
            && y > 128.0
        {
            out.push(t);
        }
    }
    out
}

/// When each sound in the first audio track of `file` begins after silence, seconds on the
/// file's timeline, as a player decodes it: the ticks of the test tone.
pub fn ffmpeg_sound_onsets(file: &Path) -> Vec<f64> {
    let log = ffmpeg_log(
        file,
        &["-map", "0:a:0", "-af", "silencedetect=noise=-30dB:d=0.2"],
    );
    log.lines()
        .filter_map(|l| l.split("silence_end: ").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Decodes `file` fully with ffmpeg; returns whatever it printed at level error about the file
/// (not what its own null output says of frame timing: two frames a camera delivered closer
/// than one frame's time, after a stall, land in one output tick there and are reported, though
/// the file and its decoding are sound).
pub fn ffmpeg_errors(file: &Path) -> String {
    ffmpeg_null(file, &["-v", "error"], &[])
        .lines()
        .filter(|l| !l.starts_with("[null @"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Byte patterns that only plaintext video contains: MP4 box headers and x264's SEI text.
pub const PLAINTEXT_MARKS: [&[u8]; 3] = [b"ftypiso", b"x264 - core", b"mfhd"];

/// Finds the first plaintext mark in `bytes`: `ftyp` brand, x264 SEI, or a `moof` whose first
/// child is `mfhd`.
pub fn plaintext_mark(bytes: &[u8]) -> Option<&'static str> {
    if bytes.windows(7).any(|w| w == PLAINTEXT_MARKS[0]) {
        return Some("ftyp box");
    }
    if bytes.windows(11).any(|w| w == PLAINTEXT_MARKS[1]) {
        return Some("x264 SEI text");
    }
    if bytes
        .windows(12)
        .any(|w| &w[0..4] == b"moof" && &w[8..12] == b"mfhd")
    {
        return Some("moof+mfhd box headers");
    }
    None
}

/// A mosquitto broker on a free loopback port, started and killed by the test.
pub struct Mosquitto {
    /// Its port.
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Starts a server with its stderr appended to `log` and waits until it accepts connections on
/// `addr`; panics with the log if it does not within 20 s.
fn spawn_server(mut c: Command, log: &Path, addr: &str, what: &str) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = c
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The review page's assets, built by scripts/build-web into `target/review-assets`, or the
/// directory `NEOFLIX_REVIEW_ASSETS` names.
pub fn review_assets() -> PathBuf {
    let dir = match std::env::var_os("NEOFLIX_REVIEW_ASSETS").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => bin("neoflix-ingest")
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join("review-assets"),
    };
    for f in [
        "index.html",
        "app.js",
        "neoflix_web.js",
        "neoflix_web_bg.wasm",
    ] {
        assert!(
            dir.join(f).exists(),
            "{} has no {f}: build the review page first with scripts/build-web (scripts/test does)",
            dir.display()
        );
    }
    dir
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up), where the outgoing connections of
    // everything else on the machine take their local ports: a port taken from that range and
    // released may be some client's by the time the server binds it (a run saw Garage's S3
    // listener fail so). Random, so concurrent tests rarely meet.
    loop {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let port = 20000 + u16::from_le_bytes(b) % 12000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Mosquitto {
    /// A plain broker, anyone may connect (loopback only).
    pub fn plain(lab: &Lab) -> Mosquitto {
        let port = free_port();
        Mosquitto::with_config(
            lab,
            port,
            &format!("listener {port} 127.0.0.1\nset_tcp_nodelay true\nallow_anonymous true\n"),
            "",
        )
    }

    /// A mutual-TLS broker with `ca/127.0.0.1.crt` as its certificate, clients named by their
    /// certificates' common names, and `acl` as its ACL file's text.
    pub fn mutual_tls(lab: &Lab, acl: &str) -> Mosquitto {
        Mosquitto::mutual_tls_with(lab, acl, "")
    }

    /// [`Mosquitto::mutual_tls`] with `extra` configuration after the listener's (a bridge).
    pub fn mutual_tls_with(lab: &Lab, acl: &str, extra: &str) -> Mosquitto {
        let port = free_port();
        let ca = lab.path("ca");
        let acl_file = lab.path(&format!("mosquitto-{port}.acl"));
        std::fs::write(&acl_file, acl).unwrap();
        Mosquitto::with_config(
            lab,
            port,
            &format!(
                "listener {port} 127.0.0.1\nset_tcp_nodelay true\ncafile {c}/ca.crt\ncertfile {c}/127.0.0.1.crt\nkeyfile {c}/127.0.0.1.key\n\
                 require_certificate true\nuse_identity_as_username true\nacl_file {a}\nallow_anonymous false\n",
                c = ca.display(),
                a = acl_file.display()
            ),
            extra,
        )
    }

    fn with_config(lab: &Lab, port: u16, text: &str, tail: &str) -> Mosquitto {
        let config = lab.path(&format!("mosquitto-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                // Started as root (the tests are), mosquitto would switch to its own user, who
                // cannot read the test's files.
                "{text}persistence false\nlog_dest stderr\nlog_type all\nuser root\n{tail}"
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            config,
            log: lab.path(&format!("mosquitto-{port}.log")),
            child: None,
        };
        m.start();
        m
    }

    /// Starts it (again) on the same port and waits until it listens.
    pub fn start(&mut self) {
        let mut c = Command::new("mosquitto");
        c.arg("-c").arg(&self.config);
        let addr = format!("127.0.0.1:{}", self.port);
        self.child = Some(spawn_server(
            c,
            &self.log,
            &addr,
            "mosquitto (scripts/test installs it)",
        ));
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The broker's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mqtt://127.0.0.1:PORT` (or `mqtts://`).
    pub fn url(&self, tls: bool) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if tls { "mqtts" } else { "mqtt" },
            self.port
        )
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message a [`Probe`] received.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload, as JSON when it parses (else a JSON string of the text).
    pub json: serde_json::Value,
    /// Delivered as a retained message (sent before we subscribed).
    pub retained: bool,
    /// When the probe received it.
    pub at: Instant,
}

/// A test's own MQTT client: subscribes, records everything it receives, publishes.
pub struct MqttProbe {
    client: rumqttc::Client,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Message>>>,
    subscribed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _thread: std::thread::JoinHandle<()>,
}

impl MqttProbe {
    /// Connects to a plain broker and subscribes to `filter`.
    pub fn plain(broker: &Mosquitto, filter: &str) -> MqttProbe {
        MqttProbe::connect(broker, None, filter)
    }

    /// Connects over mutual TLS as the holder of `ca/<name>.crt`.
    pub fn tls(broker: &Mosquitto, lab: &Lab, name: &str, filter: &str) -> MqttProbe {
        MqttProbe::connect(broker, Some((lab, name)), filter)
    }

    fn connect(broker: &Mosquitto, identity: Option<(&Lab, &str)>, filter: &str) -> MqttProbe {
        let id = format!("probe-{}", free_port());
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(5));
        // Room for the oversized messages a test plays a hostile publisher with.
        o.set_max_packet_size(8 << 20, 8 << 20);
        if let Some((lab, name)) = identity {
            let cfg = lab.client_tls(name).unwrap();
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(cfg)),
            ));
        }
        let (client, mut connection) = rumqttc::Client::new(o, 64);
        let mut n = connection.eventloop.network_options();
        n.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(n);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscribed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, sub, c, f) = (
            seen.clone(),
            subscribed.clone(),
            client.clone(),
            filter.to_string(),
        );
        let thread = std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(f.clone(), rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        sub.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).to_string();
                        let json =
                            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                        s.lock().unwrap().push(Message {
                            topic: p.topic.clone(),
                            json,
                            retained: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !subscribed.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the probe could not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
        MqttProbe {
            client,
            seen,
            subscribed,
            _thread: thread,
        }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for a message on `topic` that satisfies `cond`; returns it.
    pub fn wait(
        &self,
        topic: &str,
        what: &str,
        limit: Duration,
        cond: impl Fn(&Message) -> bool,
    ) -> Message {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self
                .messages()
                .into_iter()
                .find(|m| m.topic == topic && cond(m))
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on {topic}; received: {:#?}",
                self.messages()
                    .iter()
                    .map(|m| format!("{} {}", m.topic, m.json))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes `payload` (not retained unless asked).
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .unwrap();
    }

    /// Whether the subscription was acknowledged.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for MqttProbe {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}
