//! The upload protocol's routes (see `docs/upload-protocol.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use neoflix_format::custody::{MAX_SIGNATURE_BYTES, Signature};
use neoflix_format::protocol::{
    ErrorBody, ObjectName, ObjectStored, RecordingList, RecordingState, RecordingSummary,
};
use neoflix_format::{HEADER_LEN, Kind, WRAPPED_KEY_LEN, WrappedKey, parse_header};

use crate::custody::Custody;
use crate::limits::{Budget, Held, RateGuard};
use crate::storage::{Storage, StorageError, Stored, Upload};

/// Largest manifest accepted (a 24 h recording of 1 s fragments is about 4 MB of JSON).
pub const MAX_MANIFEST: u64 = 16 * 1024 * 1024;
/// A body that sends nothing for this long is abandoned.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// Bytes gathered before one blocking write.
const WRITE_BATCH: usize = 256 * 1024;

/// Per-connection context: who is talking, and the limits that apply.
pub struct Ctx {
    /// The storage tree.
    pub store: Arc<Storage>,
    /// The device id from the client certificate.
    pub device: String,
    /// The peer address, for logs.
    pub peer: String,
    /// The minimum body rate and its grace.
    pub rate: RateLimit,
    /// Bytes of request bodies all requests together may hold in memory.
    pub budget: Budget,
    /// Checks manifests' signatures and signs receipts.
    pub custody: Arc<Custody>,
    /// The recordings index to keep in step, when the server keeps a database.
    pub index: Option<Arc<crate::db::Db>>,
}

/// `limits.min_bytes_per_sec` and `limits.rate_grace_secs`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Slowest accepted body, bytes per second averaged since its start.
    pub min_bytes_per_sec: u64,
    /// Time before the rate applies.
    pub grace: Duration,
}

/// Why a request body was not received whole.
enum Refusal {
    /// Storing it failed or was refused.
    Storage(StorageError),
    /// It fell below the minimum rate.
    TooSlow(u64),
    /// Nothing arrived for [`BODY_IDLE`].
    Idle,
    /// It is malformed (bad chunked framing) or ended early: the client's fault.
    Body(String),
    /// Holding it would exceed `limits.max_buffered_bytes`.
    Busy,
    /// The object does not start as a sealed object (or key record) does.
    NotSealed(String),
}

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        Refusal::Storage(e)
    }
}

fn refusal(r: Refusal) -> Response<Full<Bytes>> {
    match r {
        Refusal::Storage(e) => storage_error(e),
        Refusal::TooSlow(rate) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body slower than {rate} bytes/s (limits.min_bytes_per_sec): cut"),
        ),
        Refusal::Idle => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body sent nothing for {} s: cut",
                BODY_IDLE.as_secs()
            ),
        ),
        Refusal::Body(m) => error(
            StatusCode::BAD_REQUEST,
            format!("malformed or incomplete request body: {m}"),
        ),
        Refusal::NotSealed(m) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "not a sealed object: {m}; objects are uploaded as the box sealed them (docs/sealed-format.md)"
            ),
        ),
        Refusal::Busy => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy: request bodies in memory are at limits.max_buffered_bytes; retry later",
            );
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("5"));
            r
        }
    }
}

/// The next frame of `body`, or why none came in time: the rate rule's deadline or the idle
/// limit, whichever is first.
async fn next_frame(
    body: &mut Incoming,
    guard: &RateGuard,
    rate: u64,
) -> Result<Option<hyper::body::Frame<Bytes>>, Refusal> {
    let idle = tokio::time::Instant::now() + BODY_IDLE;
    let slow = tokio::time::Instant::from_std(guard.deadline());
    match tokio::time::timeout_at(idle.min(slow), body.frame()).await {
        Err(_) if slow <= idle => Err(Refusal::TooSlow(rate)),
        Err(_) => Err(Refusal::Idle),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(Refusal::Body(e.to_string())),
        Ok(Some(Ok(f))) => Ok(Some(f)),
    }
}

