//! `neoflix-ingest.toml`, read strictly with the walker `neoflixd.toml` is read with
//! (`neoflix-confwalk`): unknown options, wrong types, values out of range, addresses that are
//! not addresses and files that cannot be read are each reported as a [`Problem`] naming the
//! file, the line and the option, all at once. Relative paths are taken from the config file's
//! directory. Specified in `docs/ingest.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use neoflix_confwalk::{ConfigError, Problem};
use neoflix_confwalk::{DeTable, Section, Walker, shown};

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// TLS material.
    pub tls: Tls,
    /// Where recordings are kept.
    pub storage: StorageConfig,
    /// What one device, one connection and all requests together may hold.
    pub limits: Limits,
    /// `[review]`: the reviewers' HTTPS listener, if configured.
    pub review: Option<Review>,
    /// `[database]`: reviewers, sessions, the recordings index and the audit log.
    pub database: Database,
    /// `[mqtt]`: the department broker the fleet view subscribes to, if configured.
    pub mqtt: Option<Mqtt>,
    /// `[retention]`: how long recordings are kept, if the server deletes them by itself.
    pub retention: Option<Retention>,
    /// `[consent]`: the department's consent policy.
    pub consent: ConsentPolicy,
}

/// `[consent]` (docs/privacy.md, "Consent").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentPolicy {
    /// A recording whose review consent is pending may be opened (flagged on the page): the
    /// deferred-consent practice of units that review resuscitations today.
    pub review_while_pending: bool,
}

/// `[retention]`: the server deletes a recording this long after it started, unless it is
/// held (docs/ingest.md, "Retention").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Days after the recording's first frame.
    pub keep_days: u32,
}

/// The most days `[retention] keep_days` may say: ten years, beyond any unit's policy.
pub const MAX_KEEP_DAYS: u32 = 3650;

/// `[review]`: the HTTPS listener people use (the review page and its JSON API). No client
/// certificate: reviewers sign in with a passphrase (docs/review.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// Address to listen on, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// Certificate chain browsers see (PEM); `[tls] cert` unless set, e.g. one from the
    /// hospital's CA that browsers already trust.
    pub cert: PathBuf,
    /// Its private key (PEM); `[tls] key` unless set.
    pub key: PathBuf,
    /// The page's files (`index.html` and what it loads), installed by the package.
    pub assets: PathBuf,
    /// A session ends after this many seconds without a request.
    pub session_idle_secs: u64,
    /// A session ends this many seconds after sign-in in any case.
    pub session_max_secs: u64,
}

/// Where the review assets are installed by the package.
pub const DEFAULT_ASSETS: &str = "/usr/share/neoflix-ingest/review";
/// Where the database is unless `[database] path` says otherwise.
pub const DEFAULT_DATABASE: &str = "/var/lib/neoflix-ingest/neoflix.db";

/// `[database]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Which database.
    pub at: DatabaseAt,
    /// Whether the file named a `[database]` section: with neither it nor `[review]` the server
    /// runs without a database, as before the review page existed.
    pub configured: bool,
}

/// Which database: `path = ...` or `url = "sqlite:///..."`, or `url = "postgres://..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseAt {
    /// The SQLite file (created 0600 with its directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database, which several replicas may share.
    Postgres(Box<Postgres>),
}

/// `[database] url = "postgres://..."` with its password and TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    /// Host(s), port, user and database name; never a password.
    pub url: PgUrl,
    /// The file holding the password, if the server asks for one.
    pub password_file: Option<PathBuf>,
    /// The CA that signed the PostgreSQL server's certificate: TLS, with the host name checked.
    /// Without it, only a Unix socket or loopback address is allowed (plain text).
    pub ca: Option<PathBuf>,
}

/// A parsed PostgreSQL URL, compared by its text.
#[derive(Debug, Clone)]
pub struct PgUrl {
    text: String,
    /// As the client library reads it.
    pub config: postgres::Config,
}

impl PgUrl {
    /// Reads `text` as `[database] url` is read: a user, host and database name, and neither
    /// a password nor TLS settings (see [`Postgres`]).
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        pg_url(text)
    }
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for PgUrl {}

impl Database {
    /// The SQLite file, if that is the database.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.at {
            DatabaseAt::Sqlite(p) => Some(p),
            DatabaseAt::Postgres(_) => None,
        }
    }
}

/// Why a PostgreSQL URL is refused, or what it is.
fn pg_url(text: &str) -> Result<PgUrl, String> {
    const FORM: &str = "postgres://USER@HOST[:PORT]/DBNAME";
    // Chosen by `ca`: an `sslmode` here could only weaken or contradict it.
    if text.contains("sslmode") || text.contains("sslrootcert") {
        return Err(
            "TLS is set by `ca` in [database], not in the url: remove sslmode/sslrootcert".into(),
        );
    }
    let config: postgres::Config = text
        .parse()
        .map_err(|e| format!("not a PostgreSQL url ({e}); expected {FORM}"))?;
    if config.get_password().is_some() {
        return Err("a password in the url would sit in this readable file: put it in password_file (mode 0600, readable by the server's user only)".into());
    }
    if config.get_hosts().is_empty() {
        return Err(format!("no host: expected {FORM}"));
    }
    // Tried one after the other, each with the whole connect timeout: a dead first host would
    // use it up. A failover address (a virtual IP, a pooler) in front of them does this right.
    if config.get_hosts().len() > 1 {
        return Err("one host only: give the address that follows the primary (a virtual IP, or a TCP proxy in front of the servers)".into());
    }
    // The address connected to would then not be the host checked for being on this machine,
    // nor the name a certificate is checked against.
    if !config.get_hostaddrs().is_empty() {
        return Err("hostaddr is not supported: name the host (or its address) in the url".into());
    }
    if config.get_options().is_some() {
        return Err(
            "options is not supported: the server sets its own (a statement timeout)".into(),
        );
    }
    if config.get_user().is_none() {
        return Err(format!("no user: expected {FORM}"));
    }
    if config.get_dbname().is_none() {
        return Err(format!("no database name: expected {FORM}"));
    }
    Ok(PgUrl {
        text: text.to_owned(),
        config,
    })
}

