//! The server's database: reviewers, sessions, the recordings index, sign-in failures, the
//! audit log and the server secret, behind a small typed API ([`Db`]).
//!
//! SQLite by default (one file, one server); PostgreSQL where several replicas share one
//! database. SQLite has one connection behind a mutex, PostgreSQL a few;
//! callers on the async runtime go through `spawn_blocking`. All SQL lives in this module, written once against [`Sql`] in
//! the dialect both speak. Each backend's schema is versioned (SQLite's `PRAGMA user_version`,
//! PostgreSQL's `neoflix_schema` table) and migrated at open.
//!
//! Every write transaction is serialised against every other, on either backend: SQLite's
//! `BEGIN IMMEDIATE`, and on PostgreSQL a transaction-scoped advisory lock taken first. The
//! sign-in counts, consent decisions and audit chain read and then write, and were written
//! for SQLite's one writer at a time; replicas writing at once get the same order. The audit
//! table refuses `UPDATE` and `DELETE` (and on PostgreSQL `TRUNCATE`) by trigger; its hash
//! chain ([`crate::audit`]) shows edits made behind the database's back.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use neoflix_format::reviewer::{Kdf, ReviewerFile, ReviewerName};
use rusqlite::{Connection, TransactionBehavior};
use thiserror::Error;

use crate::audit::{self, Entry, Event};

pub mod sql;

use sql::{Lite, Pg, Row, args};
pub use sql::{Sql, Val};

/// The SQLite schema this code writes: [`MIGRATIONS`] applied in order.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The PostgreSQL schema this code writes: [`PG_MIGRATIONS`] applied in order.
const PG_SCHEMA_VERSION: i64 = PG_MIGRATIONS.len() as i64;

/// The advisory lock every PostgreSQL write transaction takes first ("neoflix" in ASCII).
const PG_WRITE_LOCK: i64 = 0x006e_656f_666c_6978;

/// How long a write waits for another process (the subcommands while the server runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE reviewers (
    name TEXT PRIMARY KEY,
    department_key_id TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    kdf TEXT NOT NULL,
    verifier TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    imported_utc TEXT NOT NULL
);
CREATE TABLE name_failures (
    name TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure INTEGER NOT NULL
);
CREATE TABLE address_failures (
    client TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX address_failures_client ON address_failures (client, at);
CREATE TABLE sessions (
    token_sha256 TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX sessions_reviewer ON sessions (reviewer);
CREATE TABLE recordings (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    upload TEXT NOT NULL,
    first_seen_utc TEXT NOT NULL,
    status TEXT,
    trigger_source TEXT,
    stop_reason TEXT,
    first_frame_utc TEXT,
    trigger_utc TEXT,
    stop_utc TEXT,
    preroll_secs DOUBLE PRECISION,
    duration_secs DOUBLE PRECISION,
    markers TEXT,
    signer TEXT,
    recipient_key_id TEXT,
    PRIMARY KEY (device, id)
);
CREATE INDEX recordings_id ON recordings (id);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    utc TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    recording TEXT NOT NULL,
    client TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Version 2: the recordings each session opened. A sealed object is served only to a session
/// that opened its recording, so no reviewer fetches one without a `recording-opened` entry
/// in the audit log. The rows go with their session.
const SCHEMA_V2: &str = "
CREATE TABLE opened (
    token_sha256 TEXT NOT NULL REFERENCES sessions (token_sha256) ON DELETE CASCADE,
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (token_sha256, device, id)
);
";

/// Version 3: legal holds, which keep a recording past its retention date. Kept apart from the
/// index so that a hold can be placed on a recording that has not arrived yet.
const SCHEMA_V3: &str = "
CREATE TABLE holds (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    utc TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
";

/// Version 4: roles (a reviewer imported before roles existed could only watch), consent
/// answers and the teaching library. Consent and teaching rows go with their recording.
/// `wrapped_key` is empty for roles without video.
const SCHEMA_V4: &str = "
ALTER TABLE reviewers ADD COLUMN roles TEXT NOT NULL DEFAULT 'reviewer';
CREATE TABLE consent (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    utc TEXT NOT NULL,
    note TEXT NOT NULL,
    form_ref TEXT NOT NULL,
    PRIMARY KEY (device, id, question)
);
CREATE TABLE teaching (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    until_utc TEXT NOT NULL,
    added_by TEXT NOT NULL,
    utc TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
";

/// Version 5: leases, which let one replica of several run a periodic job (retention).
const SCHEMA_V5: &str = "
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_secs INTEGER NOT NULL
);
";

/// Version 6: the withdrawals audited, one row each: a second withdrawal of the same recording
/// (another replica's, a retry after a crash) finishes the deletion without a second entry.
const SCHEMA_V6: &str = "
CREATE TABLE withdrawals (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    utc TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
";

/// Each version's schema change, from version 0 (an empty file) on.
const MIGRATIONS: [&str; 6] = [
    SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6,
];

/// PostgreSQL's version 1: SQLite's version 6 in one, with PostgreSQL's types. Text compares
/// byte by byte (`COLLATE "C"`), as in SQLite: the lists sort by RFC 3339 times and names, and
/// a hospital's database may have any default collation.
const PG_SCHEMA: &str = r#"
CREATE TABLE reviewers (
    name TEXT COLLATE "C" PRIMARY KEY,
    department_key_id TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    kdf TEXT NOT NULL,
    verifier TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    imported_utc TEXT NOT NULL,
    roles TEXT NOT NULL DEFAULT 'reviewer'
);
CREATE TABLE name_failures (
    name TEXT COLLATE "C" PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure BIGINT NOT NULL
);
CREATE TABLE address_failures (
    client TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX address_failures_client ON address_failures (client, at);
CREATE TABLE sessions (
    token_sha256 TEXT COLLATE "C" PRIMARY KEY,
    csrf TEXT NOT NULL,
    reviewer TEXT COLLATE "C" NOT NULL,
    created BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE INDEX sessions_reviewer ON sessions (reviewer);
CREATE TABLE recordings (
    device TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    upload TEXT NOT NULL,
    first_seen_utc TEXT COLLATE "C" NOT NULL,
    status TEXT,
    trigger_source TEXT,
    stop_reason TEXT,
    first_frame_utc TEXT COLLATE "C",
    trigger_utc TEXT COLLATE "C",
    stop_utc TEXT COLLATE "C",
    preroll_secs DOUBLE PRECISION,
    duration_secs DOUBLE PRECISION,
    markers TEXT,
    signer TEXT,
    recipient_key_id TEXT COLLATE "C",
    PRIMARY KEY (device, id)
);
CREATE INDEX recordings_id ON recordings (id);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    utc TEXT COLLATE "C" NOT NULL,
    actor TEXT COLLATE "C" NOT NULL,
    action TEXT COLLATE "C" NOT NULL,
    recording TEXT COLLATE "C" NOT NULL,
    client TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE FUNCTION neoflix_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION neoflix_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION neoflix_audit_append_only();
CREATE TABLE secrets (
    name TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE opened (
    token_sha256 TEXT COLLATE "C" NOT NULL REFERENCES sessions (token_sha256) ON DELETE CASCADE,
    device TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (token_sha256, device, id)
);
CREATE TABLE holds (
    device TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    reason TEXT NOT NULL,
    utc TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE consent (
    device TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    question TEXT COLLATE "C" NOT NULL,
    answer TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    utc TEXT NOT NULL,
    note TEXT NOT NULL,
    form_ref TEXT NOT NULL,
    PRIMARY KEY (device, id, question)
);
CREATE TABLE teaching (
    device TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    until_utc TEXT COLLATE "C" NOT NULL,
    added_by TEXT NOT NULL,
    utc TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE leases (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT NOT NULL,
    until_secs BIGINT NOT NULL
);
CREATE TABLE withdrawals (
    device TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    utc TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
"#;

/// PostgreSQL's schema changes, from version 0 (no `neoflix_schema` table) on.
const PG_MIGRATIONS: [&str; 1] = [PG_SCHEMA];

/// The columns of a recording's row in the list, with its consent, hold and teaching place
/// ([`row_summary`] reads them in this order).
const SUMMARY: &str = "SELECT r.id, r.device, r.upload, r.status, r.trigger_source, r.stop_reason, r.first_frame_utc, r.trigger_utc, r.stop_utc, r.preroll_secs, r.duration_secs, r.markers, r.signer,
    r.first_seen_utc, h.reason IS NOT NULL, t.until_utc,
    cf.answer, cf.recorded_by, cf.utc, cf.note, cf.form_ref,
    cr.answer, cr.recorded_by, cr.utc, cr.note, cr.form_ref,
    cu.answer, cu.recorded_by, cu.utc, cu.note, cu.form_ref
  FROM recordings r
  LEFT JOIN holds h ON h.device = r.device AND h.id = r.id
  LEFT JOIN teaching t ON t.device = r.device AND t.id = r.id
  LEFT JOIN consent cf ON cf.device = r.device AND cf.id = r.id AND cf.question = 'filmed'
  LEFT JOIN consent cr ON cr.device = r.device AND cr.id = r.id AND cr.question = 'review'
  LEFT JOIN consent cu ON cu.device = r.device AND cu.id = r.id AND cu.question = 'use'";

/// A database operation that failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    /// The file cannot be created or opened: typically a missing directory or a service user
    /// without write access to it (`[database] path`).
    #[error("database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// SQLite said no: a locked database for longer than the busy timeout, a full disk, or a
    /// file that is not this program's database.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// PostgreSQL said no, or could not be reached: the server's message, with its SQLSTATE.
    #[error("PostgreSQL: {}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    /// PostgreSQL did not complete a connection in time, or failed to moments before.
    #[error("PostgreSQL at {place} cannot be reached ({why}); tried again within 5 s")]
    Unreachable {
        /// Where.
        place: String,
        /// The last attempt's failure.
        why: String,
    },
    /// The PostgreSQL connection's TLS settings are unusable (`[database] ca`).
    #[error("PostgreSQL TLS: {0}")]
    PgTls(String),
    /// The database was written by a newer version of this program.
    #[error(
        "database schema version {found} is newer than this program's ({ours}): upgrade neoflix-ingest"
    )]
    Newer {
        /// The database's.
        found: i64,
        /// This program's.
        ours: i64,
    },
    /// A reviewer of that name exists (import without `--replace`).
    #[error("a reviewer named {0} exists: remove it first, or import with --replace")]
    ReviewerExists(String),
    /// A stored value is not what this program writes (edited by hand).
    #[error("database: stored {0} is unreadable")]
    Corrupt(String),
    /// A copy goes from SQLite to PostgreSQL only.
    #[error("a database is copied from a SQLite file into PostgreSQL only")]
    CopyDirection,
    /// A copy's target already holds data.
    #[error("the database copied into already holds {0}: copy only into a new, empty database")]
    NotEmpty(String),
}

/// A reviewer as stored, with the state of its sign-in name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    /// The file the chair made.
    pub file: ReviewerFile,
    /// When it was imported (RFC 3339 UTC).
    pub imported_utc: String,
}

/// How `add_reviewer` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A new reviewer.
    New,
    /// An existing one replaced (`--replace`); its sessions ended. Its roles before.
    Replaced(Vec<Role>),
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its reviewer.
    pub reviewer: String,
    /// The reviewer's roles, as stored now (a re-import changes them at the next request).
    pub roles: Vec<Role>,
    /// Its CSRF token.
    pub csrf: String,
    /// Sign-in time (unix seconds).
    pub created: i64,
    /// Last request (unix seconds).
    pub last_seen: i64,
}

/// Which sign-in limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The name's failures in a row.
    Name,
    /// The address's failures in the window.
    Address,
}

impl Limit {
    /// As the audit log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Name => "name",
            Limit::Address => "address",
        }
    }
}

/// What a sign-in attempt came to ([`Db::sign_in`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Refused unchecked by a rate limit, for this many more seconds.
    Refused {
        /// Seconds until it may try again.
        retry_after_secs: i64,
        /// Which limit.
        limit: Limit,
    },
    /// Checked and wrong, or not a reviewer: counted against the name and the address.
    Wrong,
    /// Checked and right: the name's count starts again.
    Right(Box<Reviewer>),
}

use neoflix_format::review_api::{Answer, Consent, Lifecycle, Question, Recorded};
pub use neoflix_format::review_api::{Summary, Upload};
use neoflix_format::reviewer::Role;

/// A recording as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Retained {
    /// The box.
    pub device: String,
    /// The recording.
    pub id: String,
    /// Uploading or complete.
    pub upload: Upload,
    /// When its first object reached this server, by the server's clock (RFC 3339 UTC): what
    /// retention counts from. Boxes upload while they record, so this is the recording's start
    /// unless its box was offline; a box's clock is not trusted with deleting.
    pub received_utc: String,
    /// Its first frame by the box's clock, once complete.
    pub first_frame_utc: Option<String>,
    /// Seconds of video, once complete.
    pub duration_secs: Option<f64>,
    /// The legal hold's reason, if it is held.
    pub hold: Option<String>,
    /// In the teaching library until then (RFC 3339 UTC).
    pub teaching_until_utc: Option<String>,
    /// Consent to film or review it was refused.
    pub refused: bool,
}