/// An answer of either listener.
pub(crate) type Resp = Response<Full<Bytes>>;

/// A JSON answer (one line).
pub(crate) fn json(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    let mut body = serde_json::to_vec(v).expect("json serializes");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// `{"error": msg}`: what every refusal of either listener looks like.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json(status, &ErrorBody { error: msg.into() })
}

/// `410 Gone` with the withdrawal notice, signed again now (the stored one if that fails).
fn gone(custody: &Custody, stored: Vec<u8>) -> Resp {
    let notice = custody.resign_withdrawal(&stored).unwrap_or_else(|e| {
        log::error!(error = crate::esc(&e.to_string()).as_str(); "a stored withdrawal notice cannot be signed again: sending it as stored");
        stored
    });
    gone_as_is(notice)
}

fn gone_as_is(notice: Vec<u8>) -> Resp {
    Response::builder()
        .status(StatusCode::GONE)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(notice)))
        .expect("valid response")
}

fn storage_error(e: StorageError) -> Resp {
    // Withdrawn while this request ran: the notice as stored (fresh enough).
    if let StorageError::Withdrawn(notice) = e {
        return gone_as_is(notice);
    }
    let status = match &e {
        StorageError::BadName(_) | StorageError::Digest(_) | StorageError::Manifest(_) => {
            StatusCode::BAD_REQUEST
        }
        StorageError::Conflict(_) => StatusCode::CONFLICT,
        StorageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        StorageError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        StorageError::NotFound => StatusCode::NOT_FOUND,
        StorageError::Io(_) | StorageError::Withdrawn(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StorageError::LengthRequired => StatusCode::LENGTH_REQUIRED,
        StorageError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if let StorageError::Store(why) = &e {
        // The box retries; the store's trouble is the administrator's to see.
        log::warn!("object store: {}", crate::esc(why));
        let mut r = error(status, e.to_string());
        r.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("5"));
        return r;
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::INSUFFICIENT_STORAGE {
        log::error!("storage: {}", crate::esc(&e.to_string()));
    }
    error(status, e.to_string())
}

/// Why a connection is refused right after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// Its device already holds `limits.max_connections_per_device`.
    DeviceLimit,
    /// Every one of `limits.max_connections` is taken.
    ServerFull,
}

/// The answer to the request on a refused connection: 503 with `Retry-After`, naming the limit.
pub fn refused(why: ConnectionRefusal) -> Resp {
    let msg = match why {
        ConnectionRefusal::DeviceLimit => {
            "too many connections from this device (limits.max_connections_per_device): close some and retry"
        }
        ConnectionRefusal::ServerFull => {
            "the server is serving all the connections it may (limits.max_connections): retry later"
        }
    };
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert("retry-after", hyper::header::HeaderValue::from_static("5"));
    r
}

/// Parses `Content-Digest: sha-256=:<base64>:` (RFC 9530).
fn content_digest(req: &Request<Incoming>) -> Result<[u8; 32], String> {
    let h = req
        .headers()
        .get("content-digest")
        .ok_or("missing Content-Digest header (sha-256=:<base64>:)")?
        .to_str()
        .map_err(|_| "unreadable Content-Digest header")?;
    let v = h
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("sha-256="))
        .ok_or("Content-Digest has no sha-256 value")?;
    let b64 = v.trim_matches(':');
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "Content-Digest sha-256 is not base64")?;
    raw.try_into()
        .map_err(|_| "Content-Digest sha-256 is not 32 bytes".to_string())
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(std::io::Error::other(e.to_string()))))
}

