//! A small client for the S3-compatible object store a hospital already runs (StorageGRID, ECS,
//! MinIO, Ceph RGW, Garage): AWS Signature V4 ([`sigv4`]), PUT of a streamed body whose SHA-256
//! is known before it is sent, streamed GET, HEAD, DELETE and listing, over rustls with the CA
//! the configuration names.
//!
//! Every body is signed by its SHA-256 (`x-amz-content-sha256`), never `UNSIGNED-PAYLOAD`: a
//! store that checks it (AWS, Garage, MinIO) refuses a body that is not the one announced, so a
//! truncated or altered stream is never stored under the object's name. The digest is kept in
//! the object's metadata too (`x-amz-meta-sha256`), so a later HEAD says what is there without
//! reading it; that is the writer's word, which the store checked only if it checks the
//! signed digest.
//!
//! Not every store keeps an object already there when asked to (`If-None-Match: *` on PUT):
//! Garage 2.5 overwrites. Write-once across several writers is the caller's to arrange.

#![deny(missing_docs)]

pub mod body;
pub mod sigv4;

pub use body::{BodySender, Gone, channel};

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use url::Url;
use zeroize::Zeroizing;

/// The metadata header that carries an object's SHA-256 (hex), as this client wrote it.
pub const SHA256_META: &str = "x-amz-meta-sha256";

/// Longest object key S3 accepts, in bytes.
const MAX_KEY: usize = 1024;
/// Error documents and listings are small; anything larger is not an S3 answer.
const MAX_ANSWER: usize = 4 << 20;
/// Continuation tokens are opaque but short; a longer one is not echoed back.
const MAX_TOKEN: usize = 1024;
/// The whole of a HEAD, DELETE, listing page or error answer: a store that drips bytes is given
/// up rather than waited on for ever.
const SMALL_OP: Duration = Duration::from_secs(120);
/// The slowest a PUT's body may go on average before it is given up: the body streams at its
/// source's pace (a box on a poor link), so the limit grows with the object.
const PUT_FLOOR_BYTES_PER_SEC: u64 = 32 << 10;

/// Where the store is and how it is addressed.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `http(s)://host[:port]`, without the bucket.
    pub endpoint: Url,
    /// The bucket's name.
    pub bucket: String,
    /// The region the store signs for (`garage`, `us-east-1`, ...).
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most on-premises stores want; else
    /// virtual-hosted (`bucket.host/key`).
    pub path_style: bool,
}

/// An access key.
pub struct Credentials {
    /// The key's id.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What went wrong, naming the operation and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// The settings cannot work (endpoint, bucket, region, key id): fix the configuration.
    #[error("object store settings: {0}")]
    Settings(String),
    /// A key this client will not send (see [`check_key`]).
    #[error("object key {key:?} is not usable: {why}")]
    BadKey {
        /// The key, cut to 200 characters.
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The store's certificate is not signed by the configured CA, or names another host.
    #[error(
        "{op} {key:?}: the object store's certificate is not trusted: {why}; check the `ca` file and the endpoint's host name"
    )]
    Certificate {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What TLS said.
        why: String,
    },
    /// The store could not be reached, or the connection broke or stalled: try again later.
    #[error("{op} {key:?}: cannot reach the object store: {why}")]
    Transport {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What failed, with its causes.
        why: String,
    },
    /// The store answered with an error status.
    #[error("{op} {key:?}: the object store answered {status} {code}: {message}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The HTTP status.
        status: u16,
        /// The S3 error code (`NoSuchBucket`, `AccessDenied`, ...), escaped.
        code: String,
        /// The store's message, escaped, with a hint where the code has a known cause.
        message: String,
    },
    /// The store answered something that is not a well-formed S3 answer.
    #[error("{op} {key:?}: the object store's answer is unreadable: {why}")]
    Answer {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What is wrong with the answer.
        why: String,
    },
}

impl S3Error {
    /// Whether trying again later may succeed: the store was unreachable, busy, failing, or
    /// another writer was at the same key.
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Transport { .. } => true,
            S3Error::Refused { status, .. } => {
                *status >= 500 || *status == 429 || *status == 409 || *status == 408
            }
            _ => false,
        }
    }
}

