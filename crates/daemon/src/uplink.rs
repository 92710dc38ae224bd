//! The uplink: pushes sealed recordings to the department's ingest server over mutual TLS.
//!
//! It works from what is on disk and what the server says it has, so it resumes after a restart
//! of either side: each pass lists the recordings directory, asks the server
//! (`GET /v1/recordings/{id}`) what it holds of each recording this run has not seen yet (and
//! again after a request failed), PUTs the objects the server lacks (bounded concurrency, each
//! PUT idempotent), and once a recording has its manifest and every object is on the server,
//! PUTs the manifest, checks the receipt against the local manifest and only then deletes the
//! local copy. What is on the box and on the server is kept in memory between passes and only
//! what is new is looked for on disk, so a pass costs the same at the first fragment as at the
//! five thousandth. Storage wakes it when a recording opens, claims a fragment, gets a marker
//! and is finalized, so a recording is complete on the server moments after it stops; in
//! between a pass runs every 10 s. Failures back off exponentially with jitter (1 s to 60 s).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use neoflix_format::MANIFEST_FILE;
use neoflix_format::custody::SIGNATURE_FILE;
use neoflix_format::manifest::MAX_MANIFEST_BYTES;
use neoflix_format::protocol::ObjectName;
use tokio::sync::{Notify, Semaphore, watch};

/// PUTs in flight at once.
const CONCURRENCY: usize = 8;

/// One ingest server the box may send to.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its base URL, e.g. `https://ingest.example:8443`, without a trailing slash.
    url: String,
    /// Checks its receipts and withdrawal notices.
    receipts: Arc<ReceiptCheck>,
}

impl Server {
    /// The servers at `urls` (replicas, in order of preference), whose certificates `ca_pem`
    /// (the upload CA) issued. A receipt or withdrawal notice from any of them may be signed
    /// for the host of any of them: on a shared store a replica answers a manifest sent again
    /// with the receipt another replica issued.
    pub fn list(urls: &[String], ca_pem: &[u8]) -> Result<Vec<Server>, UplinkError> {
        let receipts = Arc::new(ReceiptCheck::new(ca_pem, urls)?);
        Ok(urls
            .iter()
            .map(|url| Server {
                url: url.trim_end_matches('/').to_string(),
                receipts: receipts.clone(),
            })
            .collect())
    }
}

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// The ingest servers, in order of preference (at least one): replicas on one store, so the
    /// box sends to one and moves to the next when a pass fails.
    pub servers: Vec<Server>,
    /// CA certificate that issued the server's certificate (PEM).
    pub ca: PathBuf,
    /// This device's certificate (PEM).
    pub cert: PathBuf,
    /// This device's key (PEM).
    pub key: PathBuf,
    /// The recordings directory.
    pub recordings_dir: PathBuf,
    /// This box's device id: a withdrawal notice must name it.
    pub device: String,
    /// Signs a recording's manifest again when it is renamed (an id the server already holds).
    pub signer: Option<Arc<neoflix_format::SigningIdentity>>,
}

/// Checks a receipt: signed by a server certificate of the upload CA for a host the box
/// uploads to, and about exactly the manifest the box holds.
pub struct ReceiptCheck {
    /// The upload CA.
    trust: neoflix_format::TrustAnchors,
    /// The hosts of `upload.url`: a name the server's certificate must carry.
    server_names: Vec<String>,
}

impl std::fmt::Debug for ReceiptCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiptCheck({})", self.server_names.join(", "))
    }
}

impl ReceiptCheck {
    /// From the upload CA (PEM) and the servers' URLs.
    pub fn new(ca_pem: &[u8], urls: &[String]) -> Result<Self, UplinkError> {
        let trust = neoflix_format::TrustAnchors::from_pem(ca_pem, None)
            .map_err(|e| UplinkError(format!("upload.ca: {e}")))?;
        let server_names = urls
            .iter()
            .map(|url| {
                reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
                    .ok_or_else(|| UplinkError(format!("upload.url {url}: no host")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if server_names.is_empty() {
            return Err(UplinkError("upload.url: no server".into()));
        }
        Ok(ReceiptCheck {
            trust,
            server_names,
        })
    }

    /// Checks a signature of a server for `purpose` against every server's name: the first
    /// that it is valid for, or the error for the first server's name.
    fn check_server(
        &self,
        purpose: neoflix_format::custody::Purpose,
        signature: &neoflix_format::Signature,
        signed: &[u8],
    ) -> Result<neoflix_format::Signer, String> {
        let now = std::time::SystemTime::now();
        let mut first = None;
        for name in &self.server_names {
            match self
                .trust
                .check_server(purpose, signature, signed, name, now)
            {
                Ok(signer) => return Ok(signer),
                Err(e) => {
                    first.get_or_insert(e.to_string());
                }
            }
        }
        Err(first.unwrap_or_default())
    }

    /// Checks a receipt answered for `manifest` (the bytes the box uploaded) of recording `id`
    /// by `device`: for this recording, this manifest, this device and its signature; returns
    /// the receipt and its signer's name.
    pub fn check(
        &self,
        body: &[u8],
        id: &str,
        device: &str,
        manifest: &[u8],
        chain: &str,
    ) -> Result<(neoflix_format::Receipt, String), String> {
        let (signed, receipt) = neoflix_format::SignedReceipt::from_json(body)
            .map_err(|e| format!("{id}: unreadable receipt: {e}"))?;
        let signer = self
            .check_server(
                neoflix_format::custody::Purpose::Receipt,
                &signed.signature,
                signed.receipt.as_bytes(),
            )
            .map_err(|e| format!("{id}: the receipt's signature: {e}"))?;
        if receipt.recording_id != id
            || receipt.manifest_sha256 != neoflix_format::sha256_hex(manifest)
            || receipt.chain != chain
            || receipt.device_id != device
            || receipt.signed_by != device
        {
            return Err(format!(
                "{id}: the server's receipt does not match the local manifest"
            ));
        }
        Ok((receipt, signer.name))
    }

    /// Checks a withdrawal notice (the server's `410 Gone` for recording `id`): signed like a
    /// receipt, for this recording of this device. Returns the notice and its signer's name.
    pub fn check_withdrawal(
        &self,
        body: &[u8],
        id: &str,
        device: &str,
    ) -> Result<(neoflix_format::Withdrawal, String), String> {
        let (signed, notice) = neoflix_format::SignedWithdrawal::from_json(body)
            .map_err(|e| format!("{id}: unreadable withdrawal notice: {e}"))?;
        let signer = self
            .check_server(
                neoflix_format::custody::Purpose::Withdrawal,
                &signed.signature,
                signed.withdrawal.as_bytes(),
            )
            .map_err(|e| format!("{id}: the withdrawal notice's signature: {e}"))?;
        if notice.recording_id != id || notice.device_id != device {
            return Err(format!(
                "{id}: the withdrawal notice is for {}/{}, not this recording of {device}",
                neoflix_logging::escape_controls(&notice.device_id),
                neoflix_logging::escape_controls(&notice.recording_id)
            ));
        }
        Ok((notice, signer.name))
    }
}

/// The upload queue, as the status reports it.
#[derive(Debug, Clone, Default)]
pub struct UploadStatus {
    /// Recordings on the box not yet confirmed by the server.
    pub recordings_pending: usize,
    /// Sealed bytes on the box not yet on the server.
    pub bytes_pending: u64,
    /// When the last receipt was checked.
    pub last_success_utc: Option<String>,
    /// The last failure, until a pass succeeds.
    pub last_error: Option<String>,
    /// Recordings delivered since start.
    pub delivered: u64,
    /// The server it sends to now (of several: the one that last worked, or is being tried).
    pub server: Option<String>,
}

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("upload: {0}")]
pub struct UplinkError(String);

impl From<String> for UplinkError {
    fn from(s: String) -> Self {
        UplinkError(s)
    }
}

/// Builds the HTTPS client with the device's certificate.
pub fn client(s: &UplinkSettings) -> Result<reqwest::Client, UplinkError> {
    let tls = neoflix_pki::client_tls(&s.ca, Some((&s.cert, &s.key)))
        .map_err(|e| UplinkError(format!("upload: {e}")))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| UplinkError(e.to_string()))
}

/// How long the server may stay silent before the status says so: a hung server holds a request
/// for the client's whole timeout, and the status would go on showing an older state.
const SILENCE: Duration = Duration::from_secs(20);

/// What to do when a server stays silent for [`SILENCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silent {
    /// Say so in the status and wait on, up to the client's timeout.
    Wait,
    /// Give up: another server can be tried.
    GiveUp,
}

/// Sends a request with a small body; once the server has not answered for [`SILENCE`], the
/// status says so while the request waits on (up to the client's timeout), or it fails.
async fn send(
    status: &Mutex<UploadStatus>,
    down: &AtomicBool,
    what: &str,
    request: reqwest::RequestBuilder,
    silent: Silent,
) -> Result<reqwest::Response, String> {
    let r = send_watched(status, what, request, silent).await;
    match &r {
        Err(_) => down.store(true, Ordering::Relaxed),
        Ok(r) if gateway_error(r.status()) => down.store(true, Ordering::Relaxed),
        Ok(_) => {}
    }
    r
}

/// A proxy's word that the server behind it is not there (502, 504). Other 5xx come from a
/// server that answers: busy (503), out of space (507), failing on one recording (500).
fn gateway_error(code: reqwest::StatusCode) -> bool {
    code == reqwest::StatusCode::BAD_GATEWAY || code == reqwest::StatusCode::GATEWAY_TIMEOUT
}

/// [`send`], without noting a failed server.
async fn send_watched(
    status: &Mutex<UploadStatus>,
    what: &str,
    request: reqwest::RequestBuilder,
    silent: Silent,
) -> Result<reqwest::Response, String> {
    let send = request.send();
    tokio::pin!(send);
    let r = tokio::select! {
        r = &mut send => r,
        () = tokio::time::sleep(SILENCE) => {
            if silent == Silent::GiveUp {
                return Err(format!(
                    "{what}: no answer from the server after {} s; trying the next server",
                    SILENCE.as_secs()
                ));
            }
            let note = format!(
                "{what}: no answer from the server after {} s; waiting up to {} s (a hung server or a very slow link)",
                SILENCE.as_secs(),
                TIMEOUT.as_secs()
            );
            log::warn!("upload: {note}");
            status.lock().expect("status lock").last_error = Some(note);
            send.await
        }
    };
    r.map_err(|e| format!("{what}: {}", why(&e)))
}

/// The longest a request with a small body may take; an object's PUT goes at its [`PACE`].
const TIMEOUT: Duration = Duration::from_secs(120);

/// PUTs one object (idempotent: the server answers 200 for an identical one it has).
async fn put_object(
    client: reqwest::Client,
    down: Arc<AtomicBool>,
    base: String,
    dir: PathBuf,
    id: String,
    name: String,
) -> Result<(), String> {
    // Its digest is the one the ring recorded when it wrote the fragment, where there is one,
    // else computed here, off the runtime: an object may be up to a gigabyte.
    let path = dir.join(&id).join(&name);
    let url = format!("{base}/v1/recordings/{id}/objects/{name}");
    let what = format!("{id}/{name}");
    let out = Outgoing::open_off_runtime(path.clone(), false)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let (recorded, digest) = (out.recorded, out.sha256);
    let mut r = send_object(&client, &down, &url, &what, out).await?;
    if r.status() == reqwest::StatusCode::BAD_REQUEST && recorded {
        // The bytes may have changed on disk since the ring wrote them (a card's corruption, a
        // power cut): the record would be refused for ever. They go as they are now, once;
        // a recovered recording's manifest, made from the files, names them so. (Where they
        // cannot be read again, or are what was recorded, the server's answer stands.)
        if let Ok(now) = Outgoing::open_off_runtime(path, true).await
            && now.sha256 != digest
        {
            log::warn!(recording = id.as_str(), object = name.as_str(); "upload: the object's bytes are not those its digest was recorded for when it was written (changed on the box's storage since): sending them as they are");
            r = send_object(&client, &down, &url, &what, now).await?;
        }
    }
    match r.status().as_u16() {
        200 | 201 => Ok(()),
        code => Err(format!("PUT {what}: HTTP {code}: {}", error_text(r).await)),
    }
}

/// One PUT of an object with its digest; `what` names it in an error.
async fn send_object(
    client: &reqwest::Client,
    down: &AtomicBool,
    url: &str,
    what: &str,
    out: Outgoing,
) -> Result<reqwest::Response, String> {
    send_object_paced(client, down, url, what, out, PACE).await
}

/// [`send_object`], watched at `pace`: the client's own timeout is for requests with small
/// bodies, and a large object on a slow link takes longer than it while it goes well.
async fn send_object_paced(
    client: &reqwest::Client,
    down: &AtomicBool,
    url: &str,
    what: &str,
    out: Outgoing,
    pace: Pace,
) -> Result<reqwest::Response, String> {
    let digest = base64::engine::general_purpose::STANDARD.encode(out.sha256);
    let len = out.len;
    let progress = Arc::new(Progress::default());
    let backstop = pace.backstop(len);
    // Before the request is made: the client's own timer for `backstop` starts in `send`.
    let started = tokio::time::Instant::now();
    // Not through `send`: on a slow link a body may take longer than its silence, and that is
    // not a silent server. The length is announced whatever the client makes of a streamed
    // body: the server refuses one without it (411).
    let send = client
        .put(url)
        .timeout(backstop)
        .header("content-digest", format!("sha-256=:{digest}:"))
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(out.body(progress.clone()))
        .send();
    tokio::pin!(send);
    let mut watch = Watch::new(pace, len, started);
    let mut look = tokio::time::interval(pace.look_every());
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sent = loop {
        tokio::select! {
            r = &mut send => break r,
            _ = look.tick() => {
                let seen = progress.seen();
                if let Some(stop) = watch.look(seen, tokio::time::Instant::now()) {
                    return Err(match stop {
                        // The box's own storage: another server would not help.
                        Stop::FileStalled { .. } => format!("{what}: {stop}"),
                        _ => {
                            down.store(true, Ordering::Relaxed);
                            format!("PUT {what}: {stop}")
                        }
                    });
                }
            }
        }
    };
    let r = sent.map_err(|e| match local_read_error(&e) {
        // The box's own file failed (a card's read error, a file that changed size): the
        // server is not down, and moving to another would not help.
        Some(local) => format!("{what}: reading the file: {local}"),
        None => {
            down.store(true, Ordering::Relaxed);
            // (Not any timeout among its causes: the kernel's own is reported as it is.)
            if e.is_timeout() && started.elapsed() >= backstop {
                format!(
                    "PUT {what}: took longer than the {} s allowed for {len} bytes (the slowest a server takes, {SLOWEST} bytes/s, and {} s more)",
                    backstop.as_secs(),
                    (pace.answer + pace.stall).as_secs()
                )
            } else {
                format!("PUT {what}: {}", why(&e))
            }
        }
    })?;
    if gateway_error(r.status()) {
        down.store(true, Ordering::Relaxed);
    }
    Ok(r)
}

/// How long an object's PUT may go without the connection taking any of its body, and then
/// without an answer once it has taken all of it.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// No byte of the body taken for this long: the server or the link is gone (the server
    /// itself drops a body idle for 60 s).
    stall: Duration,
    /// The whole body taken, and no answer for this long, besides the time what the box's
    /// buffers still held takes to cross the link ([`Watch::draining`]). It covers the server's fsync
    /// and its answer.
    answer: Duration,
}