/// Whether every host of `config` is on this machine (a Unix socket or loopback), where a
/// connection without TLS crosses no network.
fn pg_local(config: &postgres::Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        postgres::config::Host::Unix(_) => true,
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    })
}

/// `[mqtt]`: the broker the room boxes publish their status to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// The CA of the broker's certificate (mqtts).
    pub ca: Option<PathBuf>,
    /// This server's certificate and key (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Topic prefix the boxes use.
    pub prefix: String,
}

impl IngestConfig {
    /// Whether the server keeps a database: `[review]` and `[retention]` need one, `[database]`
    /// asks for one.
    pub fn uses_database(&self) -> bool {
        self.review.is_some() || self.database.configured || self.retention.is_some()
    }
}

/// `[limits]`: the bounds that keep one device (or one stolen certificate) from starving the
/// others and keep the server's memory bounded whatever the clients send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, all devices together. Only a connection that completed
    /// its handshake, named its device and is within that device's limit takes one; when all
    /// are taken it is answered 503 with `Retry-After`.
    pub max_connections: usize,
    /// Connections in their TLS handshake at once (or being refused after it). Kept apart
    /// from `max_connections` so that hosts without a certificate, or a device reconnecting
    /// over its limit, never hold the slots of devices being served; further connections wait
    /// in the kernel's accept queue.
    pub max_handshakes: usize,
    /// Seconds a TLS handshake may take before the connection is closed: a handshake is a few
    /// round trips, so anything much slower is a host holding a handshake slot.
    pub handshake_timeout_secs: u64,
    /// Connections one device (one certificate common name) may hold at once; the box uploads
    /// 8 objects at a time, the rest is headroom for connections a restarted box left behind.
    /// Further connections get 503 and are closed, so a misbehaving device cannot hold the
    /// slots every other device needs.
    pub max_connections_per_device: usize,
    /// Slowest accepted request body, averaged from its start: a body that falls behind
    /// (after the grace below) is cut with 408, so trickling bytes cannot hold a slot.
    pub min_bytes_per_sec: u64,
    /// Seconds a request body may take before the minimum rate applies (TLS warm-up, a
    /// congested moment on the ward's network).
    pub rate_grace_secs: u64,
    /// Bytes of request bodies held in memory by all requests together (object write
    /// batches, manifests and their parsed form); a request that would exceed it gets 503 with
    /// `Retry-After`.
    pub max_buffered_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            max_handshakes: 256,
            handshake_timeout_secs: 5,
            max_connections_per_device: 16,
            min_bytes_per_sec: 4096,
            rate_grace_secs: 10,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The smallest `limits.max_buffered_bytes`: room for the largest manifest and its parsed form.
pub const MIN_BUFFERED_BYTES: u64 = 2 * crate::http::MAX_MANIFEST;

/// The largest `limits.max_buffered_bytes`: the semaphore that enforces it counts in `usize`
/// and caps at `usize::MAX >> 3`.
const MAX_BUFFERED_BYTES: u64 = (usize::MAX >> 3) as u64;

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA certificate(s) whose devices may upload (PEM, one or more in the file).
    pub client_ca: PathBuf,
    /// Certificate revocation list(s) of those CAs (PEM), optional.
    pub crl: Option<PathBuf>,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Where recordings are kept.
    pub backend: StorageBackend,
    /// Largest accepted object body.
    pub max_object_bytes: u64,
}

neoflix_confwalk::choice! {
    /// `[storage] backend`.
    pub enum BackendKind {
        /// A directory of this server.
        Fs = "fs",
        /// An S3-compatible object store.
        S3 = "s3",
    }
}

/// Where recordings are kept: `backend = "fs"` or `"s3"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// The tree `<dir>/<device>/<recording>/`.
    Fs {
        /// Its root.
        dir: PathBuf,
    },
    /// A bucket of an S3-compatible store.
    S3(Box<S3Config>),
}

/// `[storage] backend = "s3"`: the bucket and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `https://host[:port]` (or `http://` on loopback, without `ca`).
    pub endpoint: url::Url,
    /// The bucket.
    pub bucket: String,
    /// The region the store signs for.
    pub region: String,
    /// Where this server's keys start in the bucket: empty, or ending in `/`.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most on-premises stores want.
    pub path_style: bool,
    /// The access key's id (else `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The file holding its secret (else `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key_file: Option<PathBuf>,
    /// The CA that signs the store's certificate (PEM).
    pub ca: Option<PathBuf>,
}

impl StorageBackend {
    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            StorageBackend::Fs { dir } => format!("storage.dir {}", dir.display()),
            StorageBackend::S3(s) => format!(
                "s3 {}/{}/{}",
                s.endpoint.as_str().trim_end_matches('/'),
                s.bucket,
                s.prefix
            ),
        }
    }
}

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/neoflix/neoflix-ingest.toml";

impl IngestConfig {
    /// Reads and checks a config file: the config and its warnings, or every problem.
    pub fn load(path: &Path) -> Result<(IngestConfig, Vec<Problem>), ConfigError> {
        let text = neoflix_confwalk::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        IngestConfig::parse(&path.display().to_string(), &text, base)
    }