/// The fields of a complete recording the index keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed<'a> {
    /// The checked manifest.
    pub manifest: &'a neoflix_format::Manifest,
    /// Who signed it (from the receipt).
    pub signer: Option<String>,
}

/// Filters of the recordings list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this device.
    pub device: Option<String>,
    /// Trigger at or after (normalised RFC 3339 UTC, as [`neoflix_format::utc`] writes).
    pub since: Option<String>,
    /// Trigger at or before.
    pub until: Option<String>,
}

/// A session's `last_seen` is written when it is at least this old: sessions expire within a
/// minute of their idle time.
pub const LAST_SEEN_STEP_SECS: i64 = 60;

/// Most recordings one list answers (newest first); narrower filters reach older ones.
pub const MAX_LISTED: usize = 1000;

/// The database.
pub struct Db {
    backend: Backend,
    /// What the logs and errors call it: the file, or the PostgreSQL server and database.
    place: String,
}

enum Backend {
    Lite(Mutex<Connection>),
    Pg(Box<PgPool>),
}

/// Connections to PostgreSQL a replica keeps: one request's statement does not hold up the
/// others' (every object a reviewer fetches checks its session). Writes still go one at a
/// time, by the write lock.
const PG_CONNECTIONS: usize = 4;

/// [`PG_CONNECTIONS`] connections, each made when first needed and again after it broke.
struct PgPool {
    conns: Vec<Mutex<PgConn>>,
    next: std::sync::atomic::AtomicUsize,
}

impl PgPool {
    /// A free open connection if there is one; else a free one to open (so connections are
    /// made only when every open one is busy); else the next in turn, once it is free.
    fn get(&self) -> std::sync::MutexGuard<'_, PgConn> {
        let mut unopened = None;
        for slot in &self.conns {
            let c = match slot.try_lock() {
                Ok(c) => c,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            if c.is_open() {
                return c;
            }
            unopened.get_or_insert(c);
        }
        if let Some(c) = unopened {
            return c;
        }
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.conns[start % self.conns.len()])
    }
}

/// Where a PostgreSQL database is and how to reach it, parsed from `[database]`.
#[derive(Clone)]
pub struct PgTarget {
    /// Host, port, user, database name, password and timeouts.
    pub config: postgres::Config,
    /// TLS trusting `[database] ca` (the host name checked); `None` only where the
    /// configuration allows plain text (a Unix socket or loopback).
    pub tls: Option<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `postgres::Config`'s own Debug redacts the password.
        f.debug_struct("PgTarget")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl PgTarget {
    /// Where it is, for messages: `user@host:port/dbname` (never the password).
    pub fn describe(&self) -> String {
        let c = &self.config;
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}@{host}:{port}/{}",
            c.get_user().unwrap_or("?"),
            c.get_dbname().unwrap_or("?")
        )
    }

    /// The target `[database]` describes: TLS with its `ca` (host name checked) or plain
    /// text (the configuration allowed that only on this machine), the password read from
    /// its file, and bounds on how long a connection or statement may take.
    pub fn of(pg: &crate::config::Postgres) -> Result<PgTarget, DbError> {
        let mut config = pg.url.config.clone();
        if let Some(file) = &pg.password_file {
            let text = neoflix_format::files::read_regular(file, 4096).map_err(|source| {
                DbError::Open {
                    path: file.clone(),
                    source,
                }
            })?;
            let text = String::from_utf8(text).map_err(|_| DbError::Open {
                path: file.clone(),
                source: std::io::Error::other("not UTF-8 text"),
            })?;
            // A file written by an editor ends with a newline that is not the password's.
            config.password(text.trim_end_matches(['\r', '\n']));
        }
        let tls = match &pg.ca {
            None => {
                config.ssl_mode(postgres::config::SslMode::Disable);
                None
            }
            Some(ca) => {
                config.ssl_mode(postgres::config::SslMode::Require);
                // As the box trusts the department's CA: the same checks, the same messages.
                Some(neoflix_pki::client_tls(ca, None).map_err(|e| DbError::PgTls(e.to_string()))?)
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_CONNECT_TIMEOUT);
        }
        // A connection a firewall dropped without a word, or a server machine that vanished,
        // is found within seconds, not after the kernel's two hours of keepalive.
        config.keepalives(true);
        config.keepalives_interval(PG_KEEPALIVE_INTERVAL);
        // "relation already exists, skipping" and the like: the server's chatter, not ours.
        config.notice_callback(|n| {
            log::debug!(notice = crate::esc(n.message()).as_str(); "PostgreSQL notice");
        });
        config.keepalives_idle(PG_KEEPALIVE_IDLE);
        config.tcp_user_timeout(PG_TCP_USER_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("neoflix-ingest");
        }
        // A statement (or a wait for the write lock) that runs this long is a database in
        // trouble: the request fails and says so instead of holding a thread for ever.
        // And the server finds a replica that vanished (its machine, its network) as soon: its
        // session goes, and with it the advisory locks it held (`Exclusive`), instead of after
        // the server's two hours of keepalive.
        config.options(&format!(
            "-c statement_timeout={} -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count=3",
            PG_STATEMENT_TIMEOUT.as_millis(),
            PG_KEEPALIVE_IDLE.as_secs(),
            PG_KEEPALIVE_INTERVAL.as_secs()
        ));
        Ok(PgTarget { config, tls })
    }

    /// Connects and asks the server its version, changing nothing: what `--check-config` does.
    pub fn check(&self) -> Result<String, DbError> {
        let mut client = self.connect()?;
        let version: String = client.query_one("SHOW server_version", &[])?.try_get(0)?;
        drop_client(Some(client));
        Ok(version)
    }

    /// Connects on a thread of its own, waited for at most twice the TCP connect's timeout in
    /// all: that timeout covers the TCP connect only, not the name lookup, the TLS handshake
    /// or the password exchange with a server that accepted and then went quiet.
    fn connect(&self) -> Result<postgres::Client, DbError> {
        let rx = self.start_connect()?;
        match rx.recv_timeout(self.connect_wait()) {
            Ok(r) => r,
            Err(_) => Err(DbError::Unreachable {
                place: self.describe(),
                why: "no answer in time".into(),
            }),
        }
    }

    /// Starts connecting on a thread of its own; the result comes through the receiver.
    fn start_connect(&self) -> Result<Connecting, DbError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let target = self.clone();
        std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let _ = tx.send(target.connect_here());
            })
            .map_err(|e| DbError::Unreachable {
                place: self.describe(),
                why: format!("no thread to connect on: {e}"),
            })?;
        Ok(rx)
    }

    /// How long a connection may take in all: the TCP connect's own timeout, and as long
    /// again for the TLS handshake and the password exchange.
    fn connect_wait(&self) -> Duration {
        2 * self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(PG_CONNECT_TIMEOUT)
    }

    fn connect_here(&self) -> Result<postgres::Client, DbError> {
        Ok(match &self.tls {
            None => self.config.connect(postgres::NoTls)?,
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))?,
        })
    }
}

