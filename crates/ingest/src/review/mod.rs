//! The review listener: HTTPS for people (no client certificate), serving the review page, its
//! assets and its JSON API (docs/review.md). The page opens recordings in the browser; this
//! side signs reviewers in, lists recordings, hands out sealed objects and wrapped keys, and
//! writes the audit log. It links nothing that could open a recording.
//!
//! Layout: [`guard`] the pure checks (routing, cookie, Origin, CSRF, headers), [`api`] the
//! routes, [`stall`] the write timeout hyper lacks, this module the listener and the assets.

pub mod api;
pub mod guard;
pub mod stall;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Review;
use crate::db::Db;
use crate::fleet::FleetView;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 512;
/// Connections one address (an IPv6 client's /64) may hold at once: a browser opens six to a
/// host, so this leaves room for several tabs and browsers on one workstation, while one host
/// that opens connections and sends nothing cannot hold every slot.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// An answer whose writing makes no progress for this long is cut, and its connection closed.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Largest asset file read at start.
const MAX_ASSET_BYTES: u64 = 32 << 20;
/// Most asset files read at start.
const MAX_ASSETS: usize = 256;

/// The page's files, read once at start.
pub struct Assets {
    /// `index.html`.
    index: Bytes,
    /// Every plain-named file of the directory, with its content type.
    files: HashMap<String, (Bytes, &'static str)>,
}

impl Assets {
    /// Reads `dir`: it must hold `index.html`; every other regular file with a plain name is
    /// served under `/assets/`.
    pub fn load(dir: &Path) -> anyhow::Result<Assets> {
        let hint = "build the page with scripts/build-web, or install the neoflix-ingest package, which puts it in /usr/share/neoflix-ingest/review; [review] assets names the directory";
        let list = std::fs::read_dir(dir).with_context(|| {
            format!(
                "review.assets {}: cannot read the directory; {hint}",
                dir.display()
            )
        })?;
        let index = neoflix_format::files::read_regular(&dir.join("index.html"), MAX_ASSET_BYTES)
            .with_context(|| {
            format!(
                "review.assets {}: no readable index.html; {hint}",
                dir.display()
            )
        })?;
        let mut files = HashMap::new();
        for e in list.filter_map(|e| e.ok()) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if !guard::plain_name(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if files.len() >= MAX_ASSETS {
                anyhow::bail!(
                    "review.assets {}: more than {MAX_ASSETS} files; is this the page's directory?",
                    dir.display()
                );
            }
            let bytes = neoflix_format::files::read_regular(&e.path(), MAX_ASSET_BYTES)
                .with_context(|| format!("review.assets: {}", e.path().display()))?;
            files.insert(
                name.clone(),
                (Bytes::from(bytes), guard::content_type(&name)),
            );
        }
        Ok(Assets {
            index: Bytes::from(index),
            files,
        })
    }
}

/// The review listener's TLS: the configured certificate and key, no client certificate,
/// HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .with_context(|| {
            format!(
                "review.cert {}: not a readable PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("review.cert {}: no certificate in the file", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "review.key {}: not a readable PEM private key",
            key.display()
        )
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("review.cert and review.key do not form a usable pair")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Everything a review request needs.
pub struct State {
    /// The database.
    pub db: Arc<Db>,
    /// Largest object served.
    pub max_object: u64,
    /// Bytes of objects held in memory while they are sent, all connections together
    /// (`limits.max_buffered_bytes`, a budget of its own beside the uploads').
    pub budget: crate::limits::Budget,
    /// The page.
    pub assets: Assets,
    /// `[review] session_idle_secs`.
    pub idle_secs: i64,
    /// `[review] session_max_secs`.
    pub max_secs: i64,
    /// The fleet view, with `[mqtt]`.
    pub fleet: Option<Arc<FleetView>>,
    /// Derives unknown names' sign-in parameters.
    pub secret: [u8; 32],
    /// The locks whose first refusal is audited already.
    pub refusals: std::sync::Mutex<crate::ratelimit::Refusals>,
    /// What consent, withdrawal and the teaching library work on, and the department's
    /// policies.
    pub keeping: Keeping,
    /// The (session, request) pairs whose refusal is audited already.
    pub forbidden: std::sync::Mutex<std::collections::HashSet<(String, &'static str)>>,
}

/// What the chair's lifecycle changes need (docs/privacy.md).
pub struct Keeping {
    /// Storage, database and the identity that signs withdrawal notices.
    pub parts: Arc<crate::lifecycle::Shared>,
    /// `[retention] keep_days`, if the server deletes by itself.
    pub keep_days: Option<u32>,
    /// `[consent]`.
    pub consent: crate::config::ConsentPolicy,
}

/// Everything the listener needs, checked before the server starts.
pub struct Prepared {
    /// The socket.
    pub listener: TcpListener,
    /// TLS.
    pub acceptor: TlsAcceptor,
    /// The rest.
    pub state: Arc<State>,
}

/// Reads the assets and TLS files and binds the address: every start-up error here, named.
pub async fn prepare(
    cfg: &Review,
    db: Arc<Db>,
    max_object: u64,
    budget: crate::limits::Budget,
    fleet: Option<Arc<FleetView>>,
    keeping: Keeping,
) -> anyhow::Result<Prepared> {
    let assets = Assets::load(&cfg.assets)?;
    let acceptor = acceptor(&cfg.cert, &cfg.key)?;
    let d = db.clone();
    let secret = tokio::task::spawn_blocking(move || d.server_secret())
        .await
        .context("server secret")??;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("review.listen {}: cannot listen", cfg.listen))?;
    Ok(Prepared {
        listener,
        acceptor,
        state: Arc::new(State {
            db,
            max_object,
            budget,
            assets,
            idle_secs: cfg.session_idle_secs as i64,
            max_secs: cfg.session_max_secs as i64,
            fleet,
            secret,
            refusals: Default::default(),
            keeping,
            forbidden: Default::default(),
        }),
    })
}

/// Serves until `stop` turns true, then lets open requests finish (10 s at most).
pub async fn serve(p: Prepared, mut stop: watch::Receiver<bool>) {
    let Prepared {
        listener,
        acceptor,
        state,
    } = p;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = crate::limits::DeviceSlots::new(MAX_CONNECTIONS_PER_ADDRESS);
    if let Ok(a) = listener.local_addr() {
        log::info!(listen = a.to_string().as_str(); "review page listening");
    }
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("review: accept failed: {}", crate::esc(&e.to_string()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = per_address.try_take(&crate::ratelimit::address_key(peer.ip()))
        else {
            // Closed at once, before TLS: the cheapest answer to a host over its share.
            log::debug!(peer = peer.to_string().as_str(); "review: too many connections from this address; closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    log::debug!(peer = peer.to_string().as_str(); "review: TLS handshake refused: {}", crate::esc(&e.to_string()));
                    return;
                }
                Err(_) => return,
            };
            let service =
                hyper::service::service_fn(move |req| api::handle(req, state.clone(), peer));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(
                    TokioIo::new(stall::WriteStall::new(tls, WRITE_STALL)),
                    service,
                );
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { let _ = r; }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
}

/// The client address the audit log and the rate limit use: the TCP peer's IP.
pub fn client_of(peer: SocketAddr) -> String {
    peer.ip().to_string()
}
