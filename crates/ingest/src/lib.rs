//! `neoflix-ingest`, the department server: receives sealed recordings over mutual TLS.
//!
//! Every connection must present a client certificate issued by a configured CA and not revoked
//! by a configured CRL; the device id is the certificate's common name, never anything in the
//! request. A device reads and writes only below `<storage>/<device>/`. Objects (sealed init
//! segments, fragments and their key records) arrive as idempotent PUTs, streamed to disk with a
//! size limit and a SHA-256 digest check, fsynced and linked into place without overwriting; the
//! manifest PUT checks every object and the hash chain and then makes the recording complete by
//! writing `manifest.json` atomically, answering with a receipt. The server never decrypts and
//! never holds the department's secret key. The protocol is specified in
//! `docs/upload-protocol.md`.
//!
//! With `[review]`, a second listener serves people over HTTPS: the review page, its JSON API,
//! sign-in with a passphrase, an append-only hash-chained audit log (`docs/review.md`). The
//! server stores sealed objects and wrapped keys; it cannot open either.
//!
//! Layout: [`config`] the server's config, [`tls`] the mTLS acceptor, [`storage`] where
//! recordings are kept (a filesystem tree or an S3-compatible bucket), [`http`] the protocol's
//! routes; [`db`] the database (reviewers, sessions, recordings index, audit), [`audit`] the
//! audit chain, [`ratelimit`] the sign-in limits,
//! [`index`] keeping the recordings index in step with storage, [`review`] the review listener,
//! [`fleet`] the boxes' MQTT status for the fleet tiles.
#![deny(missing_docs)]

pub mod admin;
pub mod audit;
pub mod config;
pub mod custody;
pub mod db;
pub mod fleet;
pub mod http;
pub mod index;
pub mod lifecycle;
pub mod limits;
pub mod ratelimit;
pub mod retention;
pub mod review;
pub mod storage;
pub mod tls;

use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use config::IngestConfig;

/// A refused connection's request head must arrive within this: the 503 answers a request, so
/// it waits for one, but not for long, since the connection holds a handshake slot meanwhile.
const REFUSAL_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// A refused connection is closed after this at the latest, answered or not (its 503 is a few
/// hundred bytes: writing it never waits on the client's window).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest read buffer of one connection.
const READ_BUFFER: usize = 64 * 1024;
/// How long, and for how many bytes, a closed connection's unread input is drained (see
/// [`linger`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 64 << 20;

/// An outside string made safe for one log line: control characters (a newline that would
/// start a forged line), quotes, backslashes and everything outside printable ASCII are escaped
/// the way Rust escapes them, so what the log shows is unambiguous and on one line.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_graphic() && c != '\\' && c != '"' || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// Binds the configured address; returns the listener (tests bind port 0 and read it back).
pub async fn bind(cfg: &IngestConfig) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))
}

/// The server's signing identity, the `[tls]` certificate and key: it signs receipts and
/// withdrawal notices, which the boxes check against their upload CA.
pub fn server_identity(cfg: &IngestConfig) -> anyhow::Result<neoflix_format::SigningIdentity> {
    use anyhow::Context as _;
    let cert = neoflix_logging::read_small_file(&cfg.tls.cert, 1 << 20)
        .with_context(|| format!("tls.cert {}", cfg.tls.cert.display()))?;
    let key = neoflix_logging::read_small_file(&cfg.tls.key, 1 << 20)
        .with_context(|| format!("tls.key {}", cfg.tls.key.display()))?;
    neoflix_format::SigningIdentity::from_pem(cert.as_bytes(), key.as_bytes()).with_context(|| {
        format!(
            "tls.cert {} / tls.key {}: the server signs receipts and withdrawal notices with them",
            cfg.tls.cert.display(),
            cfg.tls.key.display()
        )
    })
}