/// The box's pace for every object.
const PACE: Pace = Pace {
    stall: Duration::from_secs(60),
    answer: TIMEOUT,
};

/// The slowest body a server takes by default (`limits.min_bytes_per_sec`, docs/ingest.md):
/// the bound of last resort on one PUT is its size at this rate.
const SLOWEST: u64 = 4096;

/// What the box may still hold of a body the connection has taken: the kernel's send buffer
/// at Linux's default largest (4 MiB, `net.ipv4.tcp_wmem`) and the HTTP client's (some 400
/// KiB), with room.
const BUFFERED: u64 = 5 << 20;

/// The pieces a body is handed to the connection in: the HTTP client takes the next when its
/// buffer has room, so what it has taken follows what the socket sent to within a few of them.
const FRAME: usize = 64 * 1024;

impl Pace {
    /// The request's bound of last resort, for a link that trickles on for ever: what the
    /// watch does not end, this does.
    fn backstop(self, len: u64) -> Duration {
        self.answer + self.stall + Duration::from_secs(len / SLOWEST)
    }

    /// How often the PUT is looked at: a fraction of the shorter limit, so that it ends
    /// within a few per cent of it.
    fn look_every(self) -> Duration {
        (self.stall.min(self.answer) / 16).max(Duration::from_millis(10))
    }
}

/// What a body has seen of its connection, as the body counts it.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes handed to the connection.
    taken: AtomicU64,
    /// The connection asked for more and waits on the box's own file to be read.
    reading: AtomicBool,
}

impl Progress {
    fn seen(&self) -> BodySeen {
        BodySeen {
            taken: self.taken.load(Ordering::Relaxed),
            reading: self.reading.load(Ordering::Relaxed),
        }
    }

    fn took(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// [`Progress`] at one look.
#[derive(Debug, Clone, Copy)]
struct BodySeen {
    /// Bytes handed to the connection so far.
    taken: u64,
    /// The connection waits on the box's own file.
    reading: bool,
}

/// Why an object's PUT is given up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Stop {
    /// The connection took nothing more for `secs` while the body was not all taken.
    #[error(
        "the connection has taken nothing more of the body for {secs} s ({taken} of {len} bytes handed to it): the server or the link is gone"
    )]
    Stalled { secs: u64, taken: u64, len: u64 },
    /// As [`Stop::Stalled`], but the connection was waiting on the box's own file.
    #[error(
        "reading the file has stalled for {secs} s ({taken} of {len} bytes sent): the box's storage is not answering"
    )]
    FileStalled { secs: u64, taken: u64, len: u64 },
    /// The body was all taken, and no answer came in the `secs` allowed.
    #[error("the whole body was handed to the connection, and no answer came in {secs} s")]
    Unanswered { secs: u64 },
}

/// How an object's PUT goes, judged from how much of its body the connection has taken: it
/// may go on as long as the body moves, then, once all of it was taken, for [`Pace::answer`]
/// and the time the box's buffers take to empty ([`Watch::draining`]). (Pure: the caller
/// gives the time.)
#[derive(Debug)]
struct Watch {
    pace: Pace,
    len: u64,
    start: tokio::time::Instant,
    /// The body's bytes taken when last looked at, and since when that count stands.
    taken: u64,
    since: tokio::time::Instant,
    /// The looks at which the count had grown since the one before and the box's buffers
    /// could be full (at least [`BUFFERED`] bytes taken): when, and how much was taken by
    /// then. What the connection takes after that, it takes as the link lets earlier bytes
    /// out. Only the last [`BUFFERED`] bytes' worth are kept, and at most [`PACE_LOOKS`].
    recent: std::collections::VecDeque<(tokio::time::Instant, u64)>,
}

/// The most looks kept in [`Watch::recent`]: what the last [`BUFFERED`] bytes need when every
/// look sees one more [`FRAME`], with room.
const PACE_LOOKS: usize = 128;

impl Watch {
    fn new(pace: Pace, len: u64, now: tokio::time::Instant) -> Watch {
        Watch {
            pace,
            len,
            start: now,
            taken: 0,
            since: now,
            recent: std::collections::VecDeque::with_capacity(PACE_LOOKS),
        }
    }

    /// The PUT at `now`, as `seen`: `Some` when it is to be given up.
    fn look(&mut self, seen: BodySeen, now: tokio::time::Instant) -> Option<Stop> {
        if seen.taken != self.taken {
            self.taken = seen.taken;
            self.since = now;
        }
        if self.taken >= BUFFERED && self.recent.back().is_none_or(|&(_, k)| k < self.taken) {
            self.recent.push_back((now, self.taken));
            // The window is the shortest that still spans the last BUFFERED bytes: as many
            // looks as those took, however slowly the count moves on a slow link.
            while self.recent.len() > PACE_LOOKS
                || self
                    .recent
                    .get(1)
                    .is_some_and(|&(_, k)| k + BUFFERED <= self.taken)
            {
                self.recent.pop_front();
            }
        }
        let still = now.saturating_duration_since(self.since);
        if self.taken >= self.len {
            let allowed = self.pace.answer + self.draining();
            return (still >= allowed).then_some(Stop::Unanswered {
                secs: allowed.as_secs_f64().round() as u64,
            });
        }
        if still < self.pace.stall {
            return None;
        }
        let (secs, taken, len) = (self.pace.stall.as_secs(), self.taken, self.len);
        Some(if seen.reading {
            Stop::FileStalled { secs, taken, len }
        } else {
            Stop::Stalled { secs, taken, len }
        })
    }

    /// How long what the box's buffers still hold once the body is all taken (up to
    /// [`BUFFERED`]) may take to leave: at the pace the connection took the body's last
    /// [`BUFFERED`] bytes with the buffers full, which is the link's recent pace (not the
    /// average over a body that went fast and then slowed, nor the moment the empty buffers
    /// were filled). A window of fewer bytes (a body just larger than the buffers, or whose
    /// last bytes came within a look or two) is scaled up at most fourfold: the count moves
    /// only once a third of the socket's buffer has drained. A body no larger than the
    /// buffers, which may be taken at once, gets the time that took. Never more than
    /// [`BUFFERED`] take at the slowest rate a server takes.
    fn draining(&self) -> Duration {
        let cap = Duration::from_secs(BUFFERED / SLOWEST);
        let whole = self.since.saturating_duration_since(self.start);
        let (Some(&(t0, k0)), Some(&(t1, k1))) = (self.recent.front(), self.recent.back()) else {
            return whole.min(cap);
        };
        if self.len <= BUFFERED || k1 <= k0 {
            return whole.min(cap);
        }
        // A window reaching back past the last BUFFERED bytes (its first look came in a fast
        // stretch) starts where the count passed them, between its first two looks.
        let (t0, k0) = match self.recent.get(1) {
            Some(&(ta, ka)) if k0 + BUFFERED < k1 => {
                let at = k1 - BUFFERED;
                let part = (at - k0) as f64 / (ka - k0) as f64;
                (t0 + ta.saturating_duration_since(t0).mul_f64(part), at)
            }
            _ => (t0, k0),
        };
        t1.saturating_duration_since(t0)
            .mul_f64(BUFFERED as f64 / (k1 - k0).max(BUFFERED / 4) as f64)
            .min(cap)
    }
}

/// The error a streamed body's reader met in the box's own file, found among a request
/// error's causes.
fn local_read_error(e: &reqwest::Error) -> Option<&LocalRead> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(local) = s.downcast_ref::<LocalRead>() {
            return Some(local);
        }
        source = s.source();
    }
    None
}