/// Streams the body into an upload, in batches of at most what `held` covers, written off the
/// runtime.
async fn receive(
    mut body: Incoming,
    mut up: Upload,
    mut head: Head,
    max: u64,
    rate: RateLimit,
    held: &Held,
    batches: u64,
) -> Result<Upload, Refusal> {
    let cap = usize::try_from(held.bytes() / batches.max(1)).unwrap_or(WRITE_BATCH);
    let mut guard = RateGuard::new(Instant::now(), rate.grace, rate.min_bytes_per_sec);
    let mut batch = Vec::with_capacity(cap);
    while let Some(frame) = next_frame(&mut body, &guard, rate.min_bytes_per_sec).await? {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        guard.received(data.len() as u64);
        let total = up
            .size()
            .checked_add(batch.len() as u64)
            .and_then(|n| n.checked_add(data.len() as u64))
            .ok_or(StorageError::TooLarge(max))?;
        if total > max {
            return Err(StorageError::TooLarge(max).into());
        }
        head.feed(&data, total)?;
        if batch.len() + data.len() > cap && !batch.is_empty() {
            // The buffer comes back to be filled again: a new one each time was fresh pages
            // for the kernel to zero, several per cent of the server's work at full speed.
            let chunk = std::mem::take(&mut batch);
            let (u, mut chunk) = blocking(move || up.write(&chunk).map(|()| (up, chunk))).await?;
            up = u;
            chunk.clear();
            batch = chunk;
        }
        if data.len() >= cap {
            // Already in memory as hyper's buffer: written as it is, never copied.
            up = blocking(move || up.write(&data).map(|()| up)).await?;
        } else {
            batch.extend_from_slice(&data);
        }
    }
    head.finish()?;
    if !batch.is_empty() {
        up = blocking(move || up.write(&batch).map(|()| up)).await?;
    }
    Ok(up)
}

/// The first bytes of an object, kept until they can be checked.
struct Head {
    /// Which kind of object the name says this is.
    expect: Expect,
    bytes: Vec<u8>,
    checked: bool,
}

#[derive(Clone, Copy)]
enum Expect {
    /// A sealed object: its 56-byte header, of this kind.
    Sealed(Kind),
    /// A key record: exactly [`WRAPPED_KEY_LEN`] bytes.
    KeyRecord,
    /// The box's signature over the manifest: a whole signature file of at most
    /// [`MAX_SIGNATURE_BYTES`], checked for form here and for what it proves with the manifest.
    Signature,
}

impl Head {
    fn for_name(name: ObjectName) -> Head {
        let expect = match name {
            ObjectName::Sealed(kind, _) => Expect::Sealed(kind),
            ObjectName::KeyRecord(..) => Expect::KeyRecord,
            ObjectName::Signature => Expect::Signature,
        };
        Head {
            expect,
            bytes: Vec::new(),
            checked: false,
        }
    }

    /// Bytes of the body checked before it is stored (all of it for a key record or signature).
    fn needed(&self) -> usize {
        match self.expect {
            Expect::Sealed(_) => HEADER_LEN,
            Expect::KeyRecord => WRAPPED_KEY_LEN,
            Expect::Signature => MAX_SIGNATURE_BYTES as usize,
        }
    }

    /// Takes the next piece of the body (`total` bytes so far, this piece included); checks
    /// the head as soon as it is complete, so a wrong body is refused before it is stored.
    fn feed(&mut self, data: &[u8], total: u64) -> Result<(), Refusal> {
        if let Expect::KeyRecord = self.expect
            && total > WRAPPED_KEY_LEN as u64
        {
            return Err(Refusal::NotSealed(format!(
                "a key record is {WRAPPED_KEY_LEN} bytes, this body is longer"
            )));
        }
        if let Expect::Signature = self.expect
            && total > MAX_SIGNATURE_BYTES
        {
            return Err(Refusal::NotSealed(format!(
                "a signature is at most {MAX_SIGNATURE_BYTES} bytes, this body is longer"
            )));
        }
        if !self.checked {
            let want = self.needed() - self.bytes.len().min(self.needed());
            self.bytes.extend_from_slice(&data[..want.min(data.len())]);
            if self.bytes.len() == self.needed() {
                self.check()?;
            }
        }
        Ok(())
    }