/// What a PUT did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// The body is stored under the key.
    Written,
    /// Asked to keep an object already there (`If-None-Match: *`), the store did: what it
    /// holds may differ from the body; [`Bucket::head`] says.
    AlreadyThere,
}

/// What HEAD says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its size in bytes.
    pub size: u64,
    /// From the metadata this client writes; `None` for an object written some other way.
    pub sha256: Option<[u8; 32]>,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, checked to start with the listing's prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The objects, in key order.
    pub objects: Vec<Listed>,
    /// With a delimiter: the "directories" under the prefix, each ending in it.
    pub prefixes: Vec<String>,
    /// Pass it back for the next page; `None` on the last.
    pub next: Option<String>,
}

/// One bucket of one store.
pub struct Bucket {
    http: reqwest::Client,
    /// Scheme and authority: `https://host:port`.
    origin: String,
    /// The Host header, signed.
    host: String,
    /// `/bucket` (path-style) or empty.
    base_path: String,
    region: String,
    credentials: Credentials,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("origin", &self.origin)
            .field("base_path", &self.base_path)
            .finish_non_exhaustive()
    }
}

/// A bucket name as S3 accepts it: 3 to 63 of `a-z0-9.-`, starting and ending with a letter or
/// digit, no `..`, not shaped like an IP address.
pub fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// Refuses keys a URL would rewrite (`.` and `..` segments, empty segments) or the store would
/// refuse, so the key signed is the key stored.
pub fn check_key(key: &str) -> Result<(), S3Error> {
    let bad = |why| {
        Err(S3Error::BadKey {
            key: key.chars().take(200).collect(),
            why,
        })
    };
    if key.is_empty() || key.len() > MAX_KEY {
        return bad("it must be 1 to 1024 bytes");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("it has an empty, `.` or `..` segment");
    }
    if key.chars().any(char::is_control) {
        return bad("it has a control character");
    }
    Ok(())
}

fn timestamp(now: SystemTime) -> String {
    let t = time::OffsetDateTime::from(now);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn escaped(s: &str) -> String {
    s.chars().take(500).flat_map(char::escape_debug).collect()
}

fn element<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.tag_name().name() == name)
        .map(|c| c.text().unwrap_or(""))
}