/// A PostgreSQL connection, made again after it broke (a restarted or failed-over server).
struct PgConn {
    target: PgTarget,
    client: Option<postgres::Client>,
    /// When and why the pool's last attempt to connect failed: until [`PG_RETRY_AFTER`] has
    /// passed, callers are answered at once instead of each waiting for a server that is not
    /// there. Shared by the pool's connections.
    failed: std::sync::Arc<Mutex<Option<(std::time::Instant, String)>>>,
    /// An attempt that outlasted its wait: the next caller waits on it again rather than
    /// start another, so that a server that takes connections and never answers costs one
    /// thread and one socket, not one per attempt.
    pending: Option<(std::time::Instant, Connecting)>,
}

/// A connection being made on a thread of its own.
type Connecting = std::sync::mpsc::Receiver<Result<postgres::Client, DbError>>;

impl PgConn {
    fn is_open(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    fn client(&mut self) -> Result<&mut postgres::Client, DbError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            drop_client(self.client.take());
            if let Some((at, why)) = &*lock(&self.failed)
                && at.elapsed() < PG_RETRY_AFTER
            {
                return Err(DbError::Unreachable {
                    place: self.target.describe(),
                    why: why.clone(),
                });
            }
            // An attempt older than two waits is given up (its thread ends on its own).
            let wait = self.target.connect_wait();
            let (started, rx) = match self.pending.take() {
                Some((at, rx)) if at.elapsed() < 2 * wait => (at, rx),
                _ => (std::time::Instant::now(), self.target.start_connect()?),
            };
            let outcome = match rx.recv_timeout(wait) {
                Ok(r) => r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.pending = Some((started, rx));
                    Err(DbError::Unreachable {
                        place: self.target.describe(),
                        why: "no answer in time".into(),
                    })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(DbError::Unreachable {
                    place: self.target.describe(),
                    why: "the attempt ended without a result".into(),
                }),
            };
            match outcome {
                Ok(c) => {
                    *lock(&self.failed) = None;
                    self.client = Some(c);
                }
                Err(e) => {
                    let why = match &e {
                        DbError::Pg(p) => pg_message(p),
                        DbError::Unreachable { why, .. } => why.clone(),
                        other => other.to_string(),
                    };
                    *lock(&self.failed) = Some((std::time::Instant::now(), why));
                    return Err(e);
                }
            }
        }
        Ok(self.client.as_mut().expect("just connected"))
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        drop_client(self.client.take());
    }
}

/// Drops a client on a thread of its own: `postgres::Client` closes its connection by running
/// its own runtime, which panics inside an async context, where the last `Arc<Db>` may go.
fn drop_client(client: Option<postgres::Client>) {
    if let Some(c) = client {
        let _ = std::thread::spawn(move || drop(c)).join();
    }
}

/// The TCP connect's timeout unless the url sets `connect_timeout`; the whole connection
/// may take twice that ([`PgTarget::connect_wait`]).
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one PostgreSQL statement may run, a wait for the write lock included (enforced
/// by the server).
const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// An idle connection is probed after this long, then every [`PG_KEEPALIVE_INTERVAL`]; with
/// [`PG_TCP_USER_TIMEOUT`] set, Linux breaks it once probes (or data) go unacknowledged for
/// that long: about 20 s of silence in all.
const PG_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const PG_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Data or keepalive probes the server has not acknowledged for this long break the
/// connection.
const PG_TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// After a failed connect, requests fail at once for this long before the next attempt.
const PG_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A PostgreSQL error as its server said it: the message and SQLSTATE, which `Display` of
/// `postgres::Error` leaves out ("db error").
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// Now, unix seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn now_utc() -> String {
    neoflix_format::utc(std::time::SystemTime::now())
}