    /// Checks config text; `file` names it in messages, relative paths are taken from `base`.
    pub fn parse(
        file: &str,
        text: &str,
        base: &Path,
    ) -> Result<(IngestConfig, Vec<Problem>), ConfigError> {
        let mut w = Walker::new(file, text).documented_in("docs/ingest.md");
        let Some(root) = w.parse(text) else {
            return Err(w.into_result().expect_err("a syntax error is an error"));
        };
        let cfg = walk(&mut w, &root, base);
        let warnings = w.into_result()?;
        Ok((cfg, warnings))
    }
}

/// A file option: resolved against `base`, and it must be a regular file this user can open.
fn file(w: &mut Walker, s: &mut Section, key: &str, base: &Path, what: &str) -> Option<PathBuf> {
    let (p, line) = w.required_string(s, key, what)?;
    let p = base.join(p);
    let opt = Walker::option_name(s, key);
    // Not opened before it is known to be a regular file: opening a FIFO would wait for a
    // writer.
    let problem = match std::fs::metadata(&p) {
        Err(e) => Some(format!("cannot read {}: {e}; {what}", p.display())),
        Ok(m) if !m.is_file() => Some(format!("{} is not a regular file; {what}", p.display())),
        Ok(_) => std::fs::File::open(&p)
            .err()
            .map(|e| format!("cannot read {}: {e}; {what}", p.display())),
    };
    if let Some(problem) = problem {
        w.error(line, opt, problem);
    }
    Some(p)
}

/// The options only an object store has.
const S3_OPTIONS: [&str; 8] = [
    "endpoint",
    "bucket",
    "region",
    "prefix",
    "path_style",
    "access_key_id",
    "secret_access_key_file",
    "ca",
];

/// `[storage] backend` and the options of the one it names.
fn storage_backend(w: &mut Walker, st: &mut Section, base: &Path) -> StorageBackend {
    let kind = w.choice(st, "backend", BackendKind::Fs);
    if kind == BackendKind::Fs {
        for key in S3_OPTIONS {
            if st.has(key) {
                let line = st.line();
                w.error(
                    line,
                    Walker::option_name(st, key),
                    "only with backend = \"s3\"",
                );
            }
        }
        let dir = w
            .required_string(
                st,
                "dir",
                "the directory recordings are kept in, e.g. dir = \"/var/lib/neoflix-ingest\"",
            )
            .map(|(d, _)| base.join(d));
        return StorageBackend::Fs {
            dir: dir.unwrap_or_default(),
        };
    }
    if st.has("dir") {
        let line = st.line();
        w.error(
            line,
            Walker::option_name(st, "dir"),
            "not with backend = \"s3\": recordings go to the bucket, and nothing of them is kept on this server's disk",
        );
    }
    let endpoint = match w.required_string(
        st,
        "endpoint",
        "the object store's address, e.g. endpoint = \"https://s3.hospital.example:9000\"",
    ) {
        Some((e, line)) => match url::Url::parse(&e) {
            Ok(u) => Some(u),
            Err(why) => {
                w.error(
                    line,
                    Walker::option_name(st, "endpoint"),
                    format!(
                        "{} is not a URL ({why}): e.g. \"https://s3.hospital.example:9000\"",
                        shown(&e)
                    ),
                );
                None
            }
        },
        None => None,
    };
    let bucket = w.required_string(
        st,
        "bucket",
        "the bucket recordings go into, e.g. bucket = \"neoflix\"",
    );
    if let Some((b, line)) = &bucket
        && !neoflix_s3::valid_bucket(b)
    {
        w.error(
            *line,
            Walker::option_name(st, "bucket"),
            format!("{} is not a bucket name: 3 to 63 of a-z, 0-9, '.' and '-', starting and ending with a letter or digit", shown(b)),
        );
    }
    let (region, _) = w.string(st, "region", "us-east-1");
    let (prefix, line) = w.string(st, "prefix", "");
    let prefix_ok = prefix.is_empty()
        || (prefix.ends_with('/')
            && !prefix.starts_with('/')
            && prefix.len() <= 256
            && prefix.split('/').rev().skip(1).all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            }));
    if !prefix_ok {
        w.error(
            line,
            Walker::option_name(st, "prefix"),
            format!("{} is not a key prefix: empty, or names of a-z, A-Z, 0-9, '-', '_', '.' each ending in '/', e.g. \"unit-a/\"", shown(&prefix)),
        );
    }
    let path_style = w.boolean(st, "path_style", true);
    let access_key_id = st
        .has("access_key_id")
        .then(|| w.string(st, "access_key_id", "").0);
    let secret_access_key_file = st.has("secret_access_key_file").then(|| {
        file(
            w,
            st,
            "secret_access_key_file",
            base,
            "the access key's secret, alone in the file (mode 0600, readable by the server's user only)",
        )
    });
    let ca = st.has("ca").then(|| {
        file(
            w,
            st,
            "ca",
            base,
            "the CA certificate that signed the object store's certificate (PEM)",
        )
    });
    if let Some(e) = &endpoint {
        let opt = Walker::option_name(st, "endpoint");
        let line = st.line();
        match (e.scheme(), ca.is_some()) {
            ("https", false) => w.error(line, opt, "https needs ca = the CA certificate that signed the store's certificate (PEM)"),
            ("http", true) => w.error(line, opt, "ca is for https: use https://, or remove ca"),
            ("http", false) if !endpoint_is_loopback(e) => w.error(line, opt, "plain http carries the recordings' sealed objects and the access key's signatures in the clear: only on loopback; use https:// with ca across the network"),
            ("http" | "https", _) => {}
            _ => w.error(line, opt, "use https://host[:port] (or http:// on loopback)"),
        }
    }
    StorageBackend::S3(Box::new(S3Config {
        endpoint: endpoint.unwrap_or_else(|| url::Url::parse("http://127.0.0.1").expect("a URL")),
        bucket: bucket.map(|(b, _)| b).unwrap_or_default(),
        region,
        prefix,
        path_style,
        access_key_id,
        secret_access_key_file: secret_access_key_file.flatten(),
        ca: ca.flatten(),
    }))
}