impl Bucket {
    /// A client for `settings.bucket`. `tls` carries the CA that signs the store's certificate;
    /// an `https` endpoint needs it.
    pub fn new(
        settings: &Settings,
        credentials: Credentials,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Bucket, S3Error> {
        let e = &settings.endpoint;
        // Every problem at once, so one edit of the configuration fixes them all.
        let mut wrong = Vec::new();
        match (e.scheme(), &tls) {
            ("https", Some(_)) | ("http", _) => {}
            ("https", None) => wrong.push(
                "endpoint: https needs `ca`, the CA that signs the store's certificate".to_string(),
            ),
            (s, _) => wrong.push(format!(
                "endpoint: scheme {:?} is not http or https",
                escaped(s)
            )),
        }
        if !matches!(e.path(), "" | "/")
            || e.query().is_some()
            || e.fragment().is_some()
            || !e.username().is_empty()
            || e.password().is_some()
        {
            wrong.push(
                "endpoint: give scheme, host and port only (the bucket is `bucket`, the key a file of its own)"
                    .into(),
            );
        }
        if !valid_bucket(&settings.bucket) {
            wrong.push(format!(
                "bucket {:?}: a bucket name is 3 to 63 of a-z, 0-9, `.` and `-`",
                escaped(&settings.bucket)
            ));
        }
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !plain(&settings.region) {
            wrong.push(format!(
                "region {:?}: give the store's region (\"garage\", \"us-east-1\", ...)",
                escaped(&settings.region)
            ));
        }
        if !plain(&credentials.access_key_id) {
            wrong.push("access key id: letters, digits, `-` and `_` only".into());
        }
        let host = e.host_str().unwrap_or_default();
        if host.is_empty() {
            wrong.push("endpoint: no host".into());
        }
        if !wrong.is_empty() {
            return Err(S3Error::Settings(wrong.join("; ")));
        }
        let host = if settings.path_style {
            host.to_string()
        } else {
            format!("{}.{host}", settings.bucket)
        };
        let host = match e.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        // Timeouts are per request, sized to what it carries: reqwest's read timeout runs from
        // the send to the answer's headers, which for a PUT is the whole upload.
        let b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        // Plain http still needs a TLS backend for the client to exist; one that trusts
        // nothing, since https without a CA was refused above.
        let tls = match tls {
            Some(t) => t,
            None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|err| S3Error::Settings(err.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let http = b
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|err| S3Error::Settings(format!("cannot make the HTTP client: {err}")))?;
        Ok(Bucket {
            http,
            origin: format!("{}://{host}", e.scheme()),
            host,
            base_path: if settings.path_style {
                format!("/{}", settings.bucket)
            } else {
                String::new()
            },
            region: settings.region.clone(),
            credentials,
        })
    }

    fn request(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        payload_sha256: &str,
    ) -> reqwest::RequestBuilder {
        let path = match key {
            Some(k) => format!("{}/{}", self.base_path, sigv4::encode_path(k)),
            None => format!("{}/", self.base_path),
        };
        let date = timestamp(SystemTime::now());
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &self.host),
            ("x-amz-date", &date),
            ("x-amz-content-sha256", payload_sha256),
        ];
        headers.extend_from_slice(extra);
        let r = sigv4::Request {
            method: method.as_str(),
            path: &path,
            query,
            headers: &headers,
            payload_sha256,
        };
        let auth = sigv4::authorization(
            &r,
            &sigv4::Scope {
                timestamp: &date,
                region: &self.region,
            },
            &self.credentials.access_key_id,
            &self.credentials.secret_access_key,
        );
        let q = sigv4::query_string(query);
        let url = if q.is_empty() {
            format!("{}{path}", self.origin)
        } else {
            format!("{}{path}?{q}", self.origin)
        };
        let mut rb = self.http.request(method, url);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb.header("authorization", auth)
    }

    async fn send(
        &self,
        op: &'static str,
        key: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, S3Error> {
        rb.send().await.map_err(|e| transport(op, key, &e))
    }

    async fn refused(op: &'static str, key: &str, r: reqwest::Response) -> S3Error {
        let status = r.status().as_u16();
        let body = read_capped(op, key, r, 64 << 10).await.unwrap_or_default();
        let (code, message) = parse_error(&body);
        let mut message = escaped(&message);
        if code == "RequestTimeTooSkewed" {
            message.push_str(" (this server's clock and the store's differ: check NTP on both)");
        }
        S3Error::Refused {
            op,
            key: key.to_string(),
            status,
            code: if code.is_empty() {
                "(no code)".into()
            } else {
                escaped(&code)
            },
            message,
        }
    }

    /// A 404's meaning: `Ok` when the object is absent, an error when the bucket is.
    async fn absent(op: &'static str, key: &str, r: reqwest::Response) -> Result<(), S3Error> {
        match Self::refused(op, key, r).await {
            S3Error::Refused { code, .. } if code == "NoSuchKey" || code == "(no code)" => Ok(()),
            e => Err(e),
        }
    }

    /// Writes `body` (exactly `len` bytes whose SHA-256 is `sha256`) under `key`. With `once`,
    /// asks the store to keep an object already there (`If-None-Match: *`); stores that do not
    /// implement it overwrite, so callers that need write-once on every store also check with
    /// [`Bucket::head`] under a lock of their own.
    pub async fn put(
        &self,
        key: &str,
        body: reqwest::Body,
        len: u64,
        sha256: &[u8; 32],
        once: bool,
    ) -> Result<Put, S3Error> {
        self.put_paced(
            key,
            body,
            len,
            sha256,
            once,
            PUT_FLOOR_BYTES_PER_SEC,
            Duration::ZERO,
        )
        .await
    }

    /// [`Bucket::put`] of a body that may come as slowly as `floor` bytes a second on average
    /// after `grace` (it is relayed from a slow sender): given up only after 120 s, `grace`
    /// and `len / floor` more.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_paced(
        &self,
        key: &str,
        body: reqwest::Body,
        len: u64,
        sha256: &[u8; 32],
        once: bool,
        floor: u64,
        grace: Duration,
    ) -> Result<Put, S3Error> {
        check_key(key)?;
        let sha = hex::encode(sha256);
        let len_text = len.to_string();
        let mut extra = vec![
            (SHA256_META, sha.as_str()),
            ("content-length", len_text.as_str()),
        ];
        if once {
            extra.push(("if-none-match", "*"));
        }
        let rb = self
            .request(Method::PUT, Some(key), &[], &extra, &sha)
            .header("content-type", "application/octet-stream")
            .timeout(SMALL_OP + grace + Duration::from_secs(len / floor.max(1)))
            .body(body);
        let r = self.send("PUT", key, rb).await?;
        match r.status() {
            s if s.is_success() => Ok(Put::Written),
            StatusCode::PRECONDITION_FAILED if once => Ok(Put::AlreadyThere),
            _ => Err(Self::refused("PUT", key, r).await),
        }
    }

