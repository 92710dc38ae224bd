//! Garage, the distributed S3-compatible store, as a cluster of the test's own: three nodes on
//! loopback, replication factor 3, one bucket and one key made for the test.
//!
//! scripts/test installs it (`cargo install --locked garage`, into `$CARGO_HOME/bin`);
//! `NEOFLIX_GARAGE` names another binary.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The bucket every cluster has.
pub const BUCKET: &str = "neoflix";
/// The region Garage is configured with.
pub const REGION: &str = "garage";
/// The access key (Garage's format: `GK` and 24 hex digits).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
/// Its secret (64 hex digits).
pub const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// One node.
struct Node {
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// A three-node cluster, killed with the test.
pub struct Garage {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// The garage program.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NEOFLIX_GARAGE") {
        return PathBuf::from(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let cargo_bin = cargo_home.join("bin/garage");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("garage"))
        .find(|p| p.exists())
        .expect("garage is not installed: scripts/test installs it (cargo install --locked garage)")
}

fn garage(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("garage runs");
    assert!(
        out.status.success(),
        "garage {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut c = Command::new(binary());
        c.arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. A test run killed outright leaves no node behind.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(c.spawn().expect("garage server starts"));
    }
}

impl Garage {
    /// Starts three nodes, joins them, lays them out (one zone each, so every object is on all
    /// three) and makes the bucket and the key. A node that could not bind its ports (another
    /// test took one meanwhile) has the whole cluster started again on others.
    pub fn start() -> Garage {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let g = Garage::start_once();
            let clash = (0..3).any(|i| g.log(i).contains("Address already in use"));
            if !clash {
                return g;
            }
            assert!(attempt < 4, "no free ports after 3 attempts\n{}", g.logs());
            eprintln!("garage: a port was taken meanwhile; starting the cluster again");
        }
    }

    fn start_once() -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 7 + 3) % 256))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let d = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let (rpc, s3, admin) = (free_port(), free_port(), free_port());
            let config = d.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{d}/meta\"\n\
                     data_dir = \"{d}/data\"\n\
                     db_engine = \"sqlite\"\n\
                     replication_factor = 3\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_secret = \"{secret}\"\n\
                     [s3_api]\n\
                     s3_region = \"{REGION}\"\n\
                     api_bind_addr = \"127.0.0.1:{s3}\"\n\
                     [admin]\n\
                     api_bind_addr = \"127.0.0.1:{admin}\"\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let mut n = Node {
                config,
                s3_port: s3,
                child: None,
                log: d.join("garage.log"),
            };
            n.start();
            nodes.push(n);
        }
        let mut g = Garage { nodes, _dir: dir };
        let ids: Vec<String> = (0..3)
            .map(|i| g.until(i, &["node", "id", "-q"]).trim().to_string())
            .collect();
        for id in &ids[1..] {
            g.until(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            let zone = format!("z{i}");
            g.until(0, &["layout", "assign", "-z", &zone, "-c", "1G", short]);
        }
        // Each node's S3 listener answers (or its log says why not).
        for i in 0..3 {
            let port = g.nodes[i].s3_port;
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if g.log(i).contains("Address already in use") {
                    return g;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {i}'s S3 port {port} does not answer\n{}",
                    g.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let first = g.nodes[0].config.clone();
        let first = &first;
        garage(first, &["layout", "apply", "--version", "1"]);
        g.until(0, &["bucket", "create", BUCKET]);
        garage(
            first,
            &["key", "import", "--yes", "-n", "neoflix", KEY_ID, SECRET],
        );
        garage(
            first,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
            ],
        );
        g
    }

    /// Retries a garage command on node `i`'s configuration while the cluster settles (nodes
    /// still connecting, the layout still spreading), for up to 30 s; a node that died is named
    /// with its log at once.
    fn until(&mut self, i: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_alive();
            let out = Command::new(binary())
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("garage runs");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} still fails: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Panics, with the logs, if a node that should run has exited.
    pub fn assert_alive(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("garage node {i} exited ({st})\n{}", self.logs());
            }
        }
    }

    /// Every node's log, each under its number.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- garage node {i}:\n{}", self.log(i)))
            .collect()
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// Kills node `i` (SIGKILL: the machine gone).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What node `i` logged.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Garage {
    /// A client of the bucket through node `node`.
    pub fn bucket(&self, node: usize) -> neoflix_s3::Bucket {
        neoflix_s3::Bucket::new(
            &neoflix_s3::Settings {
                endpoint: self.endpoint(node).parse().unwrap(),
                bucket: BUCKET.into(),
                region: REGION.into(),
                path_style: true,
            },
            neoflix_s3::Credentials {
                access_key_id: KEY_ID.into(),
                secret_access_key: SECRET.to_string().into(),
            },
            None,
        )
        .unwrap()
    }

    /// A cluster whose every node serves the bucket and reads objects: `bucket create` returns
    /// once a quorum knows it, and a test reading through another node must not race the
    /// rest.
    pub fn serving() -> Garage {
        let mut g = Garage::start();
        let rt = runtime();
        for i in 0..3 {
            let b = g.bucket(i);
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = rt.block_on(b.check()) {
                g.assert_alive();
                assert!(
                    Instant::now() < deadline,
                    "node {i} does not serve the bucket: {e}\n{}",
                    g.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // Serving the bucket is not yet reading objects through every node (a quorum of the
        // object table): a probe written through one is read back through each.
        let first = g.bucket(0);
        let probe = b"probe";
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(probe).into();
        rt.block_on(settled(|| {
            first.put("ready/probe", probe.to_vec().into(), 5, &digest, false)
        }))
        .unwrap_or_else(|e| panic!("the probe is not written: {e}\n{}", g.logs()));
        for i in 0..3 {
            let b = g.bucket(i);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !matches!(rt.block_on(b.head("ready/probe")), Ok(Some(_))) {
                g.assert_alive();
                assert!(
                    Instant::now() < deadline,
                    "node {i} does not read the probe back\n{}",
                    g.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        rt.block_on(settled(|| first.delete("ready/probe")))
            .unwrap();
        g
    }

    /// The `[storage]` section of a `neoflix-ingest` that keeps its recordings in this
    /// cluster's bucket under `prefix`, through node `node`; the secret goes into a file of
    /// the cluster's directory.
    pub fn storage_section(&self, node: usize, prefix: &str) -> String {
        let secret = self._dir.path().join("s3.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nregion = \"{REGION}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key_file = \"{}\"\n",
            self.endpoint(node),
            secret.display()
        )
    }
}

/// Runs `op` again while it fails for a reason that passes (Garage answers 503 when a quorum
/// is slow to answer, as on a loaded 2-core machine), for up to 30 s: what a client of the
/// store does.
pub async fn settled<T, F, Fut>(op: F) -> Result<T, neoflix_s3::S3Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, neoflix_s3::S3Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

/// A runtime for a test's store calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