fn endpoint_is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// `[database]`: `path`, or `url` naming SQLite or PostgreSQL (with `password_file`, `ca`).
fn database_at(w: &mut Walker, d: &mut Section, base: &Path) -> DatabaseAt {
    let sqlite_default = || DatabaseAt::Sqlite(PathBuf::from(DEFAULT_DATABASE));
    if !d.has("url") {
        for key in ["password_file", "ca"] {
            if d.has(key) {
                let line = d.line();
                w.error(
                    line,
                    Walker::option_name(d, key),
                    "only for a PostgreSQL url",
                );
            }
        }
        let (p, _) = w.string(d, "path", DEFAULT_DATABASE);
        return DatabaseAt::Sqlite(base.join(p));
    }
    let (url, line) = w.string(d, "url", "");
    let opt = Walker::option_name(d, "url");
    if d.has("path") {
        w.error(line, opt, "give path (SQLite) or url, not both");
        return sqlite_default();
    }
    if let Some(file) = url.strip_prefix("sqlite://") {
        if file.is_empty() {
            w.error(
                line,
                opt,
                "no file: sqlite:///var/lib/neoflix-ingest/neoflix.db",
            );
        }
        for key in ["password_file", "ca"] {
            if d.has(key) {
                w.error(
                    line,
                    Walker::option_name(d, key),
                    "only for a PostgreSQL url",
                );
            }
        }
        return DatabaseAt::Sqlite(base.join(file));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        w.error(
            line,
            opt,
            "sqlite:///path/to/neoflix.db or postgres://USER@HOST[:PORT]/DBNAME",
        );
        return sqlite_default();
    }
    let password_file = d.has("password_file").then(|| {
        file(
            w,
            d,
            "password_file",
            base,
            "the PostgreSQL user's password, alone in the file",
        )
    });
    let ca = d.has("ca").then(|| {
        file(
            w,
            d,
            "ca",
            base,
            "the CA certificate that signed the PostgreSQL server's certificate (PEM)",
        )
    });
    match pg_url(&url) {
        Err(why) => {
            w.error(line, opt, why);
            sqlite_default()
        }
        Ok(u) => {
            let socket = u
                .config
                .get_hosts()
                .iter()
                .any(|h| matches!(h, postgres::config::Host::Unix(_)));
            if ca.is_some() && socket {
                w.error(
                    line,
                    Walker::option_name(d, "ca"),
                    "a Unix socket carries no TLS: remove ca, or name a TCP host",
                );
            }
            if ca.is_none() && !pg_local(&u.config) {
                w.error(line, opt, "a PostgreSQL server across the network needs TLS: set ca = the CA certificate that signed its certificate (PEM); the connection carries reviewers' wrapped keys and the audit log");
            }
            DatabaseAt::Postgres(Box::new(Postgres {
                url: u,
                password_file: password_file.flatten(),
                ca: ca.flatten(),
            }))
        }
    }
}

/// A required `IP:PORT` option (`option` is its full name for messages).
fn listen_addr(
    w: &mut Walker,
    s: &mut Section,
    key: &str,
    option: &str,
    what: &str,
    example: &str,
) -> Option<SocketAddr> {
    let (l, line) = w.required_string(s, key, &format!("{what}, e.g. {key} = \"{example}\""))?;
    match l.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            w.error(
                line,
                option,
                format!(
                    "{} is not an IP address and port: use e.g. \"{example}\" (every IPv4 interface), \"[::]:{}\" (every interface) or one address of this host",
                    shown(&l),
                    example.rsplit(':').next().unwrap_or_default()
                ),
            );
            None
        }
    }
}