/// A streamed object's file could not be read as it was opened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LocalRead(std::io::Error);

/// Objects up to this size are read whole and sent from memory (a fragment of a few seconds;
/// eight at once hold 32 MiB at most); larger ones stream from their file.
const WHOLE: u64 = 4 << 20;
/// Chunks of a streamed object waiting for its connection: with the one being read and the
/// two the HTTP client may hold, about 1.5 MiB per upload whatever the object's size (up to a
/// gigabyte), and a chunk is sent while the next is read.
const READ_AHEAD: usize = 2;
/// The size of a streamed object's reads and of the chunks it is sent in.
const CHUNK: usize = 256 * 1024;

/// An object file to send, opened once: its size, and the digest announced for it.
struct Outgoing {
    /// Its bytes, or the file they are to be read from.
    source: Source,
    /// Its size when opened: the length announced, and what the body must be.
    len: u64,
    /// The digest announced.
    sha256: [u8; 32],
    /// The digest is the one recorded when the file was written, not computed from its bytes now.
    recorded: bool,
}

/// Where an object's bytes come from as it is sent.
enum Source {
    /// Read whole (at most [`WHOLE`]).
    Read(Vec<u8>),
    /// Streamed from the file, at its start.
    File(std::fs::File),
}

impl Outgoing {
    /// Opens `path` (a regular file, [`neoflix_format::files::open_regular`]) with its recorded
    /// digest, or with its bytes hashed now where there is none or `rehash` asks.
    fn open(path: &std::path::Path, rehash: bool) -> std::io::Result<Outgoing> {
        use std::io::{Read, Seek};
        let (mut file, len) = neoflix_format::files::open_regular(path)?;
        if len > MAX_LOCAL_OBJECT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {MAX_LOCAL_OBJECT} a sealed object may have"),
            ));
        }
        let recorded = match rehash {
            false => neoflix_format::files::recorded_digest(&file, len),
            true => None,
        };
        if len <= WHOLE {
            let bytes = neoflix_format::files::read_whole(&file, len, WHOLE)?;
            let (sha256, recorded) = match recorded {
                Some(sha) => (sha, true),
                None => (<sha2::Sha256 as sha2::Digest>::digest(&bytes).into(), false),
            };
            return Ok(Outgoing {
                source: Source::Read(bytes),
                len,
                sha256,
                recorded,
            });
        }
        if let Some(sha256) = recorded {
            return Ok(Outgoing {
                source: Source::File(file),
                len,
                sha256,
                recorded: true,
            });
        }
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            match file.read(&mut buf[..want])? {
                0 => return Err(neoflix_format::files::changed()),
                n => {
                    sha2::Digest::update(&mut h, &buf[..n]);
                    left -= n as u64;
                }
            }
        }
        // A file that grew would have only its first `len` bytes sent, under their digest.
        if file.read(&mut buf[..1])? != 0 {
            return Err(neoflix_format::files::changed());
        }
        file.rewind()?;
        Ok(Outgoing {
            source: Source::File(file),
            len,
            sha256: sha2::Digest::finalize(h).into(),
            recorded: false,
        })
    }

    /// [`Outgoing::open`] on a blocking thread: hashing may read a gigabyte.
    async fn open_off_runtime(path: PathBuf, rehash: bool) -> std::io::Result<Outgoing> {
        tokio::task::spawn_blocking(move || Outgoing::open(&path, rehash))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The object's `len` bytes as a request body: from memory, or read from the file on a
    /// blocking thread at most [`READ_AHEAD`] chunks ahead of the connection. A file whose
    /// size changed meanwhile ends the body with an error, so the request fails instead of
    /// sending other bytes than it announced. Either is handed over in [`FRAME`]s, counted in
    /// `progress`, which is how a slow link is told from a dead one.
    fn body(self, progress: Arc<Progress>) -> reqwest::Body {
        use std::io::Read;
        let (mut file, len) = match self.source {
            Source::Read(bytes) => {
                return reqwest::Body::wrap(MemoryBody {
                    rest: bytes::Bytes::from(bytes),
                    progress,
                });
            }
            Source::File(file) => (file, self.len),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let want = CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX));
                let mut chunk = vec![0u8; want];
                let read = match file.read_exact(&mut chunk) {
                    Ok(()) if want as u64 == left => match file.read(&mut [0u8; 1]) {
                        // Looked for before the last chunk goes: once the length announced
                        // is out, the client takes the body as whole and reads no further.
                        Ok(0) => Ok(bytes::Bytes::from(chunk)),
                        Ok(_) => Err(neoflix_format::files::changed()),
                        Err(e) => Err(e),
                    },
                    Ok(()) => Ok(bytes::Bytes::from(chunk)),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        Err(neoflix_format::files::changed())
                    }
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                // The request went away (answered early, failed, or the uplink stopped):
                // nothing more to read.
                if tx.blocking_send(read.map_err(LocalRead)).is_err() || failed {
                    return;
                }
                left -= want as u64;
            }
        });
        reqwest::Body::wrap(FileBody {
            rx,
            chunk: bytes::Bytes::new(),
            left: len,
            progress,
        })
    }
}

/// A request body from memory, handed over in [`FRAME`]s.
struct MemoryBody {
    rest: bytes::Bytes,
    progress: Arc<Progress>,
}

impl http_body::Body for MemoryBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = FRAME.min(self.rest.len());
        let frame = self.rest.split_to(n);
        self.progress.took(n);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// A request body fed by [`Outgoing::body`]'s reader, handed over in [`FRAME`]s.
struct FileBody {
    /// The chunks as they are read, or why reading stopped.
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, LocalRead>>,
    /// What is left of the chunk being handed over.
    chunk: bytes::Bytes,
    /// Bytes still to come from the reader: the channel closing before they did is an error,
    /// not the end.
    left: u64,
    progress: Arc<Progress>,
}

impl http_body::Body for FileBody {
    type Data = bytes::Bytes;
    type Error = LocalRead;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, LocalRead>>> {
        if self.chunk.is_empty() {
            let polled = match self.rx.poll_recv(cx) {
                std::task::Poll::Pending => {
                    self.progress.reading.store(true, Ordering::Relaxed);
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(polled) => polled,
            };
            self.progress.reading.store(false, Ordering::Relaxed);
            match polled {
                Some(Ok(b)) => match self.left.checked_sub(b.len() as u64) {
                    Some(left) => {
                        self.left = left;
                        self.chunk = b;
                    }
                    None => {
                        return std::task::Poll::Ready(Some(Err(LocalRead(
                            neoflix_format::files::changed(),
                        ))));
                    }
                },
                Some(Err(e)) => return std::task::Poll::Ready(Some(Err(e))),
                None if self.left > 0 => {
                    return std::task::Poll::Ready(Some(Err(LocalRead(std::io::Error::other(
                        "the file's reader stopped before its end",
                    )))));
                }
                None => return std::task::Poll::Ready(None),
            }
        }
        let n = FRAME.min(self.chunk.len());
        let frame = self.chunk.split_to(n);
        self.progress.took(n);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left + self.chunk.len() as u64)
    }
}

/// The largest sealed object the box writes: 1 GiB of plaintext and its tags, with room.
const MAX_LOCAL_OBJECT: u64 = neoflix_format::MAX_PLAINTEXT_LEN + (32 << 20);
/// The largest answer read from the server (a listing of a day-long recording's objects, or a
/// receipt, is far smaller): a misbehaving server cannot make the box hold more.
const MAX_ANSWER: usize = 16 << 20;

/// Reads a file of the box's own recordings off the runtime: a regular file (no link, never
/// waiting on a FIFO) of at most `max` bytes.
async fn read_local(path: PathBuf, max: u64) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || neoflix_format::files::read_regular(&path, max))
        .await
        .map_err(std::io::Error::other)?
}

/// An answer's body, refused beyond `max` bytes.
async fn bounded_body(mut r: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| why(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("the server's answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What went wrong with a request, every cause included: reqwest's own text is only "error
/// sending request for url (...)", and the TLS check that failed (an unknown issuer, an
/// expired or revoked certificate, another name) is in its sources.
fn why(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        // hyper and rustls repeat their inner error in their own text.
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// An error answer's text, cut short: it goes into the log and the status.
async fn error_text(r: reqwest::Response) -> String {
    let body = bounded_body(r, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The recordings on the box: the directories under the recordings directory, listed off the
/// runtime. Only the top level: what is inside a recording is tracked, not listed (see
/// [`Tracked`]).
async fn recording_ids(dir: PathBuf) -> std::io::Result<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                v.push(e.file_name().to_string_lossy().to_string());
            }
        }
        v.sort();
        Ok(v)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The size of regular file `path`; `None` when there is none.
fn regular_size(path: &std::path::Path) -> std::io::Result<Option<u64>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(Some(m.len())),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
    }
}

/// The fragments that became final in recording directory `dir` (still being recorded) from
/// fragment `next` on, their key records and sizes, and the fragment to look for the next time:
/// a few `stat`s per fragment, however long the recording is.
///
/// A fragment is final only once the next fragment's key record is there: the recorder writes
/// that only after the fragment's journal line. Until then a claim that fails may place the
/// fragment again, other bytes under the same name (and its key record, wrapped afresh), which
/// the server would refuse for ever. Init segments are no better (a retried claim writes its
/// key record again) and go with the manifest, as does the last fragment: a few kilobytes.
fn scan_open(dir: &std::path::Path, mut next: u64) -> std::io::Result<(Vec<(String, u64)>, u64)> {
    use neoflix_format::protocol::ObjectName;
    use neoflix_seal::Kind;
    let mut found = Vec::new();
    loop {
        let following = ObjectName::key_record(Kind::Fragment, next + 1);
        if regular_size(&dir.join(following))?.is_none() {
            break;
        }
        for name in [
            ObjectName::key_record(Kind::Fragment, next),
            ObjectName::sealed(Kind::Fragment, next),
        ] {
            match regular_size(&dir.join(&name))? {
                Some(size) => found.push((name, size)),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{name} is missing, and the recording goes on past it"),
                    ));
                }
            }
        }
        next += 1;
    }
    Ok((found, next))
}