impl Db {
    /// Opens (creating, mode 0600, its directory 0700) and migrates the SQLite database.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(open_err)?;
        }
        // Created 0600 before SQLite opens it: the WAL and shared-memory files take its mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(DbError::Newer {
                found: version,
                ours: SCHEMA_VERSION,
            });
        }
        // Outside any transaction, on every connection: `opened` rows go with their session.
        conn.pragma_update(None, "foreign_keys", "ON")?;
        if version < SCHEMA_VERSION {
            let tx = conn.unchecked_transaction()?;
            for m in &MIGRATIONS[version as usize..] {
                tx.execute_batch(m)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        Ok(Db {
            backend: Backend::Lite(Mutex::new(conn)),
            place: path.display().to_string(),
        })
    }

    /// Opens the database `[database]` names: the SQLite file, or PostgreSQL with its
    /// password file and CA read now.
    pub fn open_configured(d: &crate::config::Database) -> Result<Db, DbError> {
        use crate::config::DatabaseAt;
        match &d.at {
            DatabaseAt::Sqlite(path) => Db::open(path),
            DatabaseAt::Postgres(pg) => Db::connect(&PgTarget::of(pg)?),
        }
    }

    /// Connects to PostgreSQL and migrates its schema. Replicas starting together migrate
    /// one after the other (the write lock), and the later ones find the work done.
    pub fn connect(target: &PgTarget) -> Result<Db, DbError> {
        let mut client = target.connect()?;
        let mut tx = client.transaction()?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({PG_WRITE_LOCK});
             CREATE TABLE IF NOT EXISTS neoflix_schema (version BIGINT NOT NULL);"
        ))?;
        let version: i64 = match tx.query_opt("SELECT version FROM neoflix_schema", &[])? {
            Some(r) => r.try_get(0)?,
            None => {
                tx.execute("INSERT INTO neoflix_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        if version > PG_SCHEMA_VERSION {
            return Err(DbError::Newer {
                found: version,
                ours: PG_SCHEMA_VERSION,
            });
        }
        if version < PG_SCHEMA_VERSION {
            let from = usize::try_from(version)
                .map_err(|_| DbError::Corrupt(format!("schema version {version}")))?;
            for m in &PG_MIGRATIONS[from..] {
                tx.batch_execute(m)?;
            }
            tx.execute(
                "UPDATE neoflix_schema SET version = $1",
                &[&PG_SCHEMA_VERSION],
            )?;
        }
        tx.commit()?;
        let mut migrated = Some(client);
        let failed = std::sync::Arc::new(Mutex::new(None));
        Ok(Db {
            backend: Backend::Pg(Box::new(PgPool {
                conns: (0..PG_CONNECTIONS)
                    .map(|i| {
                        Mutex::new(PgConn {
                            target: target.clone(),
                            // The one that migrated is kept; the others connect when needed.
                            client: if i == 0 { migrated.take() } else { None },
                            failed: failed.clone(),
                            pending: None,
                        })
                    })
                    .collect(),
                next: std::sync::atomic::AtomicUsize::new(0),
            })),
            place: target.describe(),
        })
    }

    /// Where it is, for messages: the file, or the PostgreSQL server and database.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Runs `f` on the connection, each statement its own transaction.
    fn with<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
    ) -> Result<T, E> {
        match &self.backend {
            Backend::Lite(c) => f(&mut Lite(&lock(c))),
            Backend::Pg(pool) => {
                let mut c = pool.get();
                f(&mut Pg(c.client()?))
            }
        }
    }

    /// Runs `f` in a write transaction, serialised against every other (module doc). An
    /// error from `f` rolls it back.
    fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
    ) -> Result<T, E> {
        match &self.backend {
            Backend::Lite(c) => {
                let mut c = lock(c);
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(DbError::from)?;
                let out = f(&mut Lite(&tx))?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
            Backend::Pg(pool) => {
                let mut c = pool.get();
                let mut tx = c.client()?.transaction().map_err(DbError::from)?;
                tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})"))
                    .map_err(DbError::from)?;
                let out = f(&mut Pg(&mut tx))?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
        }
    }

    /// The SQLite connection itself, for tests that go behind the API's back.
    #[cfg(test)]
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.backend {
            Backend::Lite(c) => lock(c),
            Backend::Pg(_) => panic!("not SQLite"),
        }
    }

    /// The server's random secret (made on first use): it derives the sign-in parameters of
    /// names that are not reviewers. Every replica reads the same one.
    pub fn server_secret(&self) -> Result<[u8; 32], DbError> {
        let read = |c: &mut dyn Sql| -> Result<Option<[u8; 32]>, DbError> {
            match c.query_opt("SELECT value FROM secrets WHERE name = 'login-params'", &[])? {
                None => Ok(None),
                Some(r) => hex::decode(r.get::<String>(0)?)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| DbError::Corrupt("server secret".into())),
            }
        };
        if let Some(s) = self.with(read)? {
            return Ok(s);
        }
        let mut s = [0u8; 32];
        getrandom::fill(&mut s)
            .map_err(|e| DbError::Corrupt(format!("no randomness for the server secret: {e}")))?;
        // Another process may have made one meanwhile: the first one stays.
        self.with(|c| {
            c.execute(
                "INSERT INTO secrets (name, value) VALUES ('login-params', $1) ON CONFLICT (name) DO NOTHING",
                args![hex::encode(s)],
            )
        })?;
        self.with(read)?
            .ok_or_else(|| DbError::Corrupt("server secret".into()))
    }

    // --- reviewers ---

    /// Stores a reviewer; an existing name is refused unless `replace` (its sessions end).
    pub fn add_reviewer(&self, f: &ReviewerFile, replace: bool) -> Result<Added, DbError> {
        self.write(|c| {
            let name = f.name.as_str();
            let before: Option<String> = c
                .query_opt("SELECT roles FROM reviewers WHERE name = $1", args![name])?
                .map(|r| r.get(0))
                .transpose()?;
            if before.is_some() && !replace {
                return Err(DbError::ReviewerExists(f.name.to_string()));
            }
            let kdf = serde_json::to_string(&f.kdf).expect("kdf serializes");
            c.execute("DELETE FROM reviewers WHERE name = $1", args![name])?;
            c.execute("DELETE FROM sessions WHERE reviewer = $1", args![name])?;
            c.execute(
                "INSERT INTO reviewers (name, department_key_id, created_utc, kdf, verifier, wrapped_key, imported_utc, roles) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![
                    name,
                    f.department_key_id,
                    f.created_utc,
                    kdf,
                    f.verifier,
                    f.wrapped_key.as_deref().unwrap_or(""),
                    now_utc(),
                    roles_text(&f.roles)
                ],
            )?;
            Ok(match before {
                None => Added::New,
                // Rows this code wrote read back; a hand-edited one is shown as it reads.
                Some(b) => Added::Replaced(roles_of(&b).unwrap_or_default()),
            })
        })
    }

    /// A reviewer by name.
    pub fn reviewer(&self, name: &str) -> Result<Option<Reviewer>, DbError> {
        self.with(|c| reviewer_in(c, name))
    }

    /// One sign-in attempt of `name` from `address` (see [`crate::ratelimit::address_key`])
    /// with `auth_key`, at `now`: the limits, the check and the count in one transaction.
    /// Attempts sent in parallel are thereby limited exactly as attempts sent one after the
    /// other; checked one by one against counts read before any was counted, they were not.
    pub fn sign_in(
        &self,
        name: &str,
        address: &str,
        auth_key: &[u8],
        now: i64,
    ) -> Result<Attempt, DbError> {
        use crate::ratelimit;
        self.write(|c| {
            let (failures, last) = name_failures_in(c, name)?;
            let times = address_failures_in(c, address, now - ratelimit::ADDRESS_WINDOW_SECS)?;
            let refused = ratelimit::address_retry_after(&times, now)
                .map(|s| (s, Limit::Address))
                .or_else(|| {
                    ratelimit::name_retry_after(failures, last, now).map(|s| (s, Limit::Name))
                });
            if let Some((retry_after_secs, limit)) = refused {
                return Ok(Attempt::Refused {
                    retry_after_secs,
                    limit,
                });
            }
            let reviewer = reviewer_in(c, name)?;
            let right = match &reviewer {
                Some(r) => r.file.check_auth(auth_key),
                None => {
                    // As much work as a known name costs.
                    let _ = neoflix_format::reviewer::verifier_of(auth_key);
                    false
                }
            };
            Ok(match reviewer.filter(|_| right) {
                Some(r) => {
                    c.execute("DELETE FROM name_failures WHERE name = $1", args![name])?;
                    Attempt::Right(Box::new(r))
                }
                None => {
                    add_failure_in(c, name, address, now)?;
                    Attempt::Wrong
                }
            })
        })
    }

    /// Every reviewer, by name.
    pub fn reviewers(&self) -> Result<Vec<Reviewer>, DbError> {
        self.with(|c| {
            c.query(&format!("{REVIEWER} ORDER BY name"), &[])?
                .iter()
                .map(|r| check_reviewer(row_reviewer(r)?))
                .collect()
        })
    }

    /// Removes a reviewer, its sessions and its failure count at once; `false` if unknown.
    pub fn remove_reviewer(&self, name: &str) -> Result<bool, DbError> {
        self.write(|c| {
            let n = c.execute("DELETE FROM reviewers WHERE name = $1", args![name])?;
            c.execute("DELETE FROM sessions WHERE reviewer = $1", args![name])?;
            c.execute("DELETE FROM name_failures WHERE name = $1", args![name])?;
            Ok(n > 0)
        })
    }

    // --- sign-in failures ---

    /// A name's failures in a row and the time of the last (unix seconds).
    pub fn name_failures(&self, name: &str) -> Result<(u32, i64), DbError> {
        self.with(|c| name_failures_in(c, name))
    }

    /// Counts a failure against a name and an address at `now`.
    pub fn add_failure(&self, name: &str, address: &str, now: i64) -> Result<(), DbError> {
        self.write(|c| add_failure_in(c, name, address, now))
    }

    /// A right passphrase: the name's count starts again.
    pub fn clear_failures(&self, name: &str) -> Result<(), DbError> {
        self.with(|c| c.execute("DELETE FROM name_failures WHERE name = $1", args![name]))?;
        Ok(())
    }

    /// The times of an address's recent failures (unix seconds).
    pub fn address_failures(&self, address: &str, since: i64) -> Result<Vec<i64>, DbError> {
        self.with(|c| address_failures_in(c, address, since))
    }

    // --- sessions ---

    /// Starts a session.
    pub fn add_session(
        &self,
        token_sha256: &str,
        csrf: &str,
        reviewer: &str,
        now: i64,
    ) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (token_sha256, csrf, reviewer, created, last_seen) VALUES ($1, $2, $3, $4, $4)",
                args![token_sha256, csrf, reviewer, now],
            )
        })?;
        Ok(())
    }

    /// A live session, its `last_seen` moved to `now`; one past its idle or maximum age (or
    /// of a removed reviewer) is deleted and `None`.
    pub fn session(
        &self,
        token_sha256: &str,
        now: i64,
        idle_secs: i64,
        max_secs: i64,
    ) -> Result<Option<Session>, DbError> {
        self.with(|c| {
            let s = c
                .query_opt(
                    "SELECT s.reviewer, s.csrf, s.created, s.last_seen, r.roles FROM sessions s JOIN reviewers r ON r.name = s.reviewer WHERE s.token_sha256 = $1",
                    args![token_sha256],
                )?
                .map(|r| -> Result<Session, DbError> {
                    let roles: String = r.get(4)?;
                    Ok(Session {
                        reviewer: r.get(0)?,
                        // A hand-edited row grants nothing rather than failing every request.
                        roles: roles_of(&roles).unwrap_or_default(),
                        csrf: r.get(1)?,
                        created: r.get(2)?,
                        last_seen: r.get(3)?,
                    })
                })
                .transpose()?;
            match s {
                Some(s) if now - s.last_seen < idle_secs && now - s.created < max_secs => {
                    // Every object fetch comes through here: a write (and its fsync) per
                    // request would be most of the database's work, so the idle clock moves
                    // once a minute.
                    if now - s.last_seen < LAST_SEEN_STEP_SECS {
                        return Ok(Some(s));
                    }
                    c.execute(
                        "UPDATE sessions SET last_seen = $2 WHERE token_sha256 = $1",
                        args![token_sha256, now],
                    )?;
                    Ok(Some(Session {
                        last_seen: now,
                        ..s
                    }))
                }
                _ => {
                    c.execute(
                        "DELETE FROM sessions WHERE token_sha256 = $1",
                        args![token_sha256],
                    )?;
                    Ok(None)
                }
            }
        })
    }

    /// Places a legal hold (or replaces its reason). Returns whether there was none.
    pub fn hold(&self, device: &str, id: &str, reason: &str) -> Result<bool, DbError> {
        self.atomically(|c, _| hold_place_in(c, device, id, reason))
    }

    /// The reason of the legal hold on `device`/`id`, if it is held (indexed or not).
    pub fn hold_of(&self, device: &str, id: &str) -> Result<Option<String>, DbError> {
        self.with(|c| hold_in(c, device, id))
    }

    /// Releases a legal hold. Returns whether there was one.
    pub fn release(&self, device: &str, id: &str) -> Result<bool, DbError> {
        self.with(|c| release_in(c, device, id))
    }

    /// Every indexed recording with what retention needs: newest first.
    pub fn retained(&self) -> Result<Vec<Retained>, DbError> {
        self.with(|c| {
            c.query(
                "SELECT r.device, r.id, r.upload, r.first_seen_utc, r.first_frame_utc, r.duration_secs, h.reason, t.until_utc,
                    EXISTS (SELECT 1 FROM consent c WHERE c.device = r.device AND c.id = r.id AND c.question IN ('filmed', 'review') AND c.answer = 'refused')
                 FROM recordings r LEFT JOIN holds h ON h.device = r.device AND h.id = r.id LEFT JOIN teaching t ON t.device = r.device AND t.id = r.id ORDER BY r.first_seen_utc DESC, r.device, r.id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(Retained {
                    device: r.get(0)?,
                    id: r.get(1)?,
                    upload: upload_of(r, 2)?,
                    received_utc: r.get(3)?,
                    first_frame_utc: r.get(4)?,
                    duration_secs: r.get(5)?,
                    hold: r.get(6)?,
                    teaching_until_utc: r.get(7)?,
                    refused: r.get(8)?,
                })
            })
            .collect()
        })
    }

    /// Takes the lease `name` for `holder` until `now + secs` (unix seconds), or renews it:
    /// `false` while another holder's lease runs. A replica that stops holding it (killed,
    /// cut off) loses it when it runs out, and another takes it.
    pub fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        secs: i64,
    ) -> Result<bool, DbError> {
        self.write(|c| {
            let held = c
                .query_opt(
                    "SELECT holder, until_secs FROM leases WHERE name = $1",
                    args![name],
                )?
                .map(|r| Ok::<_, DbError>((r.get::<String>(0)?, r.get::<i64>(1)?)))
                .transpose()?;
            if let Some((other, until)) = held
                && other != holder
                && until > now
            {
                return Ok(false);
            }
            c.execute(
                "INSERT INTO leases (name, holder, until_secs) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_secs = excluded.until_secs",
                args![name, holder, now.saturating_add(secs)],
            )?;
            Ok(true)
        })
    }

    /// Gives up the lease `name` if `holder` holds it, for another to take at once.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                args![name, holder],
            )
        })?;
        Ok(())
    }

    // --- consent and the teaching library ---

    /// Runs `f` in one write transaction and appends the audit entries it collects in the
    /// same one: a change and its entries are written together or not at all, and what `f`
    /// read (a hold, the consent, whether the recording is still indexed) cannot change before
    /// it commits. An error from `f` rolls everything back.
    pub fn atomically<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&mut dyn Sql, &mut Vec<Event>) -> Result<T, E>,
    ) -> Result<T, E> {
        let (out, entries) = self.write(|c| {
            let mut events = Vec::new();
            let out = f(c, &mut events)?;
            let mut entries = Vec::with_capacity(events.len());
            for e in &events {
                entries.push(append_audit_in(c, e)?);
            }
            Ok::<_, E>((out, entries))
        })?;
        for e in &entries {
            log_entry(e);
        }
        Ok(out)
    }

    /// A recording's consent answers (all pending when none was recorded).
    pub fn consent_of(&self, device: &str, id: &str) -> Result<Consent, DbError> {
        self.with(|c| consent_in(c, device, id))
    }

    /// Records one consent answer (replacing the last one to that question).
    pub fn set_consent(
        &self,
        device: &str,
        id: &str,
        question: Question,
        r: &Recorded,
    ) -> Result<(), DbError> {
        self.with(|c| set_consent_in(c, device, id, question, r))
    }

    /// The teaching library's date for a recording, if it is in it.
    pub fn teaching_of(&self, device: &str, id: &str) -> Result<Option<String>, DbError> {
        self.with(|c| teaching_in(c, device, id))
    }

    /// Forgets a deleted recording: its row in the index and the sessions' right to its
    /// objects. Returns whether it was indexed.
    pub fn forget_recording(&self, device: &str, id: &str) -> Result<bool, DbError> {
        self.write(|c| {
            for table in ["opened", "consent", "teaching"] {
                c.execute(
                    &format!("DELETE FROM {table} WHERE device = $1 AND id = $2"),
                    args![device, id],
                )?;
            }
            let n = c.execute(
                "DELETE FROM recordings WHERE device = $1 AND id = $2",
                args![device, id],
            )?;
            Ok(n > 0)
        })
    }

    /// Notes that the session opened `device`/`id` (after its opening was audited).
    pub fn mark_opened(&self, token_sha256: &str, device: &str, id: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO opened (token_sha256, device, id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                args![token_sha256, device, id],
            )
        })?;
        Ok(())
    }

    /// Whether the session opened `device`/`id`.
    pub fn opened(&self, token_sha256: &str, device: &str, id: &str) -> Result<bool, DbError> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM opened WHERE token_sha256 = $1 AND device = $2 AND id = $3",
                args![token_sha256, device, id],
            )?
            .is_some())
        })
    }

    /// Ends a session.
    pub fn remove_session(&self, token_sha256: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE token_sha256 = $1",
                args![token_sha256],
            )
        })?;
        Ok(())
    }

    /// Deletes sessions past their idle or maximum age.
    pub fn expire_sessions(
        &self,
        now: i64,
        idle_secs: i64,
        max_secs: i64,
    ) -> Result<usize, DbError> {
        let n = self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE last_seen <= $1 OR created <= $2",
                args![now - idle_secs, now - max_secs],
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    // --- recordings index ---

    /// A recording's first object landed: indexed as `uploading` unless known.
    /// Returns whether the row is new.
    pub fn index_uploading(&self, device: &str, id: &str) -> Result<bool, DbError> {
        let n = self.with(|c| {
            c.execute(
                "INSERT INTO recordings (device, id, upload, first_seen_utc) VALUES ($1, $2, $3, $4) ON CONFLICT (device, id) DO NOTHING",
                args![device, id, Upload::Uploading.as_str(), now_utc()],
            )
        })?;
        Ok(n > 0)
    }

    /// A recording's manifest was accepted: indexed as `complete` with its fields.
    pub fn index_complete(&self, device: &str, id: &str, done: &Completed) -> Result<(), DbError> {
        let m = done.manifest;
        let status = m.status.as_str();
        let markers = serde_json::to_string(&m.markers).expect("markers serialize");
        self.write(|c| {
            c.execute(
                "INSERT INTO recordings (device, id, upload, first_seen_utc) VALUES ($1, $2, $3, $4) ON CONFLICT (device, id) DO NOTHING",
                args![device, id, Upload::Complete.as_str(), now_utc()],
            )?;
            c.execute(
                "UPDATE recordings SET upload = $14, status = $3, trigger_source = $4, stop_reason = $5, first_frame_utc = $6, trigger_utc = $7, stop_utc = $8, preroll_secs = $9, duration_secs = $10, markers = $11, signer = $12, recipient_key_id = $13 WHERE device = $1 AND id = $2",
                args![
                    device,
                    id,
                    status,
                    m.trigger,
                    m.stop_reason,
                    m.first_frame_utc,
                    m.trigger_utc,
                    m.stop_utc,
                    m.preroll_secs,
                    m.duration_secs,
                    markers,
                    done.signer,
                    m.recipient_key_id,
                    Upload::Complete.as_str()
                ],
            )?;
            Ok(())
        })
    }

    /// Every indexed (device, id, complete).
    pub fn indexed(&self) -> Result<Vec<(String, String, bool)>, DbError> {
        self.with(|c| {
            c.query("SELECT device, id, upload FROM recordings", &[])?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?, upload_of(r, 2)? == Upload::Complete)))
                .collect()
        })
    }

    /// The recipient key ids of complete recordings.
    pub fn recipient_key_ids(&self) -> Result<Vec<String>, DbError> {
        self.with(|c| {
            c.query(
                "SELECT DISTINCT recipient_key_id FROM recordings WHERE recipient_key_id IS NOT NULL",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
    }

    /// The recordings list, newest first (by trigger, or by arrival while uploading).
    /// At most [`MAX_LISTED`] + 1, so that the caller can tell the list was cut.
    pub fn recordings(&self, f: &Filter) -> Result<Vec<Summary>, DbError> {
        self.with(|c| {
            c.query(
                &format!(
                    "{SUMMARY}
                     WHERE (CAST($1 AS TEXT) IS NULL OR r.device = $1)
                       AND (CAST($2 AS TEXT) IS NULL OR r.trigger_utc >= $2)
                       AND (CAST($3 AS TEXT) IS NULL OR r.trigger_utc <= $3)
                     ORDER BY COALESCE(r.trigger_utc, r.first_seen_utc) DESC, r.device, r.id
                     LIMIT $4"
                ),
                args![f.device, f.since, f.until, MAX_LISTED as i64 + 1],
            )?
            .iter()
            .map(row_summary)
            .collect()
        })
    }

    /// The recordings of that id (one per device holding it).
    pub fn recordings_with_id(&self, id: &str) -> Result<Vec<Summary>, DbError> {
        self.with(|c| {
            c.query(
                &format!("{SUMMARY} WHERE r.id = $1 ORDER BY r.device"),
                args![id],
            )?
            .iter()
            .map(row_summary)
            .collect()
        })
    }

    // --- audit ---

    /// Appends an entry to the audit log, chained to the last one.
    pub fn append_audit(&self, e: &Event) -> Result<Entry, DbError> {
        self.atomically(|c, _| append_audit_in(c, e))
            .inspect(log_entry)
    }

    /// The whole audit log, in order.
    pub fn audit(&self) -> Result<Vec<Entry>, DbError> {
        self.with(|c| {
            c.query(&format!("{AUDIT} ORDER BY seq"), &[])?
                .iter()
                .map(row_entry)
                .collect()
        })
    }

    /// The entries `f` matches, newest first, at most `limit`.
    pub fn audit_matching(
        &self,
        f: &audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<Entry>, DbError> {
        self.with(|c| {
            c.query(
                &format!(
                    "{AUDIT}
                     WHERE (CAST($1 AS TEXT) IS NULL OR actor = $1)
                       AND (CAST($2 AS TEXT) IS NULL OR action = $2)
                       AND (CAST($3 AS TEXT) IS NULL OR recording = $3)
                       AND (CAST($4 AS TEXT) IS NULL OR utc >= $4)
                       AND (CAST($5 AS TEXT) IS NULL OR utc <= $5)
                     ORDER BY seq DESC LIMIT $6"
                ),
                args![
                    f.actor,
                    f.action,
                    f.recording,
                    f.since,
                    f.until,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
            )?
            .iter()
            .map(row_entry)
            .collect()
        })
    }

    /// Recomputes the chain: the head hash, or the first entry that does not match. Read in
    /// pieces, the lock let go between them: a long log does not stop sign-ins and uploads'
    /// index writes while it is checked.
    pub fn verify_audit(&self) -> Result<Result<String, audit::Broken>, DbError> {
        self.verify_audit_in_pieces(5000)
    }

    fn verify_audit_in_pieces(
        &self,
        piece_len: i64,
    ) -> Result<Result<String, audit::Broken>, DbError> {
        audit_chain(piece_len, |after| {
            self.with(|c| audit_piece(c, after, piece_len))
        })
    }

    /// Runs `f` on one consistent view of the database: a read transaction (SQLite's WAL
    /// snapshot, PostgreSQL's `REPEATABLE READ`), so that what it reads in several statements
    /// is what one moment held.
    fn snapshot<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
    ) -> Result<T, E> {
        match &self.backend {
            Backend::Lite(c) => {
                let c = lock(c);
                let tx = c.unchecked_transaction().map_err(DbError::from)?;
                let out = f(&mut Lite(&tx))?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
            Backend::Pg(pool) => {
                let mut c = pool.get();
                let mut tx = c
                    .client()?
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .map_err(DbError::from)?;
                let out = f(&mut Pg(&mut tx))?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
        }
    }
}

/// The audit entries after `after`, at most `len`.
fn audit_piece(c: &mut dyn Sql, after: i64, len: i64) -> Result<Vec<Entry>, DbError> {
    c.query(
        &format!("{AUDIT} WHERE seq > $1 ORDER BY seq LIMIT $2"),
        args![after, len],
    )?
    .iter()
    .map(row_entry)
    .collect()
}

/// Recomputes the chain from pieces of at most `piece_len` entries that `piece(after)` reads:
/// the head hash, or the first entry that does not match.
fn audit_chain(
    piece_len: i64,
    mut piece: impl FnMut(i64) -> Result<Vec<Entry>, DbError>,
) -> Result<Result<String, audit::Broken>, DbError> {
    let mut chain = audit::Chain::default();
    let mut after = i64::MIN;
    loop {
        let entries = piece(after)?;
        for e in &entries {
            if let Err(b) = chain.feed(e) {
                return Ok(Err(b));
            }
        }
        match entries.last() {
            Some(last) if entries.len() as i64 == piece_len => after = last.seq,
            _ => return Ok(Ok(chain.head)),
        }
    }
}

/// The tables [`Db::copy_into`] carries over, with their columns and order. Sessions, sign-in
/// failures and leases are left: they belong to the server that ran on the old database.
const CARRIED: [(&str, &str, &str); 8] = [
    (
        "reviewers",
        "name, department_key_id, created_utc, kdf, verifier, wrapped_key, imported_utc, roles",
        "name",
    ),
    (
        "recordings",
        "device, id, upload, first_seen_utc, status, trigger_source, stop_reason, first_frame_utc, trigger_utc, stop_utc, preroll_secs, duration_secs, markers, signer, recipient_key_id",
        "device, id",
    ),
    (
        "audit",
        "seq, utc, actor, action, recording, client, detail, prev, hash",
        "seq",
    ),
    ("secrets", "name, value", "name"),
    ("holds", "device, id, reason, utc", "device, id"),
    ("withdrawals", "device, id, utc", "device, id"),
    (
        "consent",
        "device, id, question, answer, recorded_by, utc, note, form_ref",
        "device, id, question",
    ),
    (
        "teaching",
        "device, id, until_utc, added_by, utc",
        "device, id",
    ),
];

/// Rows read from the old database at a time.
const COPY_PIECE: i64 = 2000;

/// What [`Db::copy_into`] carried over: rows per table, and the audit chain's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// (table, rows), in the order copied.
    pub rows: Vec<(&'static str, u64)>,
    /// The audit chain's head hash, recomputed on the new database (the old one's).
    pub audit_head: String,
}

/// The database's lock for the storage ([`crate::storage::Exclusive`]). On PostgreSQL a
/// session advisory lock on a pooled connection, in the two-key space (which never meets the
/// one-key write lock), held while `f` runs and released after; a replica that dies holding
/// it loses its session and the lock with it (its machine or network gone: once the server's
/// keepalive probes go unanswered, some 30 s). On SQLite there is one server, whose own locks
/// suffice.
impl crate::storage::Exclusive for Db {
    fn exclusively(&self, name: &str, f: &mut dyn FnMut()) -> Result<(), String> {
        let pool = match &self.backend {
            Backend::Lite(_) => {
                f();
                return Ok(());
            }
            Backend::Pg(pool) => pool,
        };
        use sha2::Digest;
        let h = sha2::Sha256::digest(name.as_bytes());
        let k1 = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let k2 = i32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let mut c = pool.get();
        let client = c.client().map_err(|e| e.to_string())?;
        client
            .execute("SELECT pg_advisory_lock($1, $2)", &[&k1, &k2])
            .map_err(|e| pg_message(&e))?;
        /// Releases the lock when `f` is done, or closes the session (which releases it) if
        /// that fails or `f` panicked.
        struct Unlock<'a>(&'a mut PgConn, i32, i32);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                let released = !std::thread::panicking()
                    && self.0.client.as_mut().is_some_and(|c| {
                        c.execute("SELECT pg_advisory_unlock($1, $2)", &[&self.1, &self.2])
                            .is_ok()
                    });
                if !released {
                    drop_client(self.0.client.take());
                }
            }
        }
        let _unlock = Unlock(&mut c, k1, k2);
        f();
        Ok(())
    }
}

impl Db {
    /// Copies everything but sessions, sign-in failures and leases of this SQLite database
    /// into the PostgreSQL database `to`, which must hold no data yet (just migrated): a
    /// unit's file into the database its replicas will share. This one is read in one
    /// snapshot; `to` is written in one transaction, all or nothing, in which the audit chain
    /// is recomputed and must end where it ends here. Stop the server on this database first.
    pub fn copy_into(&self, to: &Db) -> Result<Copied, DbError> {
        if !matches!(self.backend, Backend::Lite(_)) || !matches!(to.backend, Backend::Pg(_)) {
            return Err(DbError::CopyDirection);
        }
        self.snapshot(|src| Db::copy_from_snapshot(src, to))
    }

    fn copy_from_snapshot(src: &mut dyn Sql, to: &Db) -> Result<Copied, DbError> {
        let head = match audit_chain(COPY_PIECE, |after| audit_piece(src, after, COPY_PIECE))? {
            Ok(h) => h,
            Err(b) => {
                return Err(DbError::Corrupt(format!(
                    "audit log (it does not verify from entry {}): nothing copied",
                    b.seq
                )));
            }
        };
        to.write(|t| {
            for (table, _, _) in CARRIED {
                if t.query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])?
                    .is_some()
                {
                    return Err(DbError::NotEmpty(table.into()));
                }
            }
            let mut rows = Vec::new();
            for (table, columns, key) in CARRIED {
                let n = columns.split(',').count();
                let marks: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
                let insert = format!(
                    "INSERT INTO {table} ({columns}) VALUES ({})",
                    marks.join(", ")
                );
                let mut copied = 0u64;
                let mut offset = 0i64;
                loop {
                    let piece = src.query(
                        &format!("SELECT {columns} FROM {table} ORDER BY {key} LIMIT $1 OFFSET $2"),
                        args![COPY_PIECE, offset],
                    )?;
                    for r in &piece {
                        t.execute(&insert, &r.0)?;
                    }
                    copied += piece.len() as u64;
                    if (piece.len() as i64) < COPY_PIECE {
                        break;
                    }
                    offset += COPY_PIECE;
                }
                rows.push((table, copied));
            }
            // Checked before the commit: a copy that does not end where the source ends is
            // rolled back, not left behind to block a second attempt.
            match audit_chain(COPY_PIECE, |after| audit_piece(t, after, COPY_PIECE))? {
                Ok(h) if h == head => Ok(Copied {
                    rows,
                    audit_head: h,
                }),
                Ok(h) => Err(DbError::Corrupt(format!(
                    "audit log copied with head {h}, not {head}: nothing copied"
                ))),
                Err(b) => Err(DbError::Corrupt(format!(
                    "audit log copied, but it does not verify from entry {}: nothing copied",
                    b.seq
                ))),
            }
        })
    }
}