    /// At the end of the body: a head never completed is refused too.
    fn finish(&mut self) -> Result<(), Refusal> {
        if self.checked {
            return Ok(());
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), Refusal> {
        check_object_start(self.expect, &self.bytes).map_err(Refusal::NotSealed)?;
        self.checked = true;
        Ok(())
    }
}

/// Whether `head` starts an object of the expected kind: the sealed header's magic, version,
/// kind and chunk size, or a key record's shape and the header it names. No key is involved.
fn check_object_start(expect: Expect, head: &[u8]) -> Result<(), String> {
    match expect {
        Expect::Sealed(kind) => {
            let h = parse_header(head).map_err(|e| e.to_string())?;
            if h.id.kind != kind {
                return Err(format!(
                    "the name says {kind:?}, the header {:?}",
                    h.id.kind
                ));
            }
        }
        Expect::KeyRecord => {
            let k = WrappedKey::from_bytes(head).map_err(|e| e.to_string())?;
            parse_header(k.object_header())
                .map_err(|e| format!("the key record's object header: {e}"))?;
        }
        Expect::Signature => {
            Signature::from_json(head).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Memory a manifest costs per byte of capacity: its bytes, then its parsed form beside them.
const MANIFEST_COST: u64 = 2;

/// Reads a manifest body whole, its memory (bytes and parsed form) taken from `held` as it
/// grows: the announced length at once, else doubling.
async fn read_small(
    mut body: Incoming,
    max: u64,
    announced: Option<u64>,
    rate: RateLimit,
    held: &mut Held,
) -> Result<Vec<u8>, Refusal> {
    let mut guard = RateGuard::new(Instant::now(), rate.grace, rate.min_bytes_per_sec);
    let first = announced.unwrap_or(64 * 1024).min(max);
    if !held.grow(first.saturating_mul(MANIFEST_COST)) {
        return Err(Refusal::Busy);
    }
    let mut out = Vec::with_capacity(usize::try_from(first).unwrap_or(0));
    while let Some(frame) = next_frame(&mut body, &guard, rate.min_bytes_per_sec).await? {
        let Ok(d) = frame.into_data() else {
            continue;
        };
        guard.received(d.len() as u64);
        let needed = out.len() + d.len();
        if needed as u64 > max {
            return Err(StorageError::TooLarge(max).into());
        }
        if needed > out.capacity() {
            let cap = needed.max(out.capacity() * 2).min(max as usize);
            let more = (cap - out.capacity()) as u64;
            if !held.grow(more.saturating_mul(MANIFEST_COST)) {
                return Err(Refusal::Busy);
            }
            out.reserve_exact(cap - out.len());
        }
        out.extend_from_slice(&d);
    }
    Ok(out)
}

/// Handles one request.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<Ctx>,
) -> Result<Resp, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = route(req, &ctx).await;
    let level = if resp.status().is_success() {
        log::Level::Info
    } else {
        log::Level::Warn
    };
    let path: String = path.chars().take(200).collect();
    log::log!(level, device = crate::esc(&ctx.device).as_str(), peer = ctx.peer.as_str(), status = resp.status().as_u16(); "{} {}", crate::esc(method.as_str()), crate::esc(&path));
    Ok(resp)
}

async fn route(req: Request<Incoming>, ctx: &Ctx) -> Resp {
    let path = req.uri().path().to_string();
    // Percent-encoding is never needed by this protocol's names: refusing it outright closes
    // encoded traversal (%2e%2e, %2f) without a decoder to get wrong.
    if path.len() > 512 || path.contains('%') || path.contains("//") {
        return error(StatusCode::BAD_REQUEST, "malformed path");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let store = ctx.store.clone();
    let device = ctx.device.clone();
    // An object's upload asks at its start (`Storage::begin`), in the same round trip as its
    // other questions to an object store: not asked twice.
    let object_put = req.method() == Method::PUT
        && matches!(parts.as_slice(), ["v1", "recordings", _, "objects", _]);
    if let (["v1", "recordings", id, ..], false) = (parts.as_slice(), object_put) {
        let (store, device, id) = (store.clone(), device.clone(), id.to_string());
        match blocking(move || store.withdrawn(&device, &id)).await {
            Ok(Some(notice)) => return gone(&ctx.custody, notice),
            // A bad id is answered by the route itself.
            Ok(None) | Err(StorageError::BadName(_)) => {}
            Err(e) => return storage_error(e),
        }
    }
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["v1", "recordings"]) => match blocking(move || store.list(&device)).await {
            Ok(list) => json(
                StatusCode::OK,
                &RecordingList {
                    recordings: list
                        .into_iter()
                        .map(|(id, complete)| RecordingSummary { id, complete })
                        .collect(),
                },
            ),
            Err(e) => storage_error(e),
        },
        (&Method::GET, ["v1", "recordings", id]) => {
            let id = id.to_string();
            let rid = id.clone();
            match blocking(move || store.status(&device, &rid)).await {
                Ok((objects, complete)) => json(
                    StatusCode::OK,
                    &RecordingState {
                        recording_id: id,
                        complete,
                        objects,
                    },
                ),
                Err(e) => storage_error(e),
            }
        }
        (&Method::PUT, ["v1", "recordings", id, "objects", name]) => {
            let expected = match content_digest(&req) {
                Ok(d) => d,
                Err(m) => return error(StatusCode::BAD_REQUEST, m),
            };
            let max = store.max_object();
            if content_length(&req).is_some_and(|l| l > max) {
                return storage_error(StorageError::TooLarge(max));
            }
            let mut held = ctx.budget.empty();
            let batch =
                content_length(&req).map_or(WRITE_BATCH as u64, |l| l.clamp(1, WRITE_BATCH as u64));
            // The budget counts what the upload holds at once, which an object store makes a
            // few batches (docs/ingest.md, "Limits: memory").
            let batches = store.batches_per_upload();
            if !held.grow(batch * batches) {
                return refusal(Refusal::Busy);
            }
            let Some(object) = ObjectName::parse(name) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "not an object name (init-NNN.nfx|key, frag-NNNNNN.nfx|key, manifest.sig)",
                );
            };
            let head = Head::for_name(object);
            let (rid, name) = (id.to_string(), name.to_string());
            let (s2, dev) = (store.clone(), device.clone());
            let len = content_length(&req);
            let up = match blocking(move || s2.begin(&dev, &rid, &name, &expected, len)).await {
                Ok(u) => u,
                Err(StorageError::Withdrawn(notice)) => return gone(&ctx.custody, notice),
                Err(e) => return storage_error(e),
            };
            let up = match receive(req.into_body(), up, head, max, ctx.rate, &held, batches).await {
                Ok(u) => u,
                Err(r) => return refusal(r),
            };
            let index = ctx.index.clone();
            let (dev, rid) = (device.clone(), id.to_string());
            match blocking(move || {
                let r = store.commit(up, &expected);
                if let (Ok(Stored::Created), Some(db)) = (&r, index) {
                    crate::index::object_landed(&db, &store, &dev, &rid);
                }
                r
            })
            .await
            {
                Ok(Stored::Created) => json(
                    StatusCode::CREATED,
                    &ObjectStored {
                        stored: true,
                        already: false,
                    },
                ),
                Ok(Stored::Same) => json(
                    StatusCode::OK,
                    &ObjectStored {
                        stored: true,
                        already: true,
                    },
                ),
                Err(e) => storage_error(e),
            }
        }
        (&Method::PUT, ["v1", "recordings", id, "manifest"]) => {
            let announced = content_length(&req);
            if announced.is_some_and(|l| l > MAX_MANIFEST) {
                return storage_error(StorageError::TooLarge(MAX_MANIFEST));
            }
            let mut held = ctx.budget.empty();
            let body = match read_small(
                req.into_body(),
                MAX_MANIFEST,
                announced,
                ctx.rate,
                &mut held,
            )
            .await
            {
                Ok(b) => b,
                Err(r) => return refusal(r),
            };
            let id = id.to_string();
            let rid = id.clone();
            let dev = device.clone();
            let custody = ctx.custody.clone();
            let index = ctx.index.clone();
            // The budget is held until the parsed manifest is gone too.
            match blocking(move || {
                let r = store.complete(&dev, &rid, &body, &custody);
                if let (Ok((receipt, Stored::Created)), Some(db)) = (&r, &index) {
                    crate::index::manifest_accepted(db, &store, &dev, &rid, &body, receipt);
                }
                drop(held);
                r
            })
            .await
            {
                Ok((receipt, stored)) => {
                    if stored == Stored::Created {
                        log::info!(device = crate::esc(&device).as_str(), recording = crate::esc(&id).as_str(); "recording complete, receipt issued");
                    }
                    let status = if stored == Stored::Created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(receipt)))
                        .expect("valid response")
                }
                Err(e) => storage_error(e),
            }
        }
        (_, ["v1", ..]) => error(
            StatusCode::NOT_FOUND,
            "no such endpoint (see docs/upload-protocol.md)",
        ),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(kind: neoflix_seal::Kind) -> (neoflix_seal::DataKey, Vec<u8>) {
        let id = neoflix_seal::ObjectId {
            stream: [3; 16],
            seq: 1,
            kind,
        };
        neoflix_seal::seal(&id, b"plaintext").unwrap()
    }

    fn fed(name: &str, body: &[u8], piece: usize) -> Result<(), String> {
        let mut head = Head::for_name(ObjectName::parse(name).expect("an object name"));
        let mut total = 0u64;
        for p in body.chunks(piece.max(1)) {
            total += p.len() as u64;
            head.feed(p, total).map_err(|r| match r {
                Refusal::NotSealed(m) => m,
                _ => "other".into(),
            })?;
        }
        head.finish().map_err(|r| match r {
            Refusal::NotSealed(m) => m,
            _ => "other".into(),
        })
    }

    #[test]
    fn only_sealed_objects_and_key_records_pass_in_any_framing() {
        let (_, frag) = sealed(neoflix_seal::Kind::Fragment);
        let (_, init) = sealed(neoflix_seal::Kind::Init);
        let dept = neoflix_open::DepartmentSecretKey::generate().unwrap();
        let (key, frag2) = sealed(neoflix_seal::Kind::Fragment);
        let record = key.wrap(&dept.public_key(), &frag2).unwrap();
        for piece in [1, 7, 56, 4096] {
            fed("frag-000001.nfx", &frag, piece).unwrap();
            fed("init-000.nfx", &init, piece).unwrap();
            fed("frag-000001.key", record.as_bytes(), piece).unwrap();
            assert!(fed("manifest.sig", b"{\"format\":\"x\"}", piece).is_err());
            assert!(fed("manifest.sig", &frag, piece).is_err());
            assert!(fed("frag-000001.nfx", b"sealed bytes of A", piece).is_err());
            assert!(fed("frag-000001.nfx", &vec![0u8; 4096], piece).is_err());
            assert!(
                fed("init-000.nfx", &frag, piece)
                    .unwrap_err()
                    .contains("the name says Init")
            );
            assert!(fed("frag-000001.key", &frag, piece).is_err());
            let mut long = record.as_bytes().to_vec();
            long.push(0);
            assert!(fed("frag-000001.key", &long, piece).is_err());
            assert!(fed("frag-000001.nfx", b"", piece).is_err());
        }
        let mut v2 = frag.clone();
        v2[4] = 2;
        assert!(fed("frag-000001.nfx", &v2, 4096).is_err());
    }
}