/// A finalized recording's objects, as its manifest names them, with their sizes on the box;
/// and the id the manifest gives.
fn scan_manifest(dir: &std::path::Path) -> Result<Named, String> {
    let bytes = neoflix_format::files::read_regular(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES)
        .map_err(|e| format!("{}: {e}", dir.join(MANIFEST_FILE).display()))?;
    let m = neoflix_format::verify::parse_manifest(&bytes)
        .map_err(|e| format!("{}: {e}", dir.join(MANIFEST_FILE).display()))?;
    let mut found = Vec::new();
    for o in m.init_segments.iter().chain(&m.fragments) {
        for name in [&o.key_file, &o.file] {
            if !is_object(name) {
                return Err(format!(
                    "{}: names {}, not an object of a recording",
                    dir.join(MANIFEST_FILE).display(),
                    neoflix_logging::escape_controls(name)
                ));
            }
            match regular_size(&dir.join(name)) {
                Ok(Some(size)) => found.push((name.clone(), size)),
                // The server may hold it already; if not, its absence is reported when the
                // server is asked for it.
                Ok(None) => found.push((name.clone(), 0)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(Named {
        id: m.recording_id,
        objects: found,
        sha256: neoflix_format::sha256_hex(&bytes),
    })
}

/// What a finalized recording's manifest names.
struct Named {
    /// The recording id it gives.
    id: String,
    /// The objects, with their sizes on the box.
    objects: Vec<(String, u64)>,
    /// The manifest's SHA-256: the manifest sent must be the one these came from.
    sha256: String,
}

/// A sealed object or key record: uploaded as soon as it is there for good. (The signature
/// goes only with its manifest.)
fn is_object(name: &str) -> bool {
    matches!(
        ObjectName::parse(name),
        Some(ObjectName::Sealed(..) | ObjectName::KeyRecord(..))
    )
}

/// What the uplink remembers between passes, per recording on the box.
type Known = HashMap<String, Tracked>;

/// What the server said it holds of a recording.
#[derive(Debug, Default)]
struct OnServer {
    /// The objects confirmed there.
    objects: HashSet<String>,
    /// It is complete there: no object can be added, only the same manifest be sent again.
    complete: bool,
}

/// What the uplink knows of one recording on the box, kept between passes so that a pass costs
/// what is new since the last one, not the recording's length: a 90-minute recording of 1-s
/// fragments is 10 800 objects, and listing them at every pass made its upload quadratic.
/// Built from the disk and the server's listing the first time a run sees the recording.
#[derive(Debug, Default)]
struct Tracked {
    /// The objects on the box, and their sizes.
    local: HashMap<String, u64>,
    /// Of those, the ones the server has not confirmed (in name order).
    pending: std::collections::BTreeSet<String>,
    /// Their bytes.
    pending_bytes: u64,
    /// What the server holds; asked again after a request failed.
    server: OnServer,
    /// `server` is the server's word (not stale after a failure).
    asked: bool,
    /// The fragment to look for next while it is being recorded.
    next: u64,
    /// Its manifest was read (this is its SHA-256): every object is in `local`, no more can
    /// come.
    manifest: Option<String>,
}

impl Tracked {
    /// Objects found on the box.
    fn found(&mut self, objects: Vec<(String, u64)>) {
        for (name, size) in objects {
            if self.local.insert(name.clone(), size).is_none()
                && !self.server.objects.contains(&name)
            {
                self.pending_bytes += size;
                self.pending.insert(name);
            }
        }
    }

    /// The manifest's objects: these and no others.
    fn finalize(&mut self, named: Named) {
        self.local = named.objects.into_iter().collect();
        self.manifest = Some(named.sha256);
        self.recount();
    }

    /// Its manifest was read.
    fn finalized(&self) -> bool {
        self.manifest.is_some()
    }

    /// The server's listing.
    fn heard(&mut self, server: OnServer) {
        self.server = server;
        self.asked = true;
        self.recount();
    }

    /// The server stored `name`.
    fn confirmed(&mut self, name: &str) {
        if self.pending.remove(name) {
            self.pending_bytes -= self.local.get(name).copied().unwrap_or(0);
        }
        self.server.objects.insert(name.to_string());
    }

    /// A request failed: what the server has may differ from what it said; ask again.
    fn stale(&mut self) {
        self.asked = false;
    }

    fn recount(&mut self) {
        self.pending = self
            .local
            .keys()
            .filter(|n| !self.server.objects.contains(*n))
            .cloned()
            .collect();
        self.pending_bytes = self.pending.iter().map(|n| self.local[n]).sum();
    }
}

/// What a look at a recording on the box found.
enum Seen {
    /// It is being recorded: these objects are new, and where to look the next time.
    Recording {
        objects: Vec<(String, u64)>,
        next: u64,
    },
    /// It is finalized: what its manifest names.
    Finalized(Named),
}

/// What the server holds of a recording.
enum Held {
    /// These objects (none: nothing yet).
    Objects(OnServer),
    /// Nothing: the recording was withdrawn. The server's signed notice.
    Withdrawn(Vec<u8>),
}

/// Removes a recording directory of the box's and makes that durable.
async fn remove_local(rdir: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::remove_dir_all(&rdir)?;
        if let Some(parent) = rdir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

struct Pass<'a> {
    client: &'a reqwest::Client,
    /// The servers, and which of them this pass sends to.
    servers: &'a [Server],
    current: AtomicUsize,
    /// A request of this pass found the server down: no answer, an answer cut off or not the
    /// protocol's, or a proxy's 502 or 504. (Failures of the box's own files, or an answer
    /// refusing one recording, do not count: another server would answer the same.)
    down: Arc<AtomicBool>,
    /// The recording at which the last pass ended, the server found down: the next pass
    /// takes it last.
    ended: Mutex<Option<String>>,
    dir: PathBuf,
    status: &'a Arc<Mutex<UploadStatus>>,
    events: &'a crate::Events,
    device: String,
    signer: Option<Arc<neoflix_format::SigningIdentity>>,
    /// Wakes the next pass at once (a renamed recording is waiting).
    wake: &'a Notify,
    /// Recordings this run renamed: a `409` for one of them is not answered by another rename.
    renamed: Mutex<HashSet<String>>,
}

impl Pass<'_> {
    /// The server this pass sends to.
    fn server(&self) -> &Server {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Notes that the server stopped answering partway (an answer cut off, not the
    /// protocol's), and returns `e`.
    fn went_down(&self, e: String) -> String {
        self.down.store(true, Ordering::Relaxed);
        e
    }

    /// Its base URL.
    fn base(&self) -> &str {
        &self.server().url
    }

    /// A pass found the server down: with several servers the next one is tried, and
    /// everything it holds is asked again (replicas share one store, so it is the same, unless the servers are
    /// separate, and then the recording goes to the new one whole).
    fn fail_over(&self, known: &mut Known) {
        if self.servers.len() < 2 {
            return;
        }
        let from = self.base().to_string();
        self.current.fetch_add(1, Ordering::Relaxed);
        for t in known.values_mut() {
            t.stale();
        }
        let to = self.base().to_string();
        log::warn!(from = from.as_str(), to = to.as_str(); "upload: trying the next ingest server");
        self.status.lock().expect("status lock").server = Some(to);
    }

    async fn server_has(&self, id: &str) -> Result<Held, String> {
        let r = send(
            self.status,
            &self.down,
            &format!("GET {id}"),
            self.client
                .get(format!("{}/v1/recordings/{id}", self.base())),
            // An answer from a listing is quick; with another server to try, a silent one is
            // not waited on for the client's whole timeout. (A manifest is: its check may
            // hash a long recording.)
            match self.servers.len() {
                1 => Silent::Wait,
                _ => Silent::GiveUp,
            },
        )
        .await?;
        match r.status().as_u16() {
            404 => Ok(Held::Objects(OnServer::default())),
            410 => {
                let body = bounded_body(r, MAX_ANSWER)
                    .await
                    .map_err(|e| self.went_down(format!("GET {id}: {e}")))?;
                Ok(Held::Withdrawn(body))
            }
            200 => {
                let body = bounded_body(r, MAX_ANSWER)
                    .await
                    .map_err(|e| self.went_down(format!("GET {id}: {e}")))?;
                // Not the protocol's: a proxy's page, another service on the port.
                let s: neoflix_format::protocol::RecordingState = serde_json::from_slice(&body)
                    .map_err(|e| {
                        self.went_down(format!("GET {id}: not the protocol's answer: {e}"))
                    })?;
                Ok(Held::Objects(OnServer {
                    objects: s.objects.into_iter().collect(),
                    complete: s.complete,
                }))
            }
            code => Err(format!("GET {id}: HTTP {code}: {}", error_text(r).await)),
        }
    }

    /// Takes in what is new on the box of recording `id` since the last pass.
    async fn look(&self, id: &str, t: &mut Tracked) -> Result<(), String> {
        if t.finalized() {
            return Ok(());
        }
        let rdir = self.dir.join(id);
        let (dir, next) = (rdir.clone(), t.next);
        let seen = tokio::task::spawn_blocking(move || -> Result<_, String> {
            match regular_size(&dir.join(MANIFEST_FILE)).map_err(|e| e.to_string())? {
                Some(_) => scan_manifest(&dir).map(Seen::Finalized),
                None => scan_open(&dir, next)
                    .map(|(objects, next)| Seen::Recording { objects, next })
                    .map_err(|e| format!("{}: {e}", dir.display())),
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        match seen {
            Seen::Recording { objects, next } => {
                t.found(objects);
                t.next = next;
            }
            Seen::Finalized(named) if named.id != id => {
                // A rename cut short by a crash: the directory has its new name, the manifest
                // its old id. Finish it before anything is sent.
                let (dir, signer) = (rdir.clone(), self.signer.clone());
                tokio::task::spawn_blocking(move || {
                    neoflix_store::readdress(&dir, signer.as_deref(), std::time::SystemTime::now())
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{id}: finishing its rename: {e}"))?;
                let dir = rdir.clone();
                let named = tokio::task::spawn_blocking(move || scan_manifest(&dir))
                    .await
                    .map_err(|e| e.to_string())??;
                t.finalize(named);
            }
            Seen::Finalized(named) => t.finalize(named),
        }
        Ok(())
    }

    /// Delivers what it can of one recording; returns true when it was completed and removed.
    async fn recording(&self, id: &str, known: &mut Known) -> Result<bool, String> {
        let rdir = self.dir.join(id);
        let t = known.entry(id.to_string()).or_default();
        self.look(id, t).await?;
        if !t.asked {
            match self.server_has(id).await? {
                Held::Objects(has) => t.heard(has),
                Held::Withdrawn(notice) => {
                    let finalized = t.finalized();
                    let removed = self.withdrawn(id, &notice, finalized).await?;
                    if removed {
                        known.remove(id);
                    }
                    return Ok(removed);
                }
            }
        }
        if t.server.complete && !t.finalized() {
            // The server holds a complete recording under this id, and this one is still
            // being recorded: nothing can be added there. Once it is finalized its manifest is
            // refused and it is renamed (below).
            return Ok(false);
        }
        let complete_there = t.server.complete;
        let missing: Vec<String> = match complete_there {
            true => Vec::new(),
            false => t.pending.iter().cloned().collect(),
        };
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for name in missing {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            if self.servers.len() > 1 && self.down.load(Ordering::Relaxed) {
                // Another server is waiting: the objects left are not each given this one's
                // timeout.
                break;
            }
            let put = put_object(
                self.client.clone(),
                self.down.clone(),
                self.base().to_string(),
                self.dir.clone(),
                id.to_string(),
                name.clone(),
            );
            tasks.spawn(async move {
                let r = put.await;
                drop(permit);
                (name, r)
            });
        }
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let (name, r) = done.map_err(|e| e.to_string())?;
            match r {
                Ok(_) => t.confirmed(&name),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            // What the server has may differ from what we think: ask again next time.
            t.stale();
            return Err(e);
        }
        if !t.finalized() {
            return Ok(false);
        }
        let Some(manifest) = self.manifest(id).await? else {
            // Finalized, then gone (removed by hand): the next pass lists the recordings anew.
            return Ok(false);
        };
        if t.manifest.as_deref() != Some(neoflix_format::sha256_hex(&manifest).as_str()) {
            // Written again since its objects were taken in (a finalize retried after a failed
            // directory sync may have claimed more): take them in again, then send it.
            log::info!(recording = id; "upload: the manifest changed since it was read; reading it again");
            t.manifest = None;
            self.wake.notify_one();
            return Ok(false);
        }
        // The signature goes only with the manifest it signs: one left by a finalize that was
        // retried is replaced before any manifest exists, and must never reach the server.
        let signed = tokio::fs::try_exists(rdir.join(SIGNATURE_FILE))
            .await
            .map_err(|e| format!("{id}/{SIGNATURE_FILE}: {e}"))?;
        if signed && !complete_there && !t.server.objects.contains(SIGNATURE_FILE) {
            if let Err(e) = put_object(
                self.client.clone(),
                self.down.clone(),
                self.base().to_string(),
                self.dir.clone(),
                id.to_string(),
                SIGNATURE_FILE.to_string(),
            )
            .await
            {
                t.stale();
                return Err(e);
            }
            t.confirmed(SIGNATURE_FILE);
        }
        let r = send(
            self.status,
            &self.down,
            &format!("PUT {id}/manifest"),
            self.client
                .put(format!("{}/v1/recordings/{id}/manifest", self.base()))
                .header("content-type", "application/json")
                .body(manifest.clone()),
            Silent::Wait,
        )
        .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                t.stale();
                return Err(e);
            }
        };
        let code = r.status().as_u16();
        let renamed_here = self.renamed.lock().expect("renamed lock").contains(id);
        if code == 409 && !renamed_here {
            // Complete there with another manifest: another recording has this id (a clock
            // stepped back before ids had a random part, a box restored from a backup). This
            // one gets a new id and goes as a recording of its own. Once a run: a second
            // clash of 32 random bits is a server that answers 409 to everything, and gets
            // the usual back-off rather than a loop of renames and uploads.
            known.remove(id);
            return self.rename(id, error_text(r).await).await.map(|()| false);
        }
        if code != 200 && code != 201 {
            t.stale();
            return Err(format!(
                "PUT {id}/manifest: HTTP {code}: {}",
                error_text(r).await
            ));
        }
        let body = match bounded_body(r, MAX_ANSWER).await {
            Ok(body) => body,
            Err(e) => {
                t.stale();
                return Err(self.went_down(format!("{id}: unreadable receipt: {e}")));
            }
        };
        let local_manifest = neoflix_format::verify::parse_manifest(&manifest)
            .map_err(|e| format!("{id}: local manifest: {e}"))?;
        let (receipt, server) = self
            .server()
            .receipts
            .check(
                &body,
                id,
                &local_manifest.device_id,
                &manifest,
                &local_manifest.chain,
            )
            .map_err(|e| format!("{e}; keeping the recording"))?;
        // Only now, with the receipt checked, does the local copy go.
        remove_local(rdir)
            .await
            .map_err(|e| format!("{id}: delivered, but removing the local copy failed: {e}"))?;
        known.remove(id);
        log::info!(recording = id, fragments = local_manifest.fragments.len(), server = server.as_str(), signed_by = receipt.signed_by.as_str(), receipt = String::from_utf8_lossy(&body).as_ref(); "recording delivered: the server's signed receipt checked, local copy removed");
        self.events.send(neoflix_mqtt::Event::UploadDone {
            recording: id.to_string(),
        });
        let mut st = self.status.lock().expect("status lock");
        st.last_success_utc = Some(neoflix_format::utc(std::time::SystemTime::now()));
        st.delivered += 1;
        Ok(true)
    }

    /// The manifest of recording `id` (`None`: not finalized yet).
    async fn manifest(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        match read_local(self.dir.join(id).join(MANIFEST_FILE), MAX_MANIFEST_BYTES).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{id}/{MANIFEST_FILE}: {e}")),
        }
    }

    /// Gives finalized recording `id` a new id, which the next pass delivers.
    async fn rename(&self, id: &str, why: String) -> Result<(), String> {
        let new = crate::conductor::renamed_id(id, crate::conductor::os_random());
        let (dir, from, to, signer) = (
            self.dir.clone(),
            id.to_string(),
            new.clone(),
            self.signer.clone(),
        );
        tokio::task::spawn_blocking(move || {
            neoflix_store::rename(
                &dir,
                &from,
                &to,
                signer.as_deref(),
                std::time::SystemTime::now(),
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{id}: the server holds another recording under this id ({why}), and renaming this one failed: {e}"))?;
        {
            let mut renamed = self.renamed.lock().expect("renamed lock");
            // Renames are rare; a server forcing them is stopped by this set, which stays small.
            if renamed.len() >= 1024 {
                renamed.clear();
            }
            renamed.insert(new.clone());
        }
        log::warn!(recording = id, renamed_to = new.as_str(), server = &*neoflix_logging::escape_controls(&why); "the server holds another recording under this id: renamed, it is delivered under the new id");
        self.wake.notify_one();
        Ok(())
    }

    /// The server answered that recording `id` was withdrawn: with the notice checked, the
    /// local copy goes. Not while it is still being recorded (no manifest yet): the recorder
    /// owns that directory until it stops, and the next pass asks again.
    async fn withdrawn(&self, id: &str, body: &[u8], finalized: bool) -> Result<bool, String> {
        let (notice, server) = self
            .server()
            .receipts
            .check_withdrawal(body, id, &self.device)
            .map_err(|e| format!("{e}; keeping the recording"))?;
        if !finalized {
            log::debug!(recording = id; "recording withdrawn by the department: deleting it once it stops");
            return Ok(false);
        }
        remove_local(self.dir.join(id))
            .await
            .map_err(|e| format!("{id}: withdrawn, but removing the local copy failed: {e}"))?;
        log::warn!(recording = id, server = server.as_str(), withdrawn_utc = notice.withdrawn_utc.as_str(), notice = String::from_utf8_lossy(body).as_ref(); "recording withdrawn by the department: the server's signed notice checked, local copy deleted");
        Ok(true)
    }

    /// One pass over every recording on the box.
    async fn run(&self, known: &mut Known) -> Result<(), String> {
        let ids = match recording_ids(self.dir.clone()).await {
            Ok(ids) => ids,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", self.dir.display())),
        };
        let on_box: HashSet<&String> = ids.iter().collect();
        known.retain(|id, _| on_box.contains(id));
        let ended = self.ended.lock().expect("ended lock").take();
        let order = pass_order(&ids, ended.as_deref());
        let mut first_error = None;
        let mut gone = 0;
        for id in order {
            match self.recording(id, known).await {
                Ok(true) => gone += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                    if self.servers.len() > 1 && self.down.load(Ordering::Relaxed) {
                        // Another server is waiting: no more of this one's timeouts.
                        *self.ended.lock().expect("ended lock") = Some(id.clone());
                        break;
                    }
                }
            }
        }
        // From memory: delivered and withdrawn recordings are gone from `known`; a renamed one
        // counts under its new name at the next pass.
        let mut st = self.status.lock().expect("status lock");
        st.recordings_pending = ids.len() - gone;
        st.bytes_pending = known.values().map(|t| t.pending_bytes).sum();
        drop(st);
        first_error.map_or(Ok(()), Err)
    }
}

/// The order of a pass over `ids` (oldest first): the recording that ended the last pass goes
/// last, so that one that always finds the server down (a manifest whose check outlasts the
/// timeout) does not keep every other recording from being sent.
fn pass_order<'a>(ids: &'a [String], ended: Option<&str>) -> Vec<&'a String> {
    let mut order: Vec<&String> = ids.iter().collect();
    if let Some(ended) = ended {
        order.sort_by_key(|id| id.as_str() == ended);
    }
    order
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let f = 0.5 + (u16::from_le_bytes(b) as f64 / u16::MAX as f64);
    d.mul_f64(f)
}

/// Runs the uplink until `stop` turns true.
pub async fn run(
    settings: UplinkSettings,
    client: reqwest::Client,
    status: Arc<Mutex<UploadStatus>>,
    wake: Arc<Notify>,
    events: crate::Events,
    stop: watch::Receiver<bool>,
) {
    let (passes, _) = watch::channel(0);
    run_counting(settings, client, status, wake, events, passes, stop).await;
}

/// [`run`], counting passes in `passes`: after each, `status` holds the queue as it is now, for
/// whoever publishes it.
pub async fn run_counting(
    settings: UplinkSettings,
    client: reqwest::Client,
    status: Arc<Mutex<UploadStatus>>,
    wake: Arc<Notify>,
    events: crate::Events,
    passes: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
) {
    let Some(first) = settings.servers.first() else {
        log::error!("upload: no ingest server configured; recordings stay on the box");
        return;
    };
    status.lock().expect("status lock").server = Some(first.url.clone());
    let delivery = Delivery {
        pass: Pass {
            client: &client,
            servers: &settings.servers,
            current: AtomicUsize::new(0),
            down: Arc::new(AtomicBool::new(false)),
            ended: Mutex::new(None),
            dir: settings.recordings_dir.clone(),
            status: &status,
            events: &events,
            device: settings.device.clone(),
            signer: settings.signer.clone(),
            wake: &wake,
            renamed: Mutex::new(HashSet::new()),
        },
        known: Known::new(),
    };
    schedule(delivery, &status, &wake, jitter, &passes, stop).await;
}

/// One pass over the recordings, again and again.
trait Attempt {
    /// One pass; the error says what failed.
    fn attempt(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The real passes, and what they remember in between.
struct Delivery<'a> {
    /// What every pass works with.
    pass: Pass<'a>,
    /// Objects the server confirmed, per recording.
    known: Known,
}

impl Attempt for Delivery<'_> {
    async fn attempt(&mut self) -> Result<(), String> {
        self.pass.down.store(false, Ordering::Relaxed);
        let r = self.pass.run(&mut self.known).await;
        if r.is_err() && self.pass.down.load(Ordering::Relaxed) {
            self.pass.fail_over(&mut self.known);
        }
        r
    }
}

/// When the next pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// After a failure: this long (before jitter), even if woken.
    Backoff(Duration),
    /// After a success: until woken, or this long at most.
    Idle(Duration),
}

/// The retry schedule: after a failure 1 s, doubling to 60 s; after a success the next pass when
/// the storage side wakes the uplink (a claim, a finalize) or 10 s later.
#[derive(Debug)]
struct Schedule {
    backoff: Duration,
}

impl Schedule {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);
    const IDLE: Duration = Duration::from_secs(10);

    fn after(&mut self, ok: bool) -> Wait {
        if ok {
            self.backoff = Self::FIRST;
            return Wait::Idle(Self::IDLE);
        }
        let wait = self.backoff;
        self.backoff = (wait * 2).min(Self::MAX);
        Wait::Backoff(wait)
    }
}

/// Runs passes as [`Schedule`] says until `stop`, keeping the status's last error and counting
/// passes in `done`.
async fn schedule(
    mut passes: impl Attempt,
    status: &Mutex<UploadStatus>,
    wake: &Notify,
    jitter: fn(Duration) -> Duration,
    done: &watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut plan = Schedule {
        backoff: Schedule::FIRST,
    };
    loop {
        let result = tokio::select! {
            r = passes.attempt() => r,
            _ = stop.changed() => return,
        };
        let wait = plan.after(result.is_ok());
        match result {
            Ok(()) => status.lock().expect("status lock").last_error = None,
            Err(e) => {
                let retry_secs = match wait {
                    Wait::Backoff(d) | Wait::Idle(d) => d.as_secs(),
                };
                log::warn!(retry_secs = retry_secs; "upload: {e}; retrying (recordings stay on the box until the server confirms them)");
                status.lock().expect("status lock").last_error = Some(e);
            }
        }
        done.send_modify(|n| *n += 1);
        match wait {
            // After a failure, wait out the back-off even if woken.
            Wait::Backoff(d) => tokio::select! {
                _ = tokio::time::sleep(jitter(d)) => {}
                _ = stop.changed() => return,
            },
            Wait::Idle(d) => tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(d) => {}
                _ = stop.changed() => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Passes that fail while `failing` says so, and when each ran.
    struct Scripted {
        failing: Arc<Mutex<bool>>,
        ran: Arc<Mutex<Vec<Instant>>>,
    }

    impl Attempt for Scripted {
        async fn attempt(&mut self) -> Result<(), String> {
            self.ran.lock().unwrap().push(Instant::now());
            match *self.failing.lock().unwrap() {
                true => Err("connection refused".into()),
                false => Ok(()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_passes_back_off_to_a_minute_and_a_success_starts_over() {
        let failing = Arc::new(Mutex::new(true));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(UploadStatus::default()));
        let wake = Arc::new(Notify::new());
        let (stop_tx, stop) = watch::channel(false);
        let passes = Scripted {
            failing: failing.clone(),
            ran: ran.clone(),
        };
        let t0 = Instant::now();
        let task = {
            let (status, wake) = (status.clone(), wake.clone());
            // No jitter here: the schedule itself is what is tested.
            let done = watch::channel(0).0;
            tokio::spawn(async move { schedule(passes, &status, &wake, |d| d, &done, stop).await })
        };
        let offsets = |from: usize| -> Vec<u64> {
            ran.lock().unwrap()[from..]
                .iter()
                .map(|t| (*t - t0).as_secs())
                .collect()
        };
        tokio::time::sleep(Duration::from_secs(200)).await;
        // 1, 2, 4, ... capped at 60 s between passes.
        assert_eq!(offsets(0), vec![0, 1, 3, 7, 15, 31, 63, 123, 183]);
        assert_eq!(
            status.lock().unwrap().last_error.as_deref(),
            Some("connection refused")
        );
        // Woken during a back-off (a fragment was claimed): the back-off is still waited out,
        // and the wake is not lost: one more pass follows the next success at once.
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ran.lock().unwrap().len(), 9);

        // The server is back: the next pass succeeds and the error clears.
        *failing.lock().unwrap() = false;
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(offsets(9), vec![243, 243]);
        assert_eq!(status.lock().unwrap().last_error, None);
        // Idle: a pass every 10 s, or at once when woken.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(offsets(11), vec![253, 263]);
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(offsets(13), vec![271]);
        // A new failure starts the back-off over at 1 s.
        *failing.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert_eq!(offsets(14), vec![281, 282, 284]);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}

#[cfg(test)]
mod pace {
    use super::*;
    use tokio::time::Instant;

    const P: Pace = Pace {
        stall: Duration::from_secs(60),
        answer: Duration::from_secs(120),
    };

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn sent(taken: u64) -> BodySeen {
        BodySeen {
            taken,
            reading: false,
        }
    }

    /// The body, `len` bytes, all taken: the PUT still waits at `quiet`, and is given up at
    /// `stop` for want of an answer in the `secs` it was allowed.
    fn gives_up(w: &mut Watch, len: u64, quiet: Instant, stop: Instant, secs: u64) {
        assert_eq!(w.look(sent(len), quiet), None);
        assert_eq!(w.look(sent(len), stop), Some(Stop::Unanswered { secs }));
    }

    /// A body that keeps moving goes on however long it takes: a gigabyte at a slow site's
    /// few Mbit/s is an hour, far past the 120 s a request with a small body gets.
    #[test]
    fn a_body_that_keeps_moving_goes_on_past_any_fixed_timeout() {
        let t0 = Instant::now();
        let len = 1 << 30;
        let mut w = Watch::new(P, len, t0);
        for s in 1..=3600u64 {
            assert_eq!(w.look(sent(s * (len / 4000)), at(t0, s)), None, "at {s} s");
        }
    }

    /// No byte taken for the stall time ends the PUT, naming how far it got; a byte taken
    /// just before starts the count again.
    #[test]
    fn a_body_that_stops_moving_ends_after_the_stall_time() {
        let t0 = Instant::now();
        let mut w = Watch::new(P, 1000, t0);
        assert_eq!(w.look(sent(0), at(t0, 59)), None);
        assert_eq!(w.look(sent(10), at(t0, 59)), None);
        assert_eq!(w.look(sent(10), at(t0, 118)), None);
        let stop = w
            .look(sent(10), at(t0, 119))
            .expect("a stalled body went on");
        assert_eq!(
            stop,
            Stop::Stalled {
                secs: 60,
                taken: 10,
                len: 1000
            }
        );
        assert!(stop.to_string().contains("10 of 1000 bytes"), "{stop}");
        // Nothing taken from the start is a stall too.
        let mut w = Watch::new(P, 1000, t0);
        assert!(matches!(
            w.look(sent(0), at(t0, 60)),
            Some(Stop::Stalled { .. })
        ));
    }

    /// A body stalled while the connection waits on the box's own file is the box's storage,
    /// not the server (which is then not given up for another).
    #[test]
    fn a_stall_waiting_on_the_file_is_the_boxs_own() {
        let t0 = Instant::now();
        let mut w = Watch::new(P, 1000, t0);
        let waiting = BodySeen {
            taken: 100,
            reading: true,
        };
        assert_eq!(w.look(waiting, at(t0, 1)), None);
        assert_eq!(
            w.look(waiting, at(t0, 61)),
            Some(Stop::FileStalled {
                secs: 60,
                taken: 100,
                len: 1000
            })
        );
    }

    /// Once the whole body is taken, the answer gets its own time from then, however long
    /// the body took; the stall time no longer applies.
    #[test]
    fn the_answer_is_waited_for_from_when_the_whole_body_was_taken() {
        let t0 = Instant::now();
        let mut w = Watch::new(P, 1000, t0);
        assert_eq!(w.look(sent(500), at(t0, 50)), None);
        assert_eq!(w.look(sent(1000), at(t0, 100)), None);
        // (Smaller than the box's buffers: what took 100 s to be taken may take as long to
        // leave.)
        gives_up(&mut w, 1000, at(t0, 100 + 219), at(t0, 100 + 220), 220);
        let mut w = Watch::new(P, 1000, t0);
        assert_eq!(w.look(sent(1000), t0), None);
        gives_up(&mut w, 1000, at(t0, 119), at(t0, 120), 120);
        // An empty body is taken whole from the start.
        let mut w = Watch::new(P, 0, t0);
        gives_up(&mut w, 0, at(t0, 119), at(t0, 120), 120);
    }

    /// A large body taken slowly is still partly in the box's buffers when the count is
    /// full: the answer's time gets what its last 5 MiB took. 50 MiB over 1000 s leaves them
    /// 100 s more.
    #[test]
    fn the_box_s_buffers_get_their_time_to_empty_at_the_pace_the_body_went() {
        let t0 = Instant::now();
        let len = 50 << 20;
        let mut w = Watch::new(P, len, t0);
        for s in 1..=1000u64 {
            assert_eq!(w.look(sent(s * len / 1000), at(t0, s)), None, "at {s} s");
        }
        gives_up(&mut w, len, at(t0, 1000 + 219), at(t0, 1000 + 220), 220);
    }

    /// A body that went fast and then slowed is given its last 5 MiB's time, not the average
    /// pace's: 95 MiB in 10 s, then 5 MiB in 200 s, leaves 200 s more (the average would have
    /// given 10 s, and the PUT would have ended with its last megabytes still on their way).
    #[test]
    fn the_buffers_get_the_recent_pace_after_a_slowdown() {
        let t0 = Instant::now();
        let mib = 1u64 << 20;
        let len = 100 * mib;
        let mut w = Watch::new(P, len, t0);
        for s in 1..=10u64 {
            assert_eq!(w.look(sent(s * 95 * mib / 10), at(t0, s)), None);
        }
        for s in 1..=200u64 {
            assert_eq!(
                w.look(sent(95 * mib + s * 5 * mib / 200), at(t0, 10 + s)),
                None
            );
        }
        gives_up(&mut w, len, at(t0, 210 + 319), at(t0, 210 + 320), 320);
    }

    /// A body a little larger than the box's buffers fills them at once, and the rest is taken
    /// as the link lets bytes out: the buffers get their time at that pace, not at the
    /// average that the instant filling makes fast. 5 MiB at once, then 3 MiB over 60 s,
    /// leaves them 100 s more.
    #[test]
    fn a_body_that_fills_the_buffers_at_once_gets_the_pace_after() {
        let t0 = Instant::now();
        let mib = 1u64 << 20;
        let len = 8 * mib;
        let mut w = Watch::new(P, len, t0);
        assert_eq!(w.look(sent(5 * mib), t0), None);
        for s in 1..=60u64 {
            assert_eq!(w.look(sent(5 * mib + s * 3 * mib / 60), at(t0, s)), None);
        }
        gives_up(&mut w, len, at(t0, 60 + 219), at(t0, 60 + 220), 220);
    }

    /// On a slow link the count moves only when a third of the socket's buffer has drained,
    /// tens of seconds apart: the pace is still that of the body's last 5 MiB, however few
    /// looks saw it move. 95 MiB in 10 s, then 5 MiB in four steps 40 s apart, leaves the
    /// buffers 160 s (a window of so many looks would reach back into the fast part and give
    /// them some 10 s).
    #[test]
    fn the_pace_is_the_last_5_mib_s_however_rarely_the_count_moved() {
        let t0 = Instant::now();
        let mib = 1u64 << 20;
        let len = 100 * mib;
        let mut w = Watch::new(P, len, t0);
        for s in 1..=10u64 {
            assert_eq!(w.look(sent(s * 95 * mib / 10), at(t0, s)), None);
        }
        for s in 11..=170u64 {
            let steps = (s - 10) / 40;
            assert_eq!(
                w.look(sent(95 * mib + steps * 5 * mib / 4), at(t0, s)),
                None,
                "at {s}"
            );
        }
        gives_up(&mut w, len, at(t0, 170 + 279), at(t0, 170 + 280), 280);
    }

    /// A window of few bytes is scaled up at most fourfold, not to an age: 5 MiB at once,
    /// and one byte more 20 s later, leaves the buffers 80 s.
    #[test]
    fn a_window_of_few_bytes_is_scaled_at_most_fourfold() {
        let t0 = Instant::now();
        let len = (5 << 20) + 1;
        let mut w = Watch::new(P, len, t0);
        assert_eq!(w.look(sent(5 << 20), t0), None);
        assert_eq!(w.look(sent(len), at(t0, 20)), None);
        gives_up(&mut w, len, at(t0, 20 + 199), at(t0, 20 + 200), 200);
    }

    /// A body a little larger than the buffers (6 MiB: 5 at once, the last 1 MiB over 50 s)
    /// has a window of less than 5 MiB: its pace is scaled up to the buffers, 200 s, not
    /// left at the 50 s the whole body took (the buffers' 5 MiB need some 256 s at that
    /// pace).
    #[test]
    fn a_body_just_larger_than_the_buffers_gets_their_time_at_its_pace() {
        let t0 = Instant::now();
        let mib = 1u64 << 20;
        let len = 6 * mib;
        let mut w = Watch::new(P, len, t0);
        assert_eq!(w.look(sent(5 * mib), t0), None);
        for s in 1..=50u64 {
            assert_eq!(w.look(sent(5 * mib + s * mib / 50), at(t0, s)), None);
        }
        gives_up(&mut w, len, at(t0, 50 + 319), at(t0, 50 + 320), 320);
    }

    /// A window whose first look came in a fast stretch starts where the count passed the
    /// last 5 MiB, between its first two looks: 12 MiB, then 16 MiB a second later, then 4
    /// MiB a frame every 3 s puts it 0.75 s into that second, and leaves the buffers 192.25
    /// s (not the 120 s the whole 8 MiB since the first look would give).
    #[test]
    fn a_window_starts_where_the_count_passed_the_last_5_mib() {
        let t0 = Instant::now();
        let mib = 1u64 << 20;
        let len = 20 * mib;
        let mut w = Watch::new(P, len, t0);
        assert_eq!(w.look(sent(12 * mib), at(t0, 1)), None);
        assert_eq!(w.look(sent(16 * mib), at(t0, 2)), None);
        for f in 1..=64u64 {
            let taken = 16 * mib + f * FRAME as u64;
            assert_eq!(w.look(sent(taken), at(t0, 2 + 3 * f)), None);
        }
        gives_up(&mut w, len, at(t0, 194 + 312), at(t0, 194 + 313), 312);
    }

    #[test]
    fn a_small_body_taken_at_once_gets_the_answer_s_time_alone() {
        let t0 = Instant::now();
        let mut w = Watch::new(P, 4 << 20, t0);
        assert_eq!(w.look(sent(4 << 20), at(t0, 0)), None);
        gives_up(&mut w, 4 << 20, at(t0, 119), at(t0, 120), 120);
    }

    /// The bound of last resort covers a body at the slowest rate a server takes by default,
    /// and the watch's own limits.
    #[test]
    fn the_backstop_lets_the_slowest_accepted_body_finish() {
        assert_eq!(P.backstop(0), Duration::from_secs(180));
        assert_eq!(P.backstop(4096 * 1000), Duration::from_secs(1180));
        assert_eq!(P.look_every(), Duration::from_millis(3750));
    }

    /// A streamed body hands its chunks over in frames, counts each as the connection takes
    /// it, and says so while the connection waits on the file.
    #[test]
    fn a_file_body_counts_what_it_hands_over_and_says_when_it_waits_on_the_file() {
        use http_body::Body as _;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let progress = Arc::new(Progress::default());
        let mut body = FileBody {
            rx,
            chunk: bytes::Bytes::new(),
            left: (CHUNK + 10) as u64,
            progress: progress.clone(),
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut poll = |b: &mut FileBody| std::pin::Pin::new(b).poll_frame(&mut cx);
        assert!(poll(&mut body).is_pending());
        assert!(progress.seen().reading);
        tx.try_send(Ok(bytes::Bytes::from(vec![1u8; CHUNK])))
            .unwrap();
        let mut frames = 0;
        while let std::task::Poll::Ready(Some(Ok(f))) = poll(&mut body) {
            assert_eq!(f.into_data().unwrap().len(), FRAME);
            frames += 1;
        }
        assert_eq!(frames, CHUNK / FRAME);
        assert_eq!(progress.seen().taken, CHUNK as u64);
        assert!(progress.seen().reading, "waiting on the file again");
        assert_eq!(body.size_hint().exact(), Some(10));
        tx.try_send(Ok(bytes::Bytes::from(vec![2u8; 10]))).unwrap();
        drop(tx);
        let std::task::Poll::Ready(Some(Ok(f))) = poll(&mut body) else {
            panic!("the last frame")
        };
        assert_eq!(f.into_data().unwrap().len(), 10);
        assert!(!progress.seen().reading);
        assert!(matches!(poll(&mut body), std::task::Poll::Ready(None)));
        assert_eq!(progress.seen().taken, CHUNK as u64 + 10);
    }
}

#[cfg(test)]
mod local_files {
    use super::*;

    /// A plain-HTTP server that answers an object's PUT 201 when its body has the digest its
    /// request announces, else 400, as the department server does; what each PUT's announced
    /// digest turned out to be (true: the body's).
    async fn digest_checking_server() -> (String, Arc<Mutex<Vec<bool>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            'accept: while let Ok((mut c, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match c.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        // A request given up by the box: nothing is stored.
                        _ => continue 'accept,
                    }
                };
                let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                        .unwrap()
                };
                let len: usize = header("content-length").parse().unwrap();
                let mut body = buf[end..].to_vec();
                while body.len() < len {
                    match c.read(&mut chunk).await {
                        Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
                        _ => continue 'accept,
                    }
                }
                let announced = header("content-digest");
                let actual = format!(
                    "sha-256=:{}:",
                    base64::engine::general_purpose::STANDARD
                        .encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
                );
                let matches = announced == actual;
                record.lock().unwrap().push(matches);
                let status = if matches {
                    "201 Created"
                } else {
                    "400 Bad Request"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                c.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (base, seen)
    }

    /// The digest the ring records with a fragment is what the box sends; bytes changed on
    /// the box's storage since (same size, the record kept) were refused for ever. They are
    /// sent as they are, once the server refused the record.
    #[tokio::test]
    async fn an_object_changed_since_its_digest_was_recorded_is_sent_as_it_is_now() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rec")).unwrap();
        let path = d.path().join("rec/frag-000000.nfx");
        neoflix_format::files::write_with_digest(&path, b"as the ring wrote it", 0o600).unwrap();
        let (base, seen) = digest_checking_server().await;
        let down = Arc::new(AtomicBool::new(false));
        let client = plain_client(d.path());
        let put = || {
            put_object(
                client.clone(),
                down.clone(),
                base.clone(),
                d.path().to_owned(),
                "rec".into(),
                "frag-000000.nfx".into(),
            )
        };
        put().await.unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"as the card keeps it")
            .unwrap();
        put().await.unwrap();
        let recorded = neoflix_format::files::read_regular_recorded(&path, 1 << 20)
            .unwrap()
            .1
            .is_some();
        // Where this filesystem keeps no user attributes, the box hashed each time.
        let expected = match recorded {
            true => vec![true, false, true],
            false => vec![true, true],
        };
        assert_eq!(*seen.lock().unwrap(), expected);
        assert!(!down.load(Ordering::Relaxed));
    }

    /// An object too large to be read whole streams and arrives whole under its recorded
    /// digest, as a small one without a record does under its hash; the uplink read every
    /// object whole into memory before (up to a gigabyte, eight at once).
    #[tokio::test]
    async fn an_object_of_many_chunks_streams_whole_with_its_digest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rec")).unwrap();
        let mut bytes = vec![0u8; WHOLE as usize + 5 * CHUNK + 123];
        getrandom::fill(&mut bytes).unwrap();
        neoflix_format::files::write_with_digest(
            &d.path().join("rec/frag-000000.nfx"),
            &bytes,
            0o600,
        )
        .unwrap();
        std::fs::write(d.path().join("rec/frag-000000.key"), &bytes[..3 * CHUNK]).unwrap();
        let big = Outgoing::open(&d.path().join("rec/frag-000000.nfx"), false).unwrap();
        assert!(matches!(big.source, Source::File(_)), "not streamed");
        // (where this filesystem keeps no user attributes, it was hashed, then streamed)
        let keeps = neoflix_format::files::recorded_digest(
            &std::fs::File::open(d.path().join("rec/frag-000000.nfx")).unwrap(),
            bytes.len() as u64,
        )
        .is_some();
        assert_eq!(big.recorded, keeps);
        let (base, seen) = digest_checking_server().await;
        let client = plain_client(d.path());
        for name in ["frag-000000.nfx", "frag-000000.key"] {
            put_object(
                client.clone(),
                Arc::new(AtomicBool::new(false)),
                base.clone(),
                d.path().to_owned(),
                "rec".into(),
                name.into(),
            )
            .await
            .unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), vec![true, true]);
    }

    /// How [`paced_server`] treats a PUT's body.
    #[derive(Clone, Copy)]
    enum Reading {
        /// Reads it at most 256 KiB at a time, 20 ms apart (some 10 MB/s), then answers 201.
        Slowly,
        /// Reads nothing of it, and never answers.
        Nothing,
        /// Reads all of it, and never answers.
        AllButAnswers,
    }

    /// A plain-HTTP server with a receive buffer of 256 KiB, so that what the box's connection
    /// takes of a body follows what the server reads (a few MiB behind: the box's socket
    /// buffer); how many bodies it read whole.
    async fn paced_server(reading: Reading) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(256 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(8).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let whole = Arc::new(AtomicUsize::new(0));
        let count = whole.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut piece = vec![0u8; 256 * 1024];
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match c.read(&mut piece[..1024]).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&piece[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    if let Reading::Nothing = reading {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let mut got = buf.len() - end;
                    while got < len {
                        if let Reading::Slowly = reading {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        match c.read(&mut piece).await {
                            Ok(n) if n > 0 => got += n,
                            _ => return,
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Reading::AllButAnswers = reading {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let _ = c
                        .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        (base, whole)
    }

    /// A client whose own timeout (0.5 s) stands for the 120 s a request with a small body
    /// gets: shorter than the bodies below take.
    fn impatient_client(dir: &std::path::Path) -> reqwest::Client {
        neoflix_pki::Ca::init(&dir.join("ca"), "test CA").unwrap();
        let tls = neoflix_pki::client_tls(&dir.join("ca/ca.crt"), None).unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    }

    /// [`send_object_paced`] of an object of `len` random bytes to a [`paced_server`], with a
    /// stall time of 1 s and an answer time of `answer` s: what it came to, whether the server
    /// was marked down, and how many bodies the server read whole.
    async fn paced_put(
        len: usize,
        reading: Reading,
        answer: u64,
    ) -> (Result<u16, String>, bool, usize) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("frag-000000.nfx");
        let mut bytes = vec![0u8; len];
        getrandom::fill(&mut bytes).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let out = Outgoing::open(&path, false).unwrap();
        let (base, whole) = paced_server(reading).await;
        let down = AtomicBool::new(false);
        let pace = Pace {
            stall: Duration::from_secs(1),
            answer: Duration::from_secs(answer),
        };
        let client = impatient_client(d.path());
        let url = format!("{base}/v1/recordings/rec/objects/frag-000000.nfx");
        let put = send_object_paced(&client, &down, &url, "rec/frag-000000.nfx", out, pace);
        // Far beyond what the pace allows: a PUT the watch failed to end fails here.
        let r = tokio::time::timeout(Duration::from_secs(60), put)
            .await
            .expect("the PUT was not ended by its pace");
        (
            r.map(|r| r.status().as_u16()),
            down.load(Ordering::Relaxed),
            whole.load(Ordering::Relaxed),
        )
    }

    /// Larger than what the box's socket buffer (up to 4 MiB here) and the server's hold
    /// between them: the body's progress is the server's reading.
    const BEYOND_BUFFERS: usize = 12 << 20;

    /// A large object whose body takes longer than a request's timeout on a slow link, but
    /// keeps moving, is delivered. The whole-request timeout failed it on every pass, and
    /// marked the server down each time.
    #[tokio::test]
    async fn an_object_slower_than_the_request_timeout_is_delivered_while_it_moves() {
        // (What the buffers hold when the body is all taken still has to reach the server:
        // ample time for that, on a loaded machine too.)
        let (r, down, whole) = paced_put(BEYOND_BUFFERS, Reading::Slowly, 10).await;
        assert_eq!(r, Ok(201));
        assert!(!down, "the server was marked down");
        assert_eq!(whole, 1);
    }

    /// A server that stops taking the body, or takes it all (from memory or streamed) and
    /// never answers, ends the PUT after the pace's time with a reason, and is marked down.
    #[tokio::test]
    async fn a_body_that_stops_moving_or_an_answer_that_never_comes_ends_the_put() {
        let (r, down, _) = paced_put(BEYOND_BUFFERS, Reading::Nothing, 1).await;
        let e = r.unwrap_err();
        assert!(
            e.contains("has taken nothing more of the body for 1 s"),
            "{e}"
        );
        assert!(down);
        for len in [3 << 20, BEYOND_BUFFERS] {
            let (r, down, whole) = paced_put(len, Reading::AllButAnswers, 1).await;
            let e = r.unwrap_err();
            assert!(
                e.contains("the whole body was handed to the connection, and no answer came in"),
                "{e}"
            );
            assert!(down);
            assert_eq!(whole, 1);
        }
    }

    /// The box's kind of client, for a plain-HTTP server on loopback (its TLS needs a CA to be
    /// built).
    fn plain_client(dir: &std::path::Path) -> reqwest::Client {
        neoflix_pki::Ca::init(&dir.join("ca"), "test CA").unwrap();
        let tls = neoflix_pki::client_tls(&dir.join("ca/ca.crt"), None).unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// Sends `out`, whose file changed size since it was opened, to a server that checks
    /// digests: the request fails naming the file, the server is not marked down (which would
    /// move the box to another server and end the pass), and nothing is stored.
    async fn fails_as_the_boxs_own_trouble(dir: &std::path::Path, out: Outgoing) {
        let (base, seen) = digest_checking_server().await;
        let down = AtomicBool::new(false);
        let e = send_object(
            &plain_client(dir),
            &down,
            &format!("{base}/v1/recordings/rec/objects/frag-000000.nfx"),
            "rec/frag-000000.nfx",
            out,
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("reading the file") && e.contains("changed size"),
            "{e}"
        );
        assert!(!down.load(Ordering::Relaxed), "the server was marked down");
        assert!(
            seen.lock().unwrap().is_empty(),
            "stored: {:?}",
            seen.lock().unwrap()
        );
    }

    /// A streamed file that shrinks before it is sent fails its request as the box's own
    /// trouble: the server is not marked down (which would move the box to another server and
    /// end the pass), and nothing is stored.
    #[tokio::test]
    async fn a_file_that_shrinks_while_it_streams_fails_its_request_not_the_server() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("frag-000000.nfx");
        std::fs::write(&path, vec![7u8; WHOLE as usize + 10 * CHUNK]).unwrap();
        let out = Outgoing::open(&path, false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(CHUNK as u64 + 10)
            .unwrap();
        fails_as_the_boxs_own_trouble(d.path(), out).await;
    }

    /// A streamed file that grew since it was opened fails its request as the box's own
    /// trouble: its first bytes, which match the digest announced, are not stored as the
    /// object. (Looked for after the last chunk, the growth went unseen: the client had taken
    /// the body as whole.)
    #[tokio::test]
    async fn a_file_that_grows_while_it_streams_fails_its_request_not_the_server() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("frag-000000.nfx");
        std::fs::write(&path, vec![7u8; WHOLE as usize + 3 * CHUNK]).unwrap();
        let out = Outgoing::open(&path, false).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        fails_as_the_boxs_own_trouble(d.path(), out).await;
    }

    /// A FIFO planted in a recording directory hung the uplink for ever (it read with
    /// `tokio::fs::read`, which waits for a writer).
    #[tokio::test]
    async fn a_fifo_in_a_recording_is_refused_not_waited_on() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("frag-000001.nfx");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let r = tokio::time::timeout(Duration::from_secs(10), read_local(fifo, MAX_LOCAL_OBJECT))
            .await
            .expect("read_local waited on a FIFO");
        assert!(r.unwrap_err().to_string().contains("FIFO"));
    }
}

#[cfg(test)]
mod tracking {
    use super::*;

    fn touch(dir: &std::path::Path, name: &str, len: usize) {
        std::fs::write(dir.join(name), vec![0u8; len]).unwrap();
    }

    #[test]
    fn a_fragment_goes_once_the_next_one_has_begun_and_old_files_are_not_looked_at_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        touch(dir, "journal.jsonl", 10);
        touch(dir, "init-000.key", 1);
        touch(dir, "init-000.nfx", 2);
        touch(dir, "frag-000000.key", 3);
        touch(dir, "frag-000000.nfx", 4);
        // Fragment 0 may still be placed again by a retried claim, its init segment's key
        // record written again: nothing yet.
        let (found, next) = scan_open(dir, 0).unwrap();
        assert!(found.is_empty());
        assert_eq!(next, 0);
        touch(dir, "frag-000001.key", 5);
        let (found, next) = scan_open(dir, next).unwrap();
        assert_eq!(
            found,
            vec![("frag-000000.key".into(), 3), ("frag-000000.nfx".into(), 4)]
        );
        assert_eq!(next, 1);
        // What was found is not looked at again: gone (or changed) files cost nothing.
        for f in ["frag-000000.key", "frag-000000.nfx"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        let (found, again) = scan_open(dir, next).unwrap();
        assert!(found.is_empty());
        assert_eq!(again, next);
        // A hole in a recording that goes on past it is named.
        touch(dir, "frag-000002.key", 1);
        let e = scan_open(dir, next).unwrap_err().to_string();
        assert!(e.contains("frag-000001.nfx is missing"), "{e}");
    }

    #[test]
    fn a_finalized_recording_is_what_its_manifest_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let entry = |file: &str| neoflix_format::ObjectEntry {
            index: 0,
            file: file.into(),
            size: 0,
            sha256: String::new(),
            key_file: file.replace(".nfx", ".key"),
            key_sha256: String::new(),
            init: None,
            duration_ms: None,
        };
        let mut m = neoflix_format::Manifest {
            format: neoflix_format::manifest::FORMAT.into(),
            device_id: "room".into(),
            recording_id: "room-20261129T200000Z-0a1b2c3d".into(),
            renamed_from: None,
            status: neoflix_format::Status::Complete,
            trigger: "control".into(),
            stop_reason: "control".into(),
            first_frame_utc: None,
            trigger_utc: String::new(),
            stop_utc: String::new(),
            preroll_secs: 0.0,
            duration_secs: 0.0,
            recipient_key_id: String::new(),
            markers: Vec::new(),
            clock_steps: Vec::new(),
            init_segments: vec![entry("init-000.nfx")],
            fragments: vec![entry("frag-000000.nfx")],
            chain: String::new(),
        };
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        for (f, len) in [
            ("init-000.key", 1),
            ("init-000.nfx", 2),
            ("frag-000000.nfx", 4),
        ] {
            touch(dir, f, len);
        }
        // A stray file the manifest does not name is never sent.
        touch(dir, "frag-000001.nfx", 8);
        let named = scan_manifest(dir).unwrap();
        assert_eq!(named.id, m.recording_id);
        assert_eq!(
            named.objects,
            vec![
                ("init-000.key".into(), 1),
                ("init-000.nfx".into(), 2),
                // Not on the box: the server may hold it; counted as nothing.
                ("frag-000000.key".into(), 0),
                ("frag-000000.nfx".into(), 4),
            ]
        );
        assert_eq!(
            named.sha256,
            neoflix_format::sha256_hex(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap())
        );
        // A name that is not an object's is refused.
        m.fragments[0].file = "../../etc/shadow".into();
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = scan_manifest(dir).err().unwrap();
        assert!(e.contains("not an object of a recording"), "{e}");
    }

    #[test]
    fn a_symlink_in_a_recording_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("frag-000001.key")).unwrap();
        let e = scan_open(d.path(), 0).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn what_is_pending_follows_the_box_and_the_server() {
        let mut t = Tracked::default();
        t.found(vec![
            ("init-000.key".into(), 1),
            ("init-000.nfx".into(), 10),
        ]);
        assert_eq!(t.pending_bytes, 11);
        t.heard(OnServer {
            objects: ["init-000.key".to_string()].into(),
            complete: false,
        });
        assert_eq!(t.pending.iter().collect::<Vec<_>>(), ["init-000.nfx"]);
        assert_eq!(t.pending_bytes, 10);
        t.found(vec![
            ("frag-000000.key".into(), 2),
            ("frag-000000.nfx".into(), 100),
        ]);
        // Found twice (a manifest naming what was found while recording): counted once.
        t.found(vec![("frag-000000.key".into(), 2)]);
        assert_eq!(t.pending_bytes, 112);
        t.confirmed("frag-000000.nfx");
        t.confirmed("frag-000000.nfx");
        assert_eq!(t.pending_bytes, 12);
        // The manifest: these objects and no others.
        t.finalize(Named {
            id: "r".into(),
            objects: vec![
                ("init-000.key".into(), 1),
                ("init-000.nfx".into(), 10),
                ("frag-000000.key".into(), 2),
                ("frag-000000.nfx".into(), 100),
                ("frag-000001.key".into(), 3),
                ("frag-000001.nfx".into(), 200),
            ],
            sha256: "ab".into(),
        });
        assert!(t.finalized());
        assert_eq!(t.pending_bytes, 10 + 2 + 3 + 200);
        // A failed request: the server is asked again, and its word replaces what was known.
        t.stale();
        assert!(!t.asked);
        t.heard(OnServer {
            objects: HashSet::new(),
            complete: false,
        });
        assert_eq!(t.pending.len(), 6);
        assert_eq!(t.pending_bytes, 316);
    }
}

#[cfg(test)]
mod failover {
    use super::*;

    #[test]
    fn the_recording_that_ended_a_pass_goes_last_in_the_next() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pass_order(&ids, None), ["a", "b", "c"]);
        assert_eq!(pass_order(&ids, Some("a")), ["b", "c", "a"]);
        assert_eq!(pass_order(&ids, Some("b")), ["a", "c", "b"]);
        // Gone since: the order stays.
        assert_eq!(pass_order(&ids, Some("x")), ["a", "b", "c"]);
    }

    /// Found by review: on a shared store a replica answers a manifest sent again with the
    /// receipt another replica signed, for that replica's host.
    #[test]
    fn a_receipt_signed_for_another_server_of_the_list_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let ca = neoflix_pki::Ca::init(d.path(), "test CA").unwrap();
        let (crt, key) = ca
            .issue("ingest-b.example", neoflix_pki::Role::Server, None)
            .unwrap();
        let server = neoflix_format::SigningIdentity::from_pem(
            &std::fs::read(crt).unwrap(),
            &std::fs::read(key).unwrap(),
        )
        .unwrap();
        let manifest = b"{\"a manifest\":1}";
        let r = neoflix_format::Receipt {
            recording_id: "r".into(),
            device_id: "d".into(),
            received_utc: "t".into(),
            manifest_sha256: neoflix_format::sha256_hex(manifest),
            chain: "c".into(),
            fragments: 1,
            bytes: 1,
            signed_by: "d".into(),
        };
        let body = neoflix_format::SignedReceipt::sign(&r, &server, std::time::SystemTime::now())
            .unwrap()
            .to_json();
        let ca_pem = std::fs::read(d.path().join("ca.crt")).unwrap();
        let urls = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let both = ReceiptCheck::new(
            &ca_pem,
            &urls(&[
                "https://ingest-a.example:8443",
                "https://ingest-b.example:8443/",
            ]),
        )
        .unwrap();
        let (_, signer) = both.check(&body, "r", "d", manifest, "c").unwrap();
        assert_eq!(signer, "ingest-b.example");
        // A server outside the list is not the department's.
        let only_a = ReceiptCheck::new(&ca_pem, &urls(&["https://ingest-a.example"])).unwrap();
        let e = only_a.check(&body, "r", "d", manifest, "c").unwrap_err();
        assert!(e.contains("the receipt's signature"), "{e}");
    }
}