/// Applies retention a minute after the start (once the index has caught up with the
/// storage), then every [`retention::EVERY`], until `stop`. Of several replicas on one
/// database, the one holding the `retention` lease applies it; another takes the lease over
/// once it has run out (two rounds after its holder stopped renewing it), or at its next
/// round after the holder stopped cleanly. A replica is named by its host and listen address,
/// so one restarted after a crash renews its own lease instead of waiting for it.
async fn apply_retention(
    parts: Arc<lifecycle::Shared>,
    keep_days: u32,
    holder: String,
    mut stop: watch::Receiver<bool>,
) {
    let lease_secs = 2 * retention::EVERY.as_secs() as i64;
    let mut wait = Duration::from_secs(60);
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    log::info!(holder = esc(&holder).as_str(); "retention: this replica's name for its lease");
    loop {
        tokio::select! {
            _ = stop.changed() => {
                if !held.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let (parts, holder) = (parts.clone(), holder.clone());
                let released =
                    tokio::task::spawn_blocking(move || parts.db.release_lease("retention", &holder)).await;
                if let Ok(Err(e)) = released {
                    log::warn!(error = esc(&e.to_string()).as_str(); "retention: the lease was not released; another replica takes it over when it runs out");
                }
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        wait = retention::EVERY;
        let parts = parts.clone();
        let holder = holder.clone();
        let holding = held.clone();
        let done = tokio::task::spawn_blocking(move || {
            let taken = parts
                .db
                .take_lease("retention", &holder, db::now_secs(), lease_secs)
                .map_err(retention::RetentionError::from)?;
            holding.store(taken, std::sync::atomic::Ordering::Relaxed);
            if !taken {
                log::info!("retention: applied by another replica of this database");
                return Ok(Vec::new());
            }
            retention::purge(
                &parts.keeper(),
                keep_days,
                std::time::SystemTime::now(),
                false,
                lifecycle::Who {
                    actor: "retention",
                    client: "server",
                },
            )
        })
        .await;
        match done {
            Ok(Ok(list)) => {
                for p in list {
                    let (device, id) = (esc(&p.device), esc(&p.id));
                    match p.outcome {
                        Ok(s) => {
                            let s = s.unwrap_or_default();
                            log::info!(device = device.as_str(), recording = id.as_str(), why = p.why().as_str(), key_records = s.key_records, other_files = s.other_files; "retention: recording deleted");
                        }
                        Err(ref e) => {
                            log::error!(device = device.as_str(), recording = id.as_str(), why = p.why().as_str(), error = esc(e).as_str(); "retention: a recording past its date could not be deleted: retried within the hour");
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                log::error!(error = esc(&format!("{e:#}")).as_str(); "retention could not be applied: retried within the hour");
            }
            Err(e) => log::error!(error = esc(&e.to_string()).as_str(); "retention task failed"),
        }
    }
}

/// Waits until the object store answers and has passed [`storage::S3Storage::probe`] (it
/// refuses a body that is not the one announced, keeps no old versions, and lets the key
/// write, read, list and delete): `false` if `shutdown` came first, an error where no retry
/// mends what the probe found.
async fn wait_for_store(
    store: &Arc<storage::Storage>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<bool> {
    if !matches!(**store, storage::Storage::S3(_)) {
        return Ok(true);
    }
    let mut again = Duration::from_secs(2);
    loop {
        let s = store.clone();
        let probed = tokio::task::spawn_blocking(move || match &*s {
            storage::Storage::S3(s3) => s3.probe(),
            storage::Storage::Fs(_) => Ok(Ok(())),
        })
        .await?;
        match probed {
            Ok(Ok(())) => {
                log::info!(storage = esc(&store.place()).as_str(); "object store checked: it refuses a body that is not the one announced, and the key may write, read, list and delete");
                return Ok(true);
            }
            Ok(Err(fatal)) => anyhow::bail!("[storage]: {fatal}"),
            Err(e) => {
                log::error!(storage = esc(&store.place()).as_str(), error = esc(&e.to_string()).as_str(), retry_secs = again.as_secs(); "the object store cannot be used yet; trying again");
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(false),
                    _ = tokio::time::sleep(again) => {}
                }
                again = (again * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Serves until `shutdown` completes, then lets open requests finish.
pub async fn run(
    cfg: IngestConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    tokio::pin!(shutdown);
    let tls = tls::Reloading::new(&cfg)?;
    let identity = Arc::new(server_identity(&cfg)?);
    let custody = Arc::new(custody::Custody::new(tls.clone(), server_identity(&cfg)?));
    let store = Arc::new(storage::Storage::configured(&cfg.storage, true)?);
    store.pace_uploads(
        cfg.limits.min_bytes_per_sec,
        Duration::from_secs(cfg.limits.rate_grace_secs),
    );
    if !wait_for_store(&store, &mut shutdown).await? {
        return Ok(());
    }
    if cfg.retention.is_none() {
        log::warn!(
            "no [retention] in the config: recordings are kept until deleted by hand (neoflix-ingest withdraw)"
        );
    }
    let mut again = Duration::from_secs(2);
    let marked = loop {
        let finishing = store.clone();
        match tokio::task::spawn_blocking(move || finishing.finish_deletions()).await? {
            Ok(m) => break m,
            // An object store that fails for a moment (it just answered the probe) is waited
            // for, as at the probe; a directory that cannot be read is the administrator's.
            Err(e @ storage::StorageError::Store(_)) => {
                log::error!(storage = esc(&store.place()).as_str(), error = esc(&e.to_string()).as_str(), retry_secs = again.as_secs(); "the withdrawn and deleted recordings cannot be listed yet; trying again");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(again) => {}
                }
                again = (again * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e).context("listing the withdrawn and deleted recordings"),
        }
    };
    for f in &marked {
        let (device, id) = (esc(&f.device), esc(&f.id));
        match &f.outcome {
            Ok(None) => {}
            Ok(Some(s)) => {
                log::warn!(device = device.as_str(), recording = id.as_str(), key_records = s.key_records, other_files = s.other_files; "a deletion interrupted by a crash was finished")
            }
            Err(e) => {
                log::error!(device = device.as_str(), recording = id.as_str(), error = esc(&e.to_string()).as_str(); "a deletion interrupted by a crash cannot be finished: the next start tries again")
            }
        }
    }
    // Two pools: one for connections not yet admitted (in their handshake, or being refused)
    // and one for admitted connections. A connection holds exactly one slot at a time, and
    // only an authenticated device within its own limit ever takes one of `slots`, so hosts
    // without a certificate and devices over their limit cannot crowd out the others.
    let handshakes = Arc::new(Semaphore::new(cfg.limits.max_handshakes));
    let handshake_timeout = Duration::from_secs(cfg.limits.handshake_timeout_secs);
    let slots = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let per_device = limits::DeviceSlots::new(cfg.limits.max_connections_per_device);
    let budget = limits::Budget::new(cfg.limits.max_buffered_bytes);
    let rate = http::RateLimit {
        min_bytes_per_sec: cfg.limits.min_bytes_per_sec,
        grace: Duration::from_secs(cfg.limits.rate_grace_secs),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // Tasks with something to do at the stop (give the retention lease back), awaited then.
    let mut finishing_tasks = Vec::new();
    let kept = if cfg.uses_database() {
        use anyhow::Context as _;
        // PostgreSQL may come up after this server (the same machine booting, a database
        // failing over): waited for, saying why, rather than exiting until systemd gives up.
        let mut again = Duration::from_secs(2);
        let db = loop {
            let at = cfg.database.clone();
            match tokio::task::spawn_blocking(move || db::Db::open_configured(&at))
                .await
                .context("opening the database")?
            {
                Ok(db) => break db,
                Err(e @ (db::DbError::Pg(_) | db::DbError::Unreachable { .. })) => {
                    log::error!(error = esc(&e.to_string()).as_str(), retry_secs = again.as_secs(); "database: PostgreSQL cannot be opened; trying again");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(again) => {}
                    }
                    again = (again * 2).min(Duration::from_secs(60));
                }
                Err(e) => {
                    return Err(e).context("[database]: the server keeps reviewers, sessions, the recordings index and the audit log there");
                }
            }
        };
        log::info!(database = esc(db.place()).as_str(); "database open");
        let db = Arc::new(db);
        store.share_lock(db.clone());
        let forgetting = db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), db::DbError> {
            for f in &marked {
                forgetting.forget_recording(&f.device, &f.id)?;
            }
            Ok(())
        })
        .await?
        .context("removing withdrawn recordings from the index")?;
        tokio::spawn(index::scan_at_start(db.clone(), store.clone()));
        let parts = Arc::new(lifecycle::Shared {
            store: store.clone(),
            db: db.clone(),
            identity: identity.clone(),
        });
        // A refusal whose withdrawal a crash interrupted is finished before anyone can ask.
        let finishing = parts.clone();
        let refusals = tokio::task::spawn_blocking(move || {
            finishing.keeper().finish_refusals(
                lifecycle::Who {
                    actor: "server",
                    client: "server",
                },
                std::time::SystemTime::now(),
            )
        })
        .await?
        .context("withdrawing recordings whose consent was refused")?;
        for f in refusals {
            let (device, id) = (esc(&f.device), esc(&f.id));
            match f.outcome {
                Ok(_) => {
                    log::warn!(device = device.as_str(), recording = id.as_str(); "a recording whose consent was refused was withdrawn at start")
                }
                Err(e) => {
                    log::error!(device = device.as_str(), recording = id.as_str(), error = esc(&e).as_str(); "a recording whose consent was refused cannot be withdrawn: the next start tries again")
                }
            }
        }
        if let Some(r) = cfg.retention {
            let host = tokio::fs::read_to_string("/proc/sys/kernel/hostname")
                .await
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            finishing_tasks.push(tokio::spawn(apply_retention(
                parts.clone(),
                r.keep_days,
                format!("{host} {}", cfg.listen),
                stop_rx.clone(),
            )));
        }
        Some((db, parts))
    } else {
        None
    };
    let fleet = cfg.mqtt.clone().map(|m| {
        let view = Arc::new(fleet::FleetView::default());
        tokio::spawn(fleet::run(m, view.clone(), stop_rx.clone()));
        view
    });
    let index = kept.as_ref().map(|(db, _)| db.clone());
    if let (Some(r), Some((db, parts))) = (&cfg.review, &kept) {
        let prepared = review::prepare(
            r,
            db.clone(),
            cfg.storage.max_object_bytes,
            limits::Budget::new(cfg.limits.max_buffered_bytes),
            fleet.clone(),
            review::Keeping {
                parts: parts.clone(),
                keep_days: cfg.retention.map(|r| r.keep_days),
                consent: cfg.consent,
            },
        )
        .await?;
        tokio::spawn(review::serve(prepared, stop_rx.clone()));
    }
    tokio::spawn(tls.clone().watch(stop_rx.clone()));
    log::info!(listen = cfg.listen.to_string().as_str(), storage = esc(&store.place()).as_str(); "neoflix-ingest listening");
    loop {
        // Accepting only with a handshake slot in hand leaves further connections in the
        // kernel's accept queue rather than in memory.
        let handshake = tokio::select! {
            _ = &mut shutdown => break,
            p = handshakes.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("accept failed: {}", esc(&e.to_string()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = tls.current();
        let store = store.clone();
        let slots = slots.clone();
        let per_device = per_device.clone();
        let budget = budget.clone();
        let custody = custody.clone();
        let index = index.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let peer = peer.to_string();
            // A second handle on the socket outlives the TLS stream hyper closes, for `linger`.
            let lingering = tcp.as_fd().try_clone_to_owned().ok();
            let deadline = tokio::time::Instant::now() + handshake_timeout;
            // Closed (or reset) before sending a byte: what a proxy's TCP health check or a
            // port scan does, every few seconds. Not a refused handshake worth a warning; once
            // a TLS hello has come, every failure is one.
            let mut first = [0u8; 1];
            match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    log::debug!(peer = peer.as_str(); "connection closed before its TLS hello");
                    return;
                }
                Ok(Ok(_)) => {}
                Err(_) => {
                    log::warn!(peer = peer.as_str(); "TLS handshake timed out (limits.handshake_timeout_secs)");
                    return;
                }
            }
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    log::warn!(peer = peer.as_str(); "TLS handshake refused: {}", esc(&e.to_string()));
                    return;
                }
                Err(_) => {
                    log::warn!(peer = peer.as_str(); "TLS handshake timed out (limits.handshake_timeout_secs)");
                    return;
                }
            };
            let device = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => match neoflix_pki::device_id(cert) {
                    Ok(d) => d,
                    Err(e) => {
                        // The message quotes the certificate's common name: anything a CA signed.
                        log::warn!(peer = peer.as_str(); "client certificate has no usable device id: {}", esc(&e.to_string()));
                        return;
                    }
                },
                None => return,
            };
            let admitted = match per_device.try_take(&device) {
                None => Err(http::ConnectionRefusal::DeviceLimit),
                Some(d) => match slots.try_acquire_owned() {
                    Ok(p) => Ok((d, p)),
                    Err(_) => Err(http::ConnectionRefusal::ServerFull),
                },
            };
            let (_device_slot, _permit) = match admitted {
                Ok(a) => a,
                Err(why) => {
                    match why {
                        http::ConnectionRefusal::DeviceLimit => {
                            log::warn!(device = esc(&device).as_str(), peer = peer.as_str(); "too many connections from this device (limits.max_connections_per_device): answering 503")
                        }
                        http::ConnectionRefusal::ServerFull => {
                            log::warn!(device = esc(&device).as_str(), peer = peer.as_str(); "every connection slot is taken (limits.max_connections): answering 503")
                        }
                    }
                    // The refusal keeps its handshake slot until it is closed, at most
                    // REFUSAL_TIMEOUT from now, so refusals too are bounded in number.
                    refuse(tls, why).await;
                    linger(lingering).await;
                    drop(handshake);
                    return;
                }
            };
            drop(handshake);
            let ctx = Arc::new(http::Ctx {
                store,
                device,
                peer,
                rate,
                budget,
                custody,
                index,
            });
            let service = hyper::service::service_fn(move |req| http::handle(req, ctx.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                // hyper's default read buffer grows to ~400 KiB per connection; 2048 of those
                // would be most of the memory the unit allows.
                .max_buf_size(READ_BUFFER)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { let _ = r; }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
            linger(lingering).await;
        });
    }
    let _ = stop_tx.send(true);
    for t in finishing_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    log::info!("neoflix-ingest stopping");
    Ok(())
}

/// Closes a connection whose answer has been written without a reset: hyper closes a
/// connection whose request body it did not read (a 413, a 503), and closing a socket with
/// input unread makes the kernel answer with a reset, which discards the answer at a client that
/// is still sending (curl uploading a 200 MiB file sees "connection reset", not the 413). So:
/// half-close, then read and discard until the client closes too, for at most [`LINGER_TIME`]
/// and [`LINGER_BYTES`]; the connection's slot is held meanwhile, so lingering is bounded too.
async fn linger(socket: Option<std::os::fd::OwnedFd>) {
    use tokio::io::AsyncReadExt;
    let Some(fd) = socket else { return };
    let std_socket = std::net::TcpStream::from(fd);
    let _ = std_socket.shutdown(std::net::Shutdown::Write);
    if std_socket.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut socket) = tokio::net::TcpStream::from_std(std_socket) else {
        return;
    };
    let mut buf = vec![0u8; READ_BUFFER];
    let mut drained = 0u64;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while drained < LINGER_BYTES {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n as u64,
            }
        }
    })
    .await;
}

/// Answers a refused connection's request 503 and closes it: the request head gets
/// REFUSAL_HEAD_TIMEOUT to arrive, the whole exchange REFUSAL_TIMEOUT.
async fn refuse(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    why: http::ConnectionRefusal,
) {
    let service = hyper::service::service_fn(move |_req| async move {
        Ok::<_, std::convert::Infallible>(http::refused(why))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_HEAD_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(READ_BUFFER)
        .serve_connection(TokioIo::new(tls), service);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, conn).await;
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn outside_strings_stay_on_one_unambiguous_line() {
        assert_eq!(esc("room-1"), "room-1");
        assert_eq!(esc("a b"), "a b");
        assert_eq!(
            esc("x\nINFO  recording complete"),
            "x\\nINFO  recording complete"
        );
        assert_eq!(esc("\r\t\u{1b}[31m"), "\\r\\t\\u{1b}[31m");
        assert_eq!(esc("q\"\\"), "q\\\"\\\\");
        assert_eq!(esc("é\u{2028}"), "\\u{e9}\\u{2028}");
        assert!(!esc(&"\n".repeat(10)).contains('\n'));
    }
}