/// A mutex's guard; a panic while holding it leaves either database consistent (transactions
/// roll back), so a poisoned one is taken as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The columns of an audit entry ([`row_entry`] reads them in this order).
const AUDIT: &str =
    "SELECT seq, utc, actor, action, recording, client, detail, prev, hash FROM audit";

/// The columns of a reviewer ([`row_reviewer`] reads them in this order).
const REVIEWER: &str = "SELECT name, department_key_id, created_utc, kdf, verifier, wrapped_key, imported_utc, roles FROM reviewers";

/// Appends `e` to the audit log within the caller's write transaction.
fn append_audit_in(c: &mut dyn Sql, e: &Event) -> Result<Entry, DbError> {
    let last: Option<(i64, String)> = c
        .query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?
        .map(|r| Ok::<_, DbError>((r.get(0)?, r.get(1)?)))
        .transpose()?;
    let entry = Entry::next(last.as_ref().map(|(s, h)| (*s, h.as_str())), now_utc(), e);
    c.execute(
        "INSERT INTO audit (seq, utc, actor, action, recording, client, detail, prev, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        args![
            entry.seq,
            entry.utc,
            entry.actor,
            entry.action,
            entry.recording,
            entry.client,
            entry.detail,
            entry.prev,
            entry.hash
        ],
    )?;
    Ok(entry)
}

