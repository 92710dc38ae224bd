//! The upload protocol's routes (see `docs/upload-protocol.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

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

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut body = serde_json::to_vec(&v).expect("json serializes");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json(status, serde_json::json!({ "error": msg.into() }))
}

fn storage_error(e: StorageError) -> Resp {
    let status = match &e {
        StorageError::BadName(_) | StorageError::Digest(_) | StorageError::Manifest(_) => {
            StatusCode::BAD_REQUEST
        }
        StorageError::Conflict(_) => StatusCode::CONFLICT,
        StorageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        StorageError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        StorageError::NotFound => StatusCode::NOT_FOUND,
        StorageError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::INSUFFICIENT_STORAGE {
        log::error!("storage: {e}");
    }
    error(status, e.to_string())
}

/// The answer to every request on a connection over `limits.max_connections_per_device`.
pub fn too_many_connections() -> Resp {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections from this device (limits.max_connections_per_device): close some and retry",
    );
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
    max: u64,
    rate: RateLimit,
    held: &Held,
) -> Result<Upload, Refusal> {
    let cap = usize::try_from(held.bytes()).unwrap_or(WRITE_BATCH);
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
        if batch.len() + data.len() > cap && !batch.is_empty() {
            let chunk = std::mem::replace(&mut batch, Vec::with_capacity(cap));
            up = blocking(move || up.write(&chunk).map(|()| up)).await?;
        }
        if data.len() >= cap {
            // Already in memory as hyper's buffer: written as it is, never copied.
            up = blocking(move || up.write(&data).map(|()| up)).await?;
        } else {
            batch.extend_from_slice(&data);
        }
    }
    if !batch.is_empty() {
        up = blocking(move || up.write(&batch).map(|()| up)).await?;
    }
    Ok(up)
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
    log::log!(level, device = ctx.device.as_str(), peer = ctx.peer.as_str(), status = resp.status().as_u16(); "{method} {}", path.chars().take(200).collect::<String>());
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
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["v1", "recordings"]) => match blocking(move || store.list(&device)).await {
            Ok(list) => json(
                StatusCode::OK,
                serde_json::json!({ "recordings": list.into_iter().map(|(id, complete)| serde_json::json!({"id": id, "complete": complete})).collect::<Vec<_>>() }),
            ),
            Err(e) => storage_error(e),
        },
        (&Method::GET, ["v1", "recordings", id]) => {
            let id = id.to_string();
            let rid = id.clone();
            match blocking(move || store.status(&device, &rid)).await {
                Ok((objects, complete)) => json(
                    StatusCode::OK,
                    serde_json::json!({ "recording_id": id, "complete": complete, "objects": objects }),
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
            if !held.grow(batch) {
                return refusal(Refusal::Busy);
            }
            let (id, name) = (id.to_string(), name.to_string());
            let s2 = store.clone();
            let up = match blocking(move || s2.begin(&device, &id, &name)).await {
                Ok(u) => u,
                Err(e) => return storage_error(e),
            };
            let up = match receive(req.into_body(), up, max, ctx.rate, &held).await {
                Ok(u) => u,
                Err(r) => return refusal(r),
            };
            match blocking(move || store.commit(up, &expected)).await {
                Ok(Stored::Created) => {
                    json(StatusCode::CREATED, serde_json::json!({ "stored": true }))
                }
                Ok(Stored::Same) => json(
                    StatusCode::OK,
                    serde_json::json!({ "stored": true, "already": true }),
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
            // The budget is held until the parsed manifest is gone too.
            match blocking(move || {
                let r = store.complete(&dev, &rid, &body);
                drop(held);
                r
            })
            .await
            {
                Ok((receipt, stored)) => {
                    if stored == Stored::Created {
                        log::info!(device = device.as_str(), recording = id.as_str(); "recording complete, receipt issued");
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