fn walk(w: &mut Walker, root: &DeTable, base: &Path) -> IngestConfig {
    let mut top = w.root(root);
    let listen = listen_addr(
        w,
        &mut top,
        "listen",
        "listen",
        "the address devices connect to",
        "0.0.0.0:8443",
    );

    let mut t = w.section(root, "tls");
    let cert = file(
        w,
        &mut t,
        "cert",
        base,
        "the server's certificate chain (PEM; neoflix pki issue --server NAME writes NAME.crt)",
    );
    let key = file(
        w,
        &mut t,
        "key",
        base,
        "the server's private key (PEM), readable by neoflix-ingest only",
    );
    let client_ca = file(
        w,
        &mut t,
        "client_ca",
        base,
        "the CA certificate(s) whose devices may upload (PEM; the ca.crt of neoflix pki init)",
    );
    let crl = if t.has("crl") {
        file(
            w,
            &mut t,
            "crl",
            base,
            "the revocation list(s) of client_ca (PEM; neoflix pki crl writes ca.crl)",
        )
    } else {
        w.warn(
            t.line(),
            "tls.crl",
            "not set: revocation is off, so a device whose key is lost can upload until its certificate expires; set it to the CA's ca.crl",
        );
        None
    };
    w.finish(t);

    let mut st = w.section(root, "storage");
    let storage_line = st.line();
    let backend = storage_backend(w, &mut st, base);
    let (max_object_bytes, _) = w.int(
        &mut st,
        "max_object_bytes",
        64 * 1024 * 1024,
        (64 * 1024, 1 << 32),
        " bytes",
    );
    w.finish(st);

    let d = Limits::default();
    let mut l = w.section(root, "limits");
    let (max_connections, _) = w.int(
        &mut l,
        "max_connections",
        d.max_connections as u64,
        (1, 1 << 20),
        " connections",
    );
    let (max_handshakes, _) = w.int(
        &mut l,
        "max_handshakes",
        d.max_handshakes as u64,
        (1, 1 << 16),
        " connections",
    );
    let (handshake_timeout_secs, _) = w.int(
        &mut l,
        "handshake_timeout_secs",
        d.handshake_timeout_secs,
        (1, 60),
        " seconds",
    );
    let (max_connections_per_device, pline) = w.int(
        &mut l,
        "max_connections_per_device",
        d.max_connections_per_device as u64,
        (1, 1 << 20),
        " connections",
    );
    if max_connections_per_device > max_connections {
        w.error(
            pline,
            "limits.max_connections_per_device",
            format!(
                "{max_connections_per_device} is more than limits.max_connections ({max_connections}): one device could take every slot; lower it or raise max_connections"
            ),
        );
    }
    let (min_bytes_per_sec, _) = w.int(
        &mut l,
        "min_bytes_per_sec",
        d.min_bytes_per_sec,
        (1, 1 << 30),
        " bytes per second (0 would let a body that never sends hold its slot)",
    );
    let (rate_grace_secs, _) = w.int(
        &mut l,
        "rate_grace_secs",
        d.rate_grace_secs,
        (0, 3600),
        " seconds",
    );
    let (max_buffered_bytes, _) = w.int(
        &mut l,
        "max_buffered_bytes",
        d.max_buffered_bytes,
        (MIN_BUFFERED_BYTES, MAX_BUFFERED_BYTES),
        " bytes (at least the largest manifest and its parsed form)",
    );
    w.finish(l);

    let review = w.optional_section(root, "review").map(|mut r| {
        let listen = listen_addr(
            w,
            &mut r,
            "listen",
            "review.listen",
            "the address reviewers' browsers connect to",
            "0.0.0.0:443",
        );
        let cert = r
            .has("cert")
            .then(|| {
                file(
                    w,
                    &mut r,
                    "cert",
                    base,
                    "the certificate chain browsers see (PEM)",
                )
            })
            .flatten();
        let key = r
            .has("key")
            .then(|| {
                file(
                    w,
                    &mut r,
                    "key",
                    base,
                    "the private key of review.cert (PEM)",
                )
            })
            .flatten();
        if cert.is_some() != key.is_some() {
            w.error(
                r.line(),
                "review.cert",
                "cert and key go together: set both, or neither to use [tls] cert and key",
            );
        }
        let (assets, _) = w.string(&mut r, "assets", DEFAULT_ASSETS);
        let (session_idle_secs, _) =
            w.int(&mut r, "session_idle_secs", 1800, (60, 86_400), " seconds");
        let (session_max_secs, mline) = w.int(
            &mut r,
            "session_max_secs",
            28_800,
            (60, 7 * 86_400),
            " seconds",
        );
        if session_max_secs < session_idle_secs {
            w.error(
                mline,
                "review.session_max_secs",
                format!(
                    "{session_max_secs} is less than review.session_idle_secs ({session_idle_secs})"
                ),
            );
        }
        w.finish(r);
        (
            listen,
            cert.zip(key),
            base.join(assets),
            session_idle_secs,
            session_max_secs,
        )
    });

    let db_section = w.optional_section(root, "database");
    let configured = db_section.is_some();
    let db_at = match db_section {
        None => DatabaseAt::Sqlite(PathBuf::from(DEFAULT_DATABASE)),
        Some(mut d) => {
            let at = database_at(w, &mut d, base);
            w.finish(d);
            at
        }
    };
    if matches!(backend, StorageBackend::S3(_)) && !matches!(db_at, DatabaseAt::Postgres(_)) {
        w.warn(
            storage_line,
            "storage.backend",
            "an object store without a PostgreSQL [database]: run one replica only; several sharing the bucket need [database] url = \"postgres://...\", whose lock keeps them from storing two manifests for one recording",
        );
    }

    let mqtt = w.optional_section(root, "mqtt").map(|mut m| {
        let (url, uline) = match w.required_string(&mut m, "url", "the broker, e.g. url = \"mqtts://broker.example:8883\"") {
            Some(u) => u,
            None => (String::new(), m.line()),
        };
        let opt_file = |w: &mut Walker, m: &mut Section, key: &str, what: &str| {
            if m.has(key) { file(w, m, key, base, what) } else { None }
        };
        let ca = opt_file(w, &mut m, "ca", "the CA certificate that issued the broker's certificate (PEM)");
        let cert = opt_file(w, &mut m, "cert", "this server's certificate for the broker (PEM)");
        let key = opt_file(w, &mut m, "key", "this server's private key for the broker (PEM)");
        if cert.is_some() != key.is_some() {
            w.error(uline, "mqtt.cert", "cert and key go together: set both for mutual TLS, or neither");
        }
        let identity = cert.zip(key);
        if !url.is_empty()
            && let Err(e) = neoflix_mqtt::Broker::new(&url, ca.clone(), identity.clone())
        {
            w.error(uline, "mqtt.url", e.to_string());
        }
        let (prefix, pline) = w.string(&mut m, "prefix", "neoflix");
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains(['+', '#', '\0'])
        {
            w.error(pline, "mqtt.prefix", format!("{} is not a usable topic prefix: 1 to 64 characters, no '+', '#', leading or trailing '/'", shown(&prefix)));
        }
        w.finish(m);
        Mqtt { url, ca, identity, prefix }
    });
    let retention = w.optional_section(root, "retention").map(|mut r| {
        let (keep_days, _) = w.int(
            &mut r,
            "keep_days",
            30,
            (1, u64::from(MAX_KEEP_DAYS)),
            " days",
        );
        w.finish(r);
        Retention {
            keep_days: keep_days as u32,
        }
    });
    let consent = match w.optional_section(root, "consent") {
        Some(mut c) => {
            let review_while_pending = w.boolean(&mut c, "review_while_pending", true);
            w.finish(c);
            ConsentPolicy {
                review_while_pending,
            }
        }
        None => ConsentPolicy {
            review_while_pending: true,
        },
    };
    w.finish(top);

    let review = review.map(
        |(l, identity, assets, session_idle_secs, session_max_secs)| {
            let (cert, key) = identity.unwrap_or_else(|| {
                (
                    cert.clone().unwrap_or_default(),
                    key.clone().unwrap_or_default(),
                )
            });
            Review {
                listen: l.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 443))),
                cert,
                key,
                assets,
                session_idle_secs,
                session_max_secs,
            }
        },
    );
    IngestConfig {
        // Placeholders where a problem was reported: the caller gets the problems, not these.
        listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443))),
        tls: Tls {
            cert: cert.unwrap_or_default(),
            key: key.unwrap_or_default(),
            client_ca: client_ca.unwrap_or_default(),
            crl,
        },
        storage: StorageConfig {
            backend,
            max_object_bytes,
        },
        limits: Limits {
            max_connections: max_connections as usize,
            max_handshakes: max_handshakes as usize,
            handshake_timeout_secs,
            max_connections_per_device: max_connections_per_device as usize,
            min_bytes_per_sec,
            rate_grace_secs,
            max_buffered_bytes,
        },
        review,
        database: Database {
            at: db_at,
            configured,
        },
        mqtt,
        retention,
        consent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with the three TLS files (their contents are the TLS module's business).
    fn tls_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["server.crt", "server.key", "ca.crt", "ca.crl"] {
            std::fs::write(d.path().join(f), "PEM").unwrap();
        }
        d
    }

    const GOOD: &str = "listen = \"127.0.0.1:8443\"\n\
                        [tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\ncrl = \"ca.crl\"\n\
                        [storage]\ndir = \"store\"\n";

    fn problems(text: &str, base: &Path) -> Vec<String> {
        match IngestConfig::parse("i.toml", text, base) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_good_config_reads_with_defaults_and_paths_from_its_directory() {
        let d = tls_dir();
        let (c, warnings) = IngestConfig::parse("i.toml", GOOD, d.path()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.tls.cert, d.path().join("server.crt"));
        assert_eq!(c.tls.crl, Some(d.path().join("ca.crl")));
        assert_eq!(
            c.storage.backend,
            StorageBackend::Fs {
                dir: d.path().join("store")
            }
        );
        assert_eq!(c.storage.max_object_bytes, 64 << 20);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn an_object_store_reads_with_its_defaults_and_its_files_from_the_config_directory() {
        let d = tls_dir();
        std::fs::write(d.path().join("s3.secret"), "not-a-real-secret\n").unwrap();
        let text = GOOD.replace(
            "[storage]\ndir = \"store\"\n",
            "[storage]\nbackend = \"s3\"\nendpoint = \"https://s3.hospital.example:9000\"\nbucket = \"neoflix\"\nprefix = \"unit-a/\"\naccess_key_id = \"GK1\"\nsecret_access_key_file = \"s3.secret\"\nca = \"ca.crt\"\n",
        );
        let (c, warnings) = IngestConfig::parse("i.toml", &text, d.path()).unwrap();
        // Without PostgreSQL: one replica only, and it says so.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].to_string().contains("run one replica only"),
            "{warnings:?}"
        );
        let StorageBackend::S3(s) = &c.storage.backend else {
            panic!("{:?}", c.storage.backend)
        };
        assert_eq!(s.endpoint.as_str(), "https://s3.hospital.example:9000/");
        assert_eq!(
            (s.bucket.as_str(), s.region.as_str(), s.prefix.as_str()),
            ("neoflix", "us-east-1", "unit-a/")
        );
        assert!(s.path_style);
        assert_eq!(s.access_key_id.as_deref(), Some("GK1"));
        assert_eq!(
            s.secret_access_key_file.as_deref(),
            Some(d.path().join("s3.secret").as_path())
        );
        assert_eq!(s.ca.as_deref(), Some(d.path().join("ca.crt").as_path()));
        assert_eq!(
            c.storage.backend.describe(),
            "s3 https://s3.hospital.example:9000/neoflix/unit-a/"
        );
    }

    #[test]
    fn a_bad_object_store_section_names_every_problem() {
        let d = tls_dir();
        let cases = [
            ("backend = \"nfs\"\n", "'nfs' is not one of: fs, s3"),
            ("backend = \"s3\"\n", "storage.endpoint: missing"),
            ("backend = \"s3\"\n", "storage.bucket: missing"),
            (
                "backend = \"s3\"\ndir = \"store\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"neoflix\"\n",
                "storage.dir: not with backend = \"s3\"",
            ),
            (
                "dir = \"store\"\nbucket = \"neoflix\"\n",
                "storage.bucket: only with backend = \"s3\"",
            ),
            (
                "backend = \"s3\"\nendpoint = \"s3.example\"\nbucket = \"neoflix\"\n",
                "is not a URL",
            ),
            (
                "backend = \"s3\"\nendpoint = \"https://s3.example\"\nbucket = \"neoflix\"\n",
                "https needs ca",
            ),
            (
                "backend = \"s3\"\nendpoint = \"http://s3.example\"\nbucket = \"neoflix\"\n",
                "only on loopback",
            ),
            (
                "backend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"Neoflix_Videos\"\n",
                "is not a bucket name",
            ),
            (
                "backend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"neoflix\"\nprefix = \"../up/\"\n",
                "is not a key prefix",
            ),
            (
                "backend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"neoflix\"\nprefix = \"unit-a\"\n",
                "is not a key prefix",
            ),
            (
                "backend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"neoflix\"\nsecret_access_key_file = \"absent\"\n",
                "storage.secret_access_key_file: cannot read",
            ),
        ];
        for (section, expected) in cases {
            let text = GOOD.replace(
                "[storage]\ndir = \"store\"\n",
                &format!("[storage]\n{section}"),
            );
            let all = problems(&text, d.path()).join("\n");
            assert!(all.contains(expected), "{section}: {expected}\n{all}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid_apart_from_its_files() {
        let text = include_str!("../../../config/neoflix-ingest.toml");
        let d = tempfile::tempdir().unwrap();
        let found = problems(text, d.path());
        assert!(!found.is_empty());
        for p in &found {
            assert!(p.contains("cannot read"), "{p}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once_with_line_and_option() {
        let d = tls_dir();
        let text = "listen = \"ingest.example:8443\"\n\
                    [tls]\ncert = \"server.crt\"\nkey = \"missing.key\"\nclient_ca = \".\"\nocsp = true\n\
                    [storage]\nmax_object_bytes = 0\n\
                    [limits]\nmax_connections = 4\nmax_handshakes = 0\nhandshake_timeout_secs = 61\n\
                    max_connections_per_device = 5\nmin_bytes_per_sec = 0\nrate_grace_secs = 7200\n\
                    max_buffered_bytes = 1024\n\
                    [extra]\n";
        let found = problems(text, d.path());
        let lines: Vec<&str> = found
            .iter()
            .map(|p| p.split(": ").next().unwrap().trim_start_matches("i.toml:"))
            .collect();
        let options: Vec<&str> = found
            .iter()
            .map(|p| p.split(": ").nth(1).unwrap())
            .collect();
        assert_eq!(
            options,
            [
                "listen",
                "tls.key",
                "tls.client_ca",
                "tls.ocsp",
                "storage.dir",
                "storage.max_object_bytes",
                "limits.max_handshakes",
                "limits.handshake_timeout_secs",
                "limits.max_connections_per_device",
                "limits.min_bytes_per_sec",
                "limits.rate_grace_secs",
                "limits.max_buffered_bytes",
                "extra",
            ],
            "{found:#?}"
        );
        assert_eq!(
            lines,
            [
                "1", "4", "5", "6", "7", "8", "11", "12", "13", "14", "15", "16", "17"
            ]
        );
        let all = found.join("\n");
        for expected in [
            "'ingest.example:8443' is not an IP address and port",
            "cannot read",
            "is not a regular file",
            "unknown option (see docs/ingest.md",
            "storage.dir: missing:",
            "5 is more than limits.max_connections (4)",
            "unknown section (known: [tls], [storage], [limits], [review], [database], [mqtt], [retention], [consent])",
        ] {
            assert!(all.contains(expected), "{expected}\n{all}");
        }
    }

    #[test]
    fn a_missing_section_names_each_required_option_and_no_crl_is_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let found = problems("", d.path());
        for option in [
            "listen",
            "tls.cert",
            "tls.key",
            "tls.client_ca",
            "storage.dir",
        ] {
            assert!(
                found
                    .iter()
                    .any(|p| p.contains(&format!(": {option}: missing:"))),
                "{option}: {found:#?}"
            );
        }
        let d = tls_dir();
        let text = GOOD.replace("crl = \"ca.crl\"\n", "");
        let (c, warnings) = IngestConfig::parse("i.toml", &text, d.path()).unwrap();
        assert_eq!(c.tls.crl, None);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].option, "tls.crl");
    }

    #[test]
    fn review_database_and_mqtt_take_their_defaults_and_name_their_problems() {
        let d = tls_dir();
        let (c, _) = IngestConfig::parse("i.toml", GOOD, d.path()).unwrap();
        assert_eq!((c.review.clone(), c.mqtt.clone()), (None, None));
        assert!(!c.uses_database(), "no review, no database: as before");
        assert_eq!(c.database.sqlite_path(), Some(Path::new(DEFAULT_DATABASE)));
        let text = format!("{GOOD}[review]\nlisten = \"127.0.0.1:8444\"\n");
        let (c, _) = IngestConfig::parse("i.toml", &text, d.path()).unwrap();
        let r = c.review.clone().unwrap();
        assert_eq!(r.listen, "127.0.0.1:8444".parse().unwrap());
        assert_eq!(
            (r.cert, r.key),
            (c.tls.cert.clone(), c.tls.key.clone()),
            "[tls] by default"
        );
        assert_eq!(r.assets, PathBuf::from(DEFAULT_ASSETS));
        assert_eq!((r.session_idle_secs, r.session_max_secs), (1800, 28800));
        assert!(c.uses_database());
        let text = format!(
            "{GOOD}[review]\nlisten = \"127.0.0.1:8444\"\ncert = \"ca.crt\"\nkey = \"ca.crl\"\nassets = \"www\"\n\
             [database]\npath = \"db/n.db\"\n[mqtt]\nurl = \"mqtts://broker:8883\"\nca = \"ca.crt\"\nprefix = \"site/a\"\n"
        );
        let (c, _) = IngestConfig::parse("i.toml", &text, d.path()).unwrap();
        let r = c.review.unwrap();
        assert_eq!(r.cert, d.path().join("ca.crt"));
        assert_eq!(r.assets, d.path().join("www"));
        assert_eq!(
            c.database.sqlite_path(),
            Some(d.path().join("db/n.db").as_path())
        );
        let m = c.mqtt.unwrap();
        assert_eq!(
            (m.url.as_str(), m.prefix.as_str()),
            ("mqtts://broker:8883", "site/a")
        );
        let text = format!(
            "{GOOD}[review]\nlisten = \"here\"\ncert = \"ca.crt\"\nsession_idle_secs = 7200\nsession_max_secs = 3600\n\
             [mqtt]\nurl = \"mqtts://broker\"\nprefix = \"a/#\"\n"
        );
        let found = problems(&text, d.path()).join("\n");
        for expected in [
            "review.listen: 'here' is not an IP address",
            "review.cert: cert and key go together",
            "review.session_max_secs: 3600 is less than",
            "mqtt.url",
            "mqtt.prefix",
        ] {
            assert!(found.contains(expected), "{expected}\n{found}");
        }
    }

    #[test]
    fn the_database_is_a_sqlite_file_or_a_postgresql_url_with_its_password_and_ca() {
        let d = tls_dir();
        let parse = |db: &str| {
            IngestConfig::parse("i.toml", &format!("{GOOD}[database]\n{db}"), d.path())
                .map(|(c, _)| c.database.at)
        };
        assert_eq!(
            parse("url = \"sqlite:///var/lib/n.db\"\n").unwrap(),
            DatabaseAt::Sqlite("/var/lib/n.db".into())
        );
        let DatabaseAt::Postgres(pg) = parse(
            "url = \"postgres://neoflix@db.example:5433/neoflix\"\npassword_file = \"ca.crl\"\nca = \"ca.crt\"\n",
        )
        .unwrap() else {
            panic!("not PostgreSQL")
        };
        assert_eq!(pg.url.config.get_user(), Some("neoflix"));
        assert_eq!(pg.url.config.get_ports(), &[5433]);
        assert_eq!(
            (pg.password_file, pg.ca),
            (Some(d.path().join("ca.crl")), Some(d.path().join("ca.crt")))
        );
        // On this machine, plain text is allowed.
        for local in [
            "postgres://neoflix@localhost/neoflix",
            "postgres://neoflix@127.0.0.1:5432/neoflix",
            "postgres://neoflix@[::1]/neoflix",
            "postgresql://neoflix@%2Frun%2Fpostgresql/neoflix",
        ] {
            assert!(
                matches!(
                    parse(&format!("url = \"{local}\"\n")),
                    Ok(DatabaseAt::Postgres(_))
                ),
                "{local}"
            );
        }
        for (db, expected) in [
            (
                "url = \"postgres://neoflix@db.example/neoflix\"\n",
                "database.url: a PostgreSQL server across the network needs TLS: set ca",
            ),
            (
                "url = \"postgres://neoflix:secret@localhost/neoflix\"\n",
                "put it in password_file",
            ),
            (
                "url = \"postgres://neoflix@localhost/neoflix?sslmode=disable\"\nca = \"ca.crt\"\n",
                "TLS is set by `ca`",
            ),
            ("url = \"postgres://localhost/neoflix\"\n", "no user"),
            (
                "url = \"postgres://neoflix@pg1,pg2/neoflix\"\nca = \"ca.crt\"\n",
                "one host only",
            ),
            (
                "url = \"postgres://neoflix@localhost/neoflix?hostaddr=10.1.2.3\"\n",
                "hostaddr is not supported",
            ),
            (
                "url = \"postgres://neoflix@localhost/neoflix?options=-c%20search_path%3Dx\"\n",
                "options is not supported",
            ),
            (
                "url = \"postgresql://neoflix@%2Frun%2Fpostgresql/neoflix\"\nca = \"ca.crt\"\n",
                "database.ca: a Unix socket carries no TLS",
            ),
            (
                "url = \"postgres://neoflix@localhost\"\n",
                "no database name",
            ),
            (
                "url = \"mysql://x@y/z\"\n",
                "database.url: sqlite:///path/to/neoflix.db or postgres://",
            ),
            (
                "url = \"sqlite:///a.db\"\npath = \"b.db\"\n",
                "database.url: give path (SQLite) or url, not both",
            ),
            (
                "path = \"b.db\"\nca = \"ca.crt\"\n",
                "database.ca: only for a PostgreSQL url",
            ),
            (
                "url = \"postgres://neoflix@localhost/neoflix\"\npassword_file = \"absent\"\n",
                "database.password_file: cannot read",
            ),
        ] {
            let text = format!("{GOOD}[database]\n{db}");
            let found = problems(&text, d.path()).join("\n");
            assert!(found.contains(expected), "{db}: {expected}\n{found}");
            assert!(
                !found.contains("secret"),
                "the password is not repeated: {found}"
            );
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let found = problems("listen = \"a\"\n[tls\n", Path::new("."));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("i.toml:2: TOML syntax error"),
            "{found:?}"
        );
    }
}