    /// What is stored under `key`, or `None`.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, S3Error> {
        check_key(key)?;
        let r = self
            .send(
                "HEAD",
                key,
                self.request(Method::HEAD, Some(key), &[], &[], sigv4::EMPTY_SHA256)
                    .timeout(SMALL_OP),
            )
            .await?;
        match r.status() {
            // A HEAD answer has no body to tell a missing key from a missing bucket:
            // [`Bucket::check`] at start says which bucket is there.
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let answer = |why: String| S3Error::Answer {
                    op: "HEAD",
                    key: key.to_string(),
                    why,
                };
                let size = r
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| answer("no Content-Length".into()))?;
                let sha256 = match r.headers().get(SHA256_META) {
                    None => None,
                    Some(v) => {
                        let mut out = [0u8; 32];
                        hex::decode_to_slice(v.as_bytes(), &mut out)
                            .map_err(|_| answer(format!("{SHA256_META} is not a SHA-256")))?;
                        Some(out)
                    }
                };
                Ok(Some(Head { size, sha256 }))
            }
            // HEAD answers carry no body to read a code from.
            s => Err(S3Error::Refused {
                op: "HEAD",
                key: key.to_string(),
                status: s.as_u16(),
                code: "(HEAD has no body)".into(),
                message: String::new(),
            }),
        }
    }

    /// Starts reading `key`: the response streams its body (`chunk()`), or `None` if there is no
    /// such object. `within` bounds the whole transfer, body included: give it room for the
    /// object's size.
    pub async fn get(
        &self,
        key: &str,
        within: Duration,
    ) -> Result<Option<reqwest::Response>, S3Error> {
        check_key(key)?;
        let r = self
            .send(
                "GET",
                key,
                self.request(Method::GET, Some(key), &[], &[], sigv4::EMPTY_SHA256)
                    .timeout(within),
            )
            .await?;
        match r.status() {
            StatusCode::NOT_FOUND => Self::absent("GET", key, r).await.map(|()| None),
            s if s.is_success() => Ok(Some(r)),
            _ => Err(Self::refused("GET", key, r).await),
        }
    }

    /// Reads a small object whole; one larger than `max` bytes is an error.
    pub async fn get_small(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>, S3Error> {
        let Some(r) = self.get(key, SMALL_OP).await? else {
            return Ok(None);
        };
        read_capped("GET", key, r, max).await.map(Some)
    }

    /// Reads `len` bytes of `key` from `start` (a ranged GET): fewer only where the object ends
    /// first; `None` if there is no such object. A `len` of 0 asks the store nothing.
    pub async fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, S3Error> {
        check_key(key)?;
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        let last = start.saturating_add(u64::from(len) - 1);
        let range = format!("bytes={start}-{last}");
        let r = self
            .send(
                "GET",
                key,
                self.request(
                    Method::GET,
                    Some(key),
                    &[],
                    &[("range", &range)],
                    sigv4::EMPTY_SHA256,
                )
                .timeout(SMALL_OP),
            )
            .await?;
        match r.status() {
            StatusCode::NOT_FOUND => Self::absent("GET", key, r).await.map(|()| None),
            StatusCode::PARTIAL_CONTENT => read_capped("GET", key, r, len as usize).await.map(Some),
            // A store that ignores ranges sends the whole object: only the range is kept, and
            // nothing past it is read.
            StatusCode::OK => {
                let mut r = r;
                let mut out = Vec::new();
                let mut skip = start;
                while out.len() < len as usize {
                    let Some(c) = r.chunk().await.map_err(|e| transport("GET", key, &e))? else {
                        break;
                    };
                    let c = if skip >= c.len() as u64 {
                        skip -= c.len() as u64;
                        continue;
                    } else {
                        let from = skip as usize;
                        skip = 0;
                        c.slice(from..)
                    };
                    let take = (len as usize - out.len()).min(c.len());
                    out.extend_from_slice(&c[..take]);
                }
                Ok(Some(out))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Some(Vec::new())),
            _ => Err(Self::refused("GET", key, r).await),
        }
    }

    /// Deletes `key`; an object already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        check_key(key)?;
        let r = self
            .send(
                "DELETE",
                key,
                self.request(Method::DELETE, Some(key), &[], &[], sigv4::EMPTY_SHA256)
                    .timeout(SMALL_OP),
            )
            .await?;
        match r.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Self::absent("DELETE", key, r).await,
            _ => Err(Self::refused("DELETE", key, r).await),
        }
    }

    /// One page (up to `max_keys`, at most 1000) of the objects under `prefix`
    /// (ListObjectsV2). With a `delimiter`, keys that go on past it are folded into
    /// [`Page::prefixes`]. Every key is checked to be under `prefix` and usable.
    pub async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        max_keys: u16,
    ) -> Result<Page, S3Error> {
        let max = max_keys.clamp(1, 1000).to_string();
        let mut query = vec![("list-type", "2"), ("prefix", prefix), ("max-keys", &max)];
        if let Some(d) = delimiter {
            query.push(("delimiter", d));
        }
        if let Some(c) = continuation {
            query.push(("continuation-token", c));
        }
        let r = self
            .send(
                "LIST",
                prefix,
                self.request(Method::GET, None, &query, &[], sigv4::EMPTY_SHA256)
                    .timeout(SMALL_OP),
            )
            .await?;
        if !r.status().is_success() {
            return Err(Self::refused("LIST", prefix, r).await);
        }
        let body = read_capped("LIST", prefix, r, MAX_ANSWER).await?;
        let answer = |why: String| S3Error::Answer {
            op: "LIST",
            key: prefix.to_string(),
            why,
        };
        let page = parse_listing(&body).map_err(answer)?;
        for k in page
            .objects
            .iter()
            .map(|o| &o.key)
            .chain(page.prefixes.iter())
        {
            if !k.starts_with(prefix) {
                return Err(answer(format!(
                    "key {:?} is not under the prefix",
                    escaped(k)
                )));
            }
        }
        for o in &page.objects {
            check_key(&o.key).map_err(|e| answer(e.to_string()))?;
        }
        Ok(page)
    }

    /// Every object under `prefix`, in pages of `page`, in key order; more than `max` is an
    /// error rather than a list that grows without bound, and so is a store whose pages do not
    /// go forward.
    pub async fn list_all(
        &self,
        prefix: &str,
        page: u16,
        max: usize,
    ) -> Result<Vec<Listed>, S3Error> {
        let answer = |why: String| S3Error::Answer {
            op: "LIST",
            key: prefix.to_string(),
            why,
        };
        let mut out: Vec<Listed> = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let p = self.list(prefix, None, next.as_deref(), page).await?;
            if p.objects.is_empty() && p.next.is_some() {
                return Err(answer("a page with no objects that is not the last".into()));
            }
            for o in p.objects {
                // Keys come in ascending order, pages following on: anything else is a store
                // going round in circles.
                if out.last().is_some_and(|l| l.key >= o.key) {
                    return Err(answer(format!(
                        "key {:?} does not follow the one before it",
                        escaped(&o.key)
                    )));
                }
                if out.len() == max {
                    return Err(answer(format!("more than {max} objects under the prefix")));
                }
                out.push(o);
            }
            match p.next {
                Some(n) => next = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Whether the bucket keeps old versions of what is deleted or replaced
    /// (`GET ?versioning`). A store that does not implement the call (`501`) keeps none.
    pub async fn versioning(&self) -> Result<Versioning, S3Error> {
        let r = self
            .send(
                "GET versioning",
                "",
                self.request(
                    Method::GET,
                    None,
                    &[("versioning", "")],
                    &[],
                    sigv4::EMPTY_SHA256,
                )
                .timeout(SMALL_OP),
            )
            .await?;
        if r.status() == StatusCode::NOT_IMPLEMENTED {
            return Ok(Versioning::Never);
        }
        if !r.status().is_success() {
            return Err(Self::refused("GET versioning", "", r).await);
        }
        let body = read_capped("GET versioning", "", r, 64 << 10).await?;
        parse_versioning(&body).map_err(|why| S3Error::Answer {
            op: "GET versioning",
            key: String::new(),
            why,
        })
    }

    /// Checks that the bucket is there and the key may use it (HEAD on the bucket).
    pub async fn check(&self) -> Result<(), S3Error> {
        let r = self
            .send(
                "HEAD bucket",
                "",
                self.request(Method::HEAD, None, &[], &[], sigv4::EMPTY_SHA256)
                    .timeout(SMALL_OP),
            )
            .await?;
        match r.status() {
            s if s.is_success() => Ok(()),
            s => Err(S3Error::Refused {
                op: "HEAD bucket",
                key: String::new(),
                status: s.as_u16(),
                code: match s {
                    StatusCode::NOT_FOUND => "NoSuchBucket".into(),
                    StatusCode::FORBIDDEN => "AccessDenied".into(),
                    _ => "(HEAD has no body)".into(),
                },
                message: match s {
                    StatusCode::NOT_FOUND => "no such bucket: create it, or fix `bucket`".into(),
                    StatusCode::FORBIDDEN => {
                        "the key may not use the bucket (on AWS and MinIO that takes s3:ListBucket), its secret is wrong, or this machine's clock is off".into()
                    }
                    _ => String::new(),
                },
            }),
        }
    }
}

/// The code and message of an S3 error document (`<Error><Code>..`), as sent (unescaped);
/// empty where the body is not one.
pub fn parse_error(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    roxmltree::Document::parse(&text)
        .ok()
        .map(|d| {
            let root = d.root_element();
            (
                element(root, "Code").unwrap_or("").to_string(),
                element(root, "Message").unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

/// A bucket's versioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled: a DELETE removes the object.
    Never,
    /// Enabled: a DELETE leaves the object as a noncurrent version.
    Enabled,
    /// Suspended: versions made while it was enabled remain.
    Suspended,
}

/// A `GetBucketVersioning` answer: no `<Status>` is a bucket that never had versioning.
pub fn parse_versioning(body: &[u8]) -> Result<Versioning, String> {
    with_root(body, "VersioningConfiguration", |root| {
        match element(root, "Status").map(str::trim) {
            None | Some("") => Ok(Versioning::Never),
            Some("Enabled") => Ok(Versioning::Enabled),
            Some("Suspended") => Ok(Versioning::Suspended),
            Some(other) => Err(format!("versioning status {:?}", escaped(other))),
        }
    })
}

/// `read(root)` of an XML answer whose root element is `<name>`; not UTF-8, not XML or
/// another root is an error that says so.
fn with_root<T>(
    body: &[u8],
    name: &str,
    read: impl FnOnce(roxmltree::Node) -> Result<T, String>,
) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != name {
        return Err(format!(
            "<{}> where <{name}> was expected",
            escaped(root.tag_name().name())
        ));
    }
    read(root)
}

/// One page of a ListObjectsV2 answer, read as [`Bucket::list`] reads it (which then checks
/// each key against the prefix and [`check_key`]).
pub fn parse_listing(body: &[u8]) -> Result<Page, String> {
    with_root(body, "ListBucketResult", read_page)
}

fn read_page(root: roxmltree::Node) -> Result<Page, String> {
    let mut page = Page::default();
    for c in root.children().filter(roxmltree::Node::is_element) {
        match c.tag_name().name() {
            "Contents" => {
                let key = element(c, "Key").ok_or("an object without <Key>")?;
                let size = element(c, "Size")
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or("an object without a readable <Size>")?;
                page.objects.push(Listed {
                    key: key.to_string(),
                    size,
                });
            }
            "CommonPrefixes" => {
                if let Some(p) = element(c, "Prefix") {
                    page.prefixes.push(p.to_string());
                }
            }
            _ => {}
        }
    }
    let truncated = element(root, "IsTruncated").is_some_and(|t| t.trim() == "true");
    page.next = match (truncated, element(root, "NextContinuationToken")) {
        (false, _) => None,
        (true, Some(t)) if t.len() > MAX_TOKEN => {
            return Err(format!("a continuation token of {} bytes", t.len()));
        }
        (true, Some(t)) if !t.is_empty() => Some(t.to_string()),
        (true, _) => return Err("truncated without <NextContinuationToken>".into()),
    };
    Ok(page)
}

/// A body read whole, up to `max` bytes: a connection that breaks part-way is a transport
/// error (try again), a body too long an unreadable answer.
async fn read_capped(
    op: &'static str,
    key: &str,
    mut r: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, S3Error> {
    let mut out = Vec::new();
    while let Some(c) = r.chunk().await.map_err(|e| transport(op, key, &e))? {
        if out.len().saturating_add(c.len()) > max {
            return Err(S3Error::Answer {
                op,
                key: key.to_string(),
                why: format!("longer than {max} bytes"),
            });
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// Sorts a reqwest error: a request this client could not build, or a certificate the CA does
/// not vouch for, will not go better by trying again; the rest (connect, timeout, a broken
/// body) may.
fn transport(op: &'static str, key: &str, e: &reqwest::Error) -> S3Error {
    let why = why(e);
    let key = key.to_string();
    if e.is_builder() {
        return S3Error::Settings(format!("{op} {key:?}: {why}"));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(_)) = tls {
            return S3Error::Certificate { op, key, why };
        }
        cause = c.source();
    }
    S3Error::Transport { op, key, why }
}

/// The error and its causes, on one line: reqwest's own Display says only "error sending
/// request".
fn why(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_a_url_would_rewrite_are_refused() {
        for k in ["", "a//b", "a/./b", "a/../b", "/a", "a/", "a\nb"] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
        assert!(check_key(&"x".repeat(1025)).is_err());
        for k in ["a", "p/room-1/rec 1/frag-000001.nfx", "a.b/c~d"] {
            assert!(check_key(k).is_ok(), "{k:?}");
        }
    }

    #[test]
    fn bucket_names_are_s3s() {
        for b in ["neoflix", "a-b.c", "abc"] {
            assert!(valid_bucket(b), "{b}");
        }
        for b in [
            "ab",
            "-ab",
            "ab-",
            "AB",
            "a_b",
            "a..b",
            "192.168.1.2",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket(b), "{b}");
        }
    }

    #[test]
    fn the_timestamp_is_utc_basic_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        assert_eq!(timestamp(t), "20130524T000000Z");
    }

    #[test]
    fn versioning_reads_never_enabled_and_suspended_and_nothing_else() {
        let doc = |inner: &str| {
            format!(
                "<?xml version=\"1.0\"?><VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{inner}</VersioningConfiguration>"
            )
        };
        assert_eq!(parse_versioning(doc("").as_bytes()), Ok(Versioning::Never));
        assert_eq!(
            parse_versioning(doc("<Status>Enabled</Status>").as_bytes()),
            Ok(Versioning::Enabled)
        );
        assert_eq!(
            parse_versioning(
                doc("<Status>Suspended</Status><MfaDelete>Disabled</MfaDelete>").as_bytes()
            ),
            Ok(Versioning::Suspended)
        );
        assert!(parse_versioning(doc("<Status>Maybe</Status>").as_bytes()).is_err());
        assert!(parse_versioning(b"<Error><Code>x</Code></Error>").is_err());
        assert!(parse_versioning(b"\xff").is_err());
    }

    #[test]
    fn a_listing_page_reads_keys_sizes_prefixes_and_the_next_token() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>
  <NextContinuationToken>tok&amp;1</NextContinuationToken>
  <Contents><Key>p/a&amp;b</Key><Size>12</Size><ETag>"x"</ETag></Contents>
  <Contents><Key>p/c</Key><Size>0</Size></Contents>
  <CommonPrefixes><Prefix>p/d/</Prefix></CommonPrefixes>
</ListBucketResult>"#;
        let p = parse_listing(xml).unwrap();
        assert_eq!(
            p.objects,
            vec![
                Listed {
                    key: "p/a&b".into(),
                    size: 12
                },
                Listed {
                    key: "p/c".into(),
                    size: 0
                }
            ]
        );
        assert_eq!(p.prefixes, vec!["p/d/".to_string()]);
        assert_eq!(p.next.as_deref(), Some("tok&1"));
    }

    #[test]
    fn an_unreadable_listing_is_named_not_guessed() {
        for (xml, want) in [
            (&b"<Error><Code>x</Code></Error>"[..], "<Error>"),
            (b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>", "NextContinuationToken"),
            (b"<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>", "Size"),
            (b"<ListBucketResult><Contents>", "not XML"),
            (b"\xff\xfe", "UTF-8"),
            (
                format!(
                    "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>{}</NextContinuationToken></ListBucketResult>",
                    "t".repeat(1025)
                )
                .as_bytes(),
                "continuation token of 1025 bytes",
            ),
        ] {
            let e = parse_listing(xml).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn https_without_a_ca_and_endpoints_with_paths_are_refused() {
        let creds = || Credentials {
            access_key_id: "k".into(),
            secret_access_key: Zeroizing::new("s".into()),
        };
        let s = |e: &str, b: &str| Settings {
            endpoint: Url::parse(e).unwrap(),
            bucket: b.into(),
            region: "garage".into(),
            path_style: true,
        };
        for (e, b, want) in [
            ("https://s3.example:3900", "neoflix", "needs `ca`"),
            (
                "http://:secret@s3.example",
                "neoflix",
                "scheme, host and port only",
            ),
            (
                "http://s3.example:3900/neoflix",
                "neoflix",
                "scheme, host and port only",
            ),
            ("ftp://s3.example", "neoflix", "not http or https"),
            ("http://s3.example", "Neoflix", "bucket"),
        ] {
            let err = Bucket::new(&s(e, b), creds(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{e}: {err}");
        }
        // Everything wrong is said at once.
        let all = Settings {
            region: "us east/1".into(),
            ..s("https://s3.example/x", "a..b")
        };
        let bad_key = Credentials {
            access_key_id: "k/1".into(),
            secret_access_key: Zeroizing::new("s".into()),
        };
        let err = Bucket::new(&all, bad_key, None).unwrap_err().to_string();
        for want in [
            "needs `ca`",
            "host and port only",
            "bucket \"a..b\"",
            "region",
            "access key id",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
        let b = Bucket::new(&s("http://127.0.0.1:3900", "neoflix"), creds(), None).unwrap();
        assert_eq!(
            (b.host.as_str(), b.base_path.as_str()),
            ("127.0.0.1:3900", "/neoflix")
        );
        let v = Settings {
            path_style: false,
            ..s("http://s3.example", "neoflix")
        };
        let b = Bucket::new(&v, creds(), None).unwrap();
        assert_eq!(
            (b.origin.as_str(), b.base_path.as_str()),
            ("http://neoflix.s3.example", "")
        );
    }
}