/// A copy of each entry's hash outside the database (the journal, and whatever the hospital
/// forwards it to): whoever can write the database can recompute the chain, but not the log
/// lines already written. Called once the entry is committed.
fn log_entry(entry: &Entry) {
    log::info!(
        seq = entry.seq,
        action = entry.action.as_str(),
        actor = crate::esc(&entry.actor).as_str(),
        recording = crate::esc(&entry.recording).as_str(),
        hash = entry.hash.as_str();
        "audit entry appended"
    );
}

fn row_entry(r: &Row) -> Result<Entry, DbError> {
    Ok(Entry {
        seq: r.get(0)?,
        utc: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        recording: r.get(4)?,
        client: r.get(5)?,
        detail: r.get(6)?,
        prev: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// Whether `device`/`id` is in the recordings index.
pub fn indexed_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<bool, DbError> {
    Ok(c.query_opt(
        "SELECT 1 FROM recordings WHERE device = $1 AND id = $2",
        args![device, id],
    )?
    .is_some())
}

/// The reason of the legal hold on `device`/`id`, if it is held.
pub fn hold_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<Option<String>, DbError> {
    c.query_opt(
        "SELECT reason FROM holds WHERE device = $1 AND id = $2",
        args![device, id],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Places a legal hold (or replaces its reason). Returns whether there was none.
pub fn hold_place_in(
    c: &mut dyn Sql,
    device: &str,
    id: &str,
    reason: &str,
) -> Result<bool, DbError> {
    let existed = hold_in(c, device, id)?.is_some();
    c.execute(
        "INSERT INTO holds (device, id, reason, utc) VALUES ($1, $2, $3, $4) ON CONFLICT (device, id) DO UPDATE SET reason = excluded.reason, utc = excluded.utc",
        args![device, id, reason, now_utc()],
    )?;
    Ok(!existed)
}

/// Releases a legal hold. Returns whether there was one.
pub fn release_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<bool, DbError> {
    let n = c.execute(
        "DELETE FROM holds WHERE device = $1 AND id = $2",
        args![device, id],
    )?;
    Ok(n > 0)
}

/// A recording's consent answers (all pending when none was recorded).
pub fn consent_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<Consent, DbError> {
    let mut out = Consent::default();
    for r in c.query(
        "SELECT question, answer, recorded_by, utc, note, form_ref FROM consent WHERE device = $1 AND id = $2",
        args![device, id],
    )? {
        let q: String = r.get(0)?;
        let q = Question::parse(&q).ok_or_else(|| unreadable(0, "a consent question"))?;
        *out.get_mut(q) = recorded(&r, 1)?;
    }
    Ok(out)
}

/// Records one consent answer (replacing the last one to that question).
pub fn set_consent_in(
    c: &mut dyn Sql,
    device: &str,
    id: &str,
    question: Question,
    r: &Recorded,
) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO consent (device, id, question, answer, recorded_by, utc, note, form_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (device, id, question) DO UPDATE SET answer = excluded.answer, recorded_by = excluded.recorded_by, utc = excluded.utc, note = excluded.note, form_ref = excluded.form_ref",
        args![
            device,
            id,
            question.as_str(),
            r.answer.as_str(),
            r.by.as_deref().unwrap_or(""),
            r.utc.as_deref().unwrap_or(""),
            r.note,
            r.form_ref
        ],
    )?;
    Ok(())
}

/// The teaching library's date for a recording, if it is in it.
pub fn teaching_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<Option<String>, DbError> {
    c.query_opt(
        "SELECT until_utc FROM teaching WHERE device = $1 AND id = $2",
        args![device, id],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Places a recording in the teaching library until `until_utc` (or moves its date).
pub fn set_teaching_in(
    c: &mut dyn Sql,
    device: &str,
    id: &str,
    until_utc: &str,
    by: &str,
) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO teaching (device, id, until_utc, added_by, utc) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (device, id) DO UPDATE SET until_utc = excluded.until_utc, added_by = excluded.added_by, utc = excluded.utc",
        args![device, id, until_utc, by, now_utc()],
    )?;
    Ok(())
}

/// Notes that `device`/`id` is withdrawn; `false` if a withdrawal was noted before (and
/// audited with it).
pub fn note_withdrawal_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<bool, DbError> {
    let n = c.execute(
        "INSERT INTO withdrawals (device, id, utc) VALUES ($1, $2, $3) ON CONFLICT (device, id) DO NOTHING",
        args![device, id, now_utc()],
    )?;
    Ok(n > 0)
}

/// Takes a recording out of the teaching library. Returns whether it was in it.
pub fn remove_teaching_in(c: &mut dyn Sql, device: &str, id: &str) -> Result<bool, DbError> {
    let n = c.execute(
        "DELETE FROM teaching WHERE device = $1 AND id = $2",
        args![device, id],
    )?;
    Ok(n > 0)
}

fn reviewer_in(c: &mut dyn Sql, name: &str) -> Result<Option<Reviewer>, DbError> {
    c.query_opt(&format!("{REVIEWER} WHERE name = $1"), args![name])?
        .map(|r| check_reviewer(row_reviewer(&r)?))
        .transpose()
}

fn name_failures_in(c: &mut dyn Sql, name: &str) -> Result<(u32, i64), DbError> {
    Ok(c.query_opt(
        "SELECT failures, last_failure FROM name_failures WHERE name = $1",
        args![name],
    )?
    .map(|r| Ok::<_, DbError>((r.get::<i64>(0)?.clamp(0, u32::MAX as i64) as u32, r.get(1)?)))
    .transpose()?
    .unwrap_or((0, 0)))
}

fn address_failures_in(c: &mut dyn Sql, address: &str, since: i64) -> Result<Vec<i64>, DbError> {
    c.query(
        "SELECT at FROM address_failures WHERE client = $1 AND at >= $2",
        args![address, since],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn add_failure_in(c: &mut dyn Sql, name: &str, address: &str, now: i64) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO name_failures (name, failures, last_failure) VALUES ($1, 1, $2)
         ON CONFLICT (name) DO UPDATE SET failures = name_failures.failures + 1, last_failure = $2",
        args![name, now],
    )?;
    c.execute(
        "INSERT INTO address_failures (client, at) VALUES ($1, $2)",
        args![address, now],
    )?;
    // Nothing older than the longest window matters: the tables stay small.
    c.execute(
        "DELETE FROM address_failures WHERE at < $1",
        args![now - crate::ratelimit::ADDRESS_WINDOW_SECS],
    )?;
    c.execute(
        "DELETE FROM name_failures WHERE last_failure < $1",
        args![now - 86_400],
    )?;
    Ok(())
}

type ReviewerRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn row_reviewer(r: &Row) -> Result<ReviewerRow, DbError> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// Roles as the `roles` column holds them: their names, comma-separated.
fn roles_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The roles of a `roles` column; `None` if any name is unknown.
fn roles_of(text: &str) -> Option<Vec<Role>> {
    text.split(',').map(Role::parse).collect()
}

/// Rebuilds the file from a row and checks it as an imported file is checked: a row edited by
/// hand into something unusable is refused, not used.
fn check_reviewer(row: ReviewerRow) -> Result<Reviewer, DbError> {
    let (name, department_key_id, created_utc, kdf, verifier, wrapped_key, imported_utc, roles) =
        row;
    let corrupt = || DbError::Corrupt(format!("reviewer {}", crate::esc(&name)));
    let kdf: Kdf = serde_json::from_str(&kdf).map_err(|_| corrupt())?;
    let file = ReviewerFile {
        format: neoflix_format::reviewer::FORMAT.into(),
        name: ReviewerName::parse(&name).map_err(|_| corrupt())?,
        department_key_id,
        created_utc,
        roles: roles_of(&roles).ok_or_else(corrupt)?,
        kdf,
        verifier,
        wrapped_key: (!wrapped_key.is_empty()).then_some(wrapped_key),
    };
    file.check().map_err(|_| corrupt())?;
    Ok(Reviewer { file, imported_utc })
}

/// A column the index wrote that does not read back: the database was changed by hand.
fn unreadable(column: usize, what: &str) -> DbError {
    DbError::Corrupt(format!(
        "column {column}, not {what}: the recordings index was changed outside neoflix-ingest"
    ))
}

fn upload_of(r: &Row, column: usize) -> Result<Upload, DbError> {
    let s: String = r.get(column)?;
    Upload::parse(&s).ok_or_else(|| unreadable(column, "an upload state"))
}

fn row_summary(r: &Row) -> Result<Summary, DbError> {
    let status = match r.get::<Option<String>>(3)? {
        None => None,
        Some(s) => Some(
            neoflix_format::Status::parse(&s).ok_or_else(|| unreadable(3, "a recording status"))?,
        ),
    };
    let markers = match r.get::<Option<String>>(11)? {
        None => Vec::new(),
        Some(m) => serde_json::from_str(&m).map_err(|_| unreadable(11, "a list of markers"))?,
    };
    Ok(Summary {
        id: r.get(0)?,
        device: r.get(1)?,
        upload: upload_of(r, 2)?,
        status,
        trigger: r.get(4)?,
        stop_reason: r.get(5)?,
        first_frame_utc: r.get(6)?,
        trigger_utc: r.get(7)?,
        stop_utc: r.get(8)?,
        preroll_secs: r.get(9)?,
        duration_secs: r.get(10)?,
        markers,
        signer: r.get(12)?,
        received_utc: r.get(13)?,
        consent: Consent {
            filmed: recorded(r, 16)?,
            review: recorded(r, 21)?,
            use_: recorded(r, 26)?,
        },
        lifecycle: Lifecycle {
            // Filled in by the caller, who knows the policy and the time.
            delete_after_utc: None,
            held: r.get(14)?,
            teaching_until_utc: r.get(15)?,
        },
    })
}

/// One consent answer from five columns from `at` on; no row is `pending`, never recorded.
fn recorded(r: &Row, at: usize) -> Result<Recorded, DbError> {
    let Some(answer) = r.get::<Option<String>>(at)? else {
        return Ok(Recorded::default());
    };
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Recorded {
        answer: Answer::parse(&answer).ok_or_else(|| unreadable(at, "a consent answer"))?,
        by: nonempty(r.get(at + 1)?),
        utc: nonempty(r.get(at + 2)?),
        note: r.get(at + 3)?,
        form_ref: r.get(at + 4)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use neoflix_format::reviewer::{KEY_LEN, SALT_LEN, WRAPPED_LEN, verifier_of};

    /// A reviewer whose auth key is `[auth; 32]`.
    pub(crate) fn reviewer(name: &str, auth: u8) -> ReviewerFile {
        ReviewerFile {
            format: neoflix_format::reviewer::FORMAT.into(),
            name: ReviewerName::parse(name).unwrap(),
            department_key_id: "0123456789abcdef".into(),
            created_utc: "2026-11-28T10:15:02.120Z".into(),
            kdf: Kdf::recommended(&[7; SALT_LEN]),
            roles: vec![Role::Reviewer],
            verifier: hex::encode(verifier_of(&[auth; KEY_LEN])),
            wrapped_key: Some(base64::engine::general_purpose::STANDARD.encode([2; WRAPPED_LEN])),
        }
    }

    fn db() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("sub/neoflix.db")).unwrap();
        (d, db)
    }

    #[test]
    fn a_copy_carries_every_table_but_those_left_on_purpose() {
        let (_d, db) = db();
        let c = db.conn();
        let mut tables: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Sessions and their rights, sign-in counts and leases belong to the old server.
        let left = [
            "address_failures",
            "leases",
            "name_failures",
            "opened",
            "sessions",
        ];
        let mut accounted: Vec<String> = CARRIED
            .iter()
            .map(|(t, _, _)| t.to_string())
            .chain(left.iter().map(|t| t.to_string()))
            .collect();
        tables.sort();
        accounted.sort();
        assert_eq!(
            tables, accounted,
            "a new table: carry it in CARRIED, or leave it here"
        );
    }

    #[test]
    fn the_file_is_private_and_reopens_at_the_same_schema() {
        use std::os::unix::fs::PermissionsExt;
        let (d, db) = db();
        let p = d.path().join("sub/neoflix.db");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let secret = db.server_secret().unwrap();
        drop(db);
        let again = Db::open(&p).unwrap();
        assert_eq!(again.server_secret().unwrap(), secret, "stable");
    }

    #[test]
    fn consent_and_the_teaching_library_show_in_the_list_and_go_with_the_recording() {
        let (_d, db) = db();
        db.index_uploading("room-1", "r1").unwrap();
        let listed = |db: &Db| db.recordings_with_id("r1").unwrap();
        assert_eq!(listed(&db)[0].consent, Consent::default(), "pending");
        let granted = Recorded {
            answer: Answer::Granted,
            by: Some("dr.chair".into()),
            utc: Some("2026-11-29T10:00:00.000Z".into()),
            note: "mother, by phone".into(),
            form_ref: "CF-2026-114".into(),
        };
        db.set_consent("room-1", "r1", Question::Use, &granted)
            .unwrap();
        db.set_consent("room-1", "r1", Question::Review, &granted)
            .unwrap();
        set_teaching_in(
            &mut Lite(&db.conn()),
            "room-1",
            "r1",
            "2031-01-01T00:00:00.000Z",
            "dr.chair",
        )
        .unwrap();
        let s = &listed(&db)[0];
        assert_eq!(s.consent.use_, granted);
        assert_eq!(s.consent.review, granted);
        assert_eq!(s.consent.filmed.answer, Answer::Pending);
        assert_eq!(
            s.lifecycle.teaching_until_utc.as_deref(),
            Some("2031-01-01T00:00:00.000Z")
        );
        assert!(!s.lifecycle.held);
        assert_eq!(db.consent_of("room-1", "r1").unwrap(), s.consent);
        let refused = Recorded {
            answer: Answer::Refused,
            ..granted.clone()
        };
        db.set_consent("room-1", "r1", Question::Filmed, &refused)
            .unwrap();
        let r = &db.retained().unwrap()[0];
        assert!(r.refused);
        assert_eq!(
            r.teaching_until_utc.as_deref(),
            Some("2031-01-01T00:00:00.000Z")
        );
        db.forget_recording("room-1", "r1").unwrap();
        assert_eq!(db.consent_of("room-1", "r1").unwrap(), Consent::default());
        assert_eq!(db.teaching_of("room-1", "r1").unwrap(), None);
    }

    #[test]
    fn roles_are_stored_with_the_reviewer_and_read_by_every_session() {
        let (_d, db) = db();
        let mut officer = reviewer("olga", 3);
        officer.roles = vec![Role::PrivacyOfficer];
        officer.wrapped_key = None;
        assert_eq!(db.add_reviewer(&officer, false).unwrap(), Added::New);
        let back = db.reviewer("olga").unwrap().unwrap();
        assert_eq!(back.file, officer, "no key, the officer's role");
        db.add_session("t", "c", "olga", 100).unwrap();
        assert_eq!(
            db.session("t", 100, 600, 3600).unwrap().unwrap().roles,
            vec![Role::PrivacyOfficer]
        );
        let mut chair = reviewer("olga", 3);
        chair.roles = vec![Role::Chair, Role::PrivacyOfficer];
        assert_eq!(
            db.add_reviewer(&chair, true).unwrap(),
            Added::Replaced(vec![Role::PrivacyOfficer])
        );
        db.add_session("t2", "c", "olga", 100).unwrap();
        assert_eq!(
            db.session("t2", 100, 600, 3600).unwrap().unwrap().roles,
            vec![Role::Chair, Role::PrivacyOfficer]
        );
    }

    #[test]
    fn reviewers_are_added_refused_twice_replaced_and_removed_with_their_sessions() {
        let (_d, db) = db();
        assert_eq!(
            db.add_reviewer(&reviewer("alice", 1), false).unwrap(),
            Added::New
        );
        assert!(matches!(
            db.add_reviewer(&reviewer("alice", 2), false),
            Err(DbError::ReviewerExists(_))
        ));
        db.add_session("t1", "c1", "alice", 100).unwrap();
        assert_eq!(
            db.add_reviewer(&reviewer("alice", 2), true).unwrap(),
            Added::Replaced(vec![Role::Reviewer])
        );
        assert!(
            db.session("t1", 101, 1800, 28800).unwrap().is_none(),
            "replaced: sessions end"
        );
        assert!(
            db.reviewer("alice")
                .unwrap()
                .unwrap()
                .file
                .check_auth(&[2; 32])
        );
        db.add_session("t2", "c2", "alice", 100).unwrap();
        assert!(db.session("t2", 101, 1800, 28800).unwrap().is_some());
        assert!(db.remove_reviewer("alice").unwrap());
        assert!(!db.remove_reviewer("alice").unwrap());
        assert!(db.session("t2", 102, 1800, 28800).unwrap().is_none());
        assert!(db.reviewers().unwrap().is_empty());
    }

    #[test]
    fn the_idle_clock_moves_once_a_minute_and_still_expires_sessions() {
        let (_d, db) = db();
        db.add_reviewer(&reviewer("carol", 1), false).unwrap();
        db.add_session("t", "c", "carol", 0).unwrap();
        let seen = |db: &Db| -> i64 {
            db.conn()
                .query_row("SELECT last_seen FROM sessions", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            db.session("t", 30, 100, 28800).unwrap().unwrap().last_seen,
            0
        );
        assert_eq!(seen(&db), 0, "no write within the minute");
        assert_eq!(
            db.session("t", 60, 100, 28800).unwrap().unwrap().last_seen,
            60
        );
        assert_eq!(seen(&db), 60);
        assert!(
            db.session("t", 160, 100, 28800).unwrap().is_none(),
            "idle 100 s"
        );
    }

    #[test]
    fn a_list_stops_after_its_limit_and_says_so_by_one_more() {
        let (_d, db) = db();
        for i in 0..MAX_LISTED + 5 {
            db.index_uploading("room-1", &format!("r{i:05}")).unwrap();
        }
        let all = db
            .recordings(&Filter {
                device: None,
                since: None,
                until: None,
            })
            .unwrap();
        assert_eq!(all.len(), MAX_LISTED + 1);
    }

    #[test]
    fn a_row_changed_by_hand_is_refused_naming_what_it_is_not() {
        let (_d, db) = db();
        db.index_uploading("room-1", "r1").unwrap();
        let all = Filter::default();
        assert_eq!(db.recordings(&all).unwrap()[0].upload, Upload::Uploading);
        for (set, what) in [
            ("upload = 'done'", "not an upload state"),
            (
                "upload = 'complete', status = 'fine'",
                "not a recording status",
            ),
            (
                "status = 'complete', markers = '{'",
                "not a list of markers",
            ),
        ] {
            db.conn()
                .execute_batch(&format!("UPDATE recordings SET {set}"))
                .unwrap();
            let err = db.recordings(&all).unwrap_err().to_string();
            assert!(err.contains(what), "{set}: {err}");
        }
    }

    #[test]
    fn what_a_session_opened_is_its_own_and_goes_with_it() {
        let (_d, db) = db();
        db.add_reviewer(&reviewer("bob", 1), false).unwrap();
        db.add_session("t", "c", "bob", 0).unwrap();
        db.add_session("u", "c", "bob", 0).unwrap();
        assert!(!db.opened("t", "room-1", "r1").unwrap());
        db.mark_opened("t", "room-1", "r1").unwrap();
        db.mark_opened("t", "room-1", "r1").unwrap();
        assert!(db.opened("t", "room-1", "r1").unwrap());
        assert!(!db.opened("t", "room-2", "r1").unwrap(), "another device's");
        assert!(
            !db.opened("u", "room-1", "r1").unwrap(),
            "another session's"
        );
        db.remove_session("t").unwrap();
        assert!(!db.opened("t", "room-1", "r1").unwrap());
        let rows: i64 = db
            .conn()
            .query_row("SELECT COUNT(*) FROM opened", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "gone with the session");
        assert!(
            db.mark_opened("gone", "room-1", "r1").is_err(),
            "no session"
        );
    }

    #[test]
    fn a_version_1_database_is_migrated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v1.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        drop(c);
        let db = Db::open(&p).unwrap();
        db.add_reviewer(&reviewer("bob", 1), false).unwrap();
        db.add_session("t", "c", "bob", 0).unwrap();
        db.mark_opened("t", "room-1", "r1").unwrap();
        drop(db);
        assert!(Db::open(&p).unwrap().opened("t", "room-1", "r1").unwrap());
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let (_d, db) = db();
        db.add_reviewer(&reviewer("bob", 1), false).unwrap();
        db.add_session("t", "c", "bob", 0).unwrap();
        assert!(db.session("t", 1799, 1800, 3000).unwrap().is_some());
        assert!(db.session("t", 2999, 1800, 3000).unwrap().is_some());
        assert!(
            db.session("t", 3000, 1800, 3000).unwrap().is_none(),
            "max age"
        );
        db.add_session("u", "c", "bob", 0).unwrap();
        assert!(db.session("u", 1800, 1800, 3000).unwrap().is_none(), "idle");
    }

    #[test]
    fn the_audit_table_refuses_update_and_delete_and_chains() {
        let (_d, db) = db();
        for actor in ["a", "b"] {
            db.append_audit(&Event {
                actor: actor.into(),
                action: audit::Action::SignIn,
                recording: String::new(),
                client: "cli".into(),
                detail: serde_json::json!({}),
            })
            .unwrap();
        }
        let c = db.conn();
        assert!(c.execute("UPDATE audit SET actor = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM audit", []).is_err());
        drop(c);
        let head = db.verify_audit().unwrap().unwrap();
        assert_eq!(head, db.audit().unwrap()[1].hash);
    }

    #[test]
    fn the_chain_read_in_pieces_is_the_chain_read_whole() {
        let (_d, db) = db();
        for n in 0..7 {
            db.append_audit(&Event {
                actor: format!("a{n}"),
                action: audit::Action::SignIn,
                recording: String::new(),
                client: "cli".into(),
                detail: serde_json::json!({}),
            })
            .unwrap();
        }
        let whole = audit::verify(&db.audit().unwrap());
        for piece in [1, 2, 3, 7, 8] {
            assert_eq!(db.verify_audit_in_pieces(piece).unwrap(), whole, "{piece}");
        }
        let c = db.conn();
        c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
        c.execute("UPDATE audit SET actor = 'x' WHERE seq = 5", [])
            .unwrap();
        drop(c);
        for piece in [1, 2, 4, 5, 100] {
            assert_eq!(
                db.verify_audit_in_pieces(piece).unwrap().unwrap_err().seq,
                5,
                "{piece}"
            );
        }
    }

    #[test]
    fn failures_count_per_name_and_address_and_clear() {
        let (_d, db) = db();
        for t in 0..3 {
            db.add_failure("eve", "10.0.0.1", 1000 + t).unwrap();
        }
        assert_eq!(db.name_failures("eve").unwrap(), (3, 1002));
        assert_eq!(db.address_failures("10.0.0.1", 0).unwrap().len(), 3);
        db.clear_failures("eve").unwrap();
        assert_eq!(db.name_failures("eve").unwrap(), (0, 0));
    }
}
