//! Shared harness of the fuzz targets in `fuzz_targets/` and of the seed writer
//! (`examples/seeds.rs`).
//!
//! Each target feeds libFuzzer's bytes to the real public parser of one kind of outside data and
//! checks a property the parser promises (a round trip, a path that stays in its directory, a
//! recovered recording that verifies). A panic, an overflow (the targets are built with debug
//! assertions, so overflow checks are on), a hang or unbounded memory is a finding.
//!
//! Layout: the fixed department key the sealed seeds are made with, the fixed department PKI
//! (`fixtures/pki`: CA, the device that signs the seed recording, the server that signs
//! receipts), scratch directories on tmpfs for the parsers that read files, the seed
//! recording's files, a guard on the manifest walk's paths, and an in-process `neoflix-ingest`
//! connection for the HTTP target.
#![deny(missing_docs)]

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use neoflix_format::{SigningIdentity, TrustAnchors};
use neoflix_open::DepartmentSecretKey;
use sha2::{Digest, Sha256};

/// The department secret key every sealed seed is wrapped to. A fixed key lets the fuzzer reach
/// the code after a successful unwrap; it protects nothing.
pub const DEPARTMENT_KEY: &str = "neoflix-department-secret-key-v1 4e656f666c69782066757a7a206465706172746d656e74206b65792021212121";

/// The department key of [`DEPARTMENT_KEY`].
pub fn department_key() -> DepartmentSecretKey {
    DepartmentSecretKey::from_file_text(DEPARTMENT_KEY).expect("the fixed fuzz key parses")
}

/// Splits a `sealed` target input: the first [`neoflix_format::WRAPPED_KEY_LEN`] bytes are a
/// key record, the rest is the sealed object (short inputs are all key record).
pub fn split_sealed(data: &[u8]) -> (&[u8], &[u8]) {
    data.split_at(data.len().min(neoflix_format::WRAPPED_KEY_LEN))
}

/// Splits a `signature` target input at its first NUL byte: a signature file or a signed
/// receipt (JSON, which holds no raw NUL) before it, the document it signs after it (empty
/// without a NUL).
pub fn split_signature(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// The name of the ingest target's server certificate (and of the `host` its seeds send).
pub const INGEST_SERVER: &str = "ingest";

/// Where the fixed department PKI of the targets lives: `ca.crt`, the device certificate and
/// key `room-1.crt`/`.key` ([`INGEST_DEVICE`]) and the server's `ingest.crt`/`.key`
/// ([`INGEST_SERVER`]), issued for 100 years by the seed writer. Their keys protect nothing.
pub fn pki_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pki")
}

fn pki_file(name: &str) -> Vec<u8> {
    let path = pki_dir().join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run the seeds example)", path.display()))
}

/// The fixed department CA certificate (PEM).
pub fn ca_pem() -> Vec<u8> {
    pki_file("ca.crt")
}

/// The fixed department CA as the CLI's `--ca` loads it.
pub fn trust_anchors() -> TrustAnchors {
    TrustAnchors::from_pem(&ca_pem(), None).expect("the fixture CA loads")
}

/// The signing identity (certificate and key) named `name` in [`pki_dir`].
pub fn identity(name: &str) -> SigningIdentity {
    SigningIdentity::from_pem(
        &pki_file(&format!("{name}.crt")),
        &pki_file(&format!("{name}.key")),
    )
    .unwrap_or_else(|e| panic!("fixture identity {name}: {e}"))
}

/// A fresh directory for one target process, on tmpfs where there is one: the file-reading
/// targets write and fsync on every run, which on a disk would cost more than the parsing.
/// `NEOFLIX_FUZZ_TMP` (set by `scripts/fuzz`, which removes it afterwards) overrides the base.
/// Each call gets its own directory, so that the harness tests, which share a process, do not
/// share one.
pub fn scratch(name: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::var_os("NEOFLIX_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            }
        });
    let dir = base.join(format!("neoflix-fuzz-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Where the seed writer keeps its recording: the sealed objects and key records
/// (`init-000.nfx` and `.key`, `frag-000000.nfx`...), which the manifest seeds name and the
/// journal target recovers, and `manifest.json` with the device's `manifest.sig` over it.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/recording")
}

/// The sealed objects and key records of [`fixture_dir`], by name (not its manifest and
/// signature, which a recording still open does not have).
pub fn fixture_objects() -> Vec<(String, Vec<u8>)> {
    let dir = fixture_dir();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run the seeds example)", dir.display()))
        .map(|e| {
            let e = e.expect("fixture entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.path())
        })
        .filter(|(name, _)| name.ends_with(".nfx") || name.ends_with(".key"))
        .map(|(name, path)| (name, std::fs::read(path).expect("fixture file")))
        .collect();
    files.sort();
    files
}

/// One file of [`fixture_dir`].
pub fn fixture_file(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run the seeds example)", path.display()))
}

/// Digests for `verify_manifest_with` that read and hash like `neoflix verify`, after checking
/// the property the manifest walk exists to keep: a name from the manifest never reaches a path
/// outside the recording directory.
pub struct Contained {
    /// The recording directory the manifest is checked in.
    pub dir: PathBuf,
}

impl neoflix_format::Digests for Contained {
    fn size_and_sha256(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let rel = path
            .strip_prefix(&self.dir)
            .unwrap_or_else(|_| panic!("{path:?} is outside the recording directory"));
        let parts: Vec<Component> = rel.components().collect();
        assert!(
            parts.len() <= 1 && parts.iter().all(|c| matches!(c, Component::Normal(_))),
            "manifest name {rel:?} leaves the recording directory"
        );
        neoflix_format::ReadAndHash.size_and_sha256(path)
    }
}

/// The device the ingest target's requests come from (the certificate's name in production),
/// which recorded and signed the seed recording.
pub const INGEST_DEVICE: &str = "room-1";
/// The ingest target's object size limit: small, so the fuzzer reaches the refusal.
pub const INGEST_MAX_OBJECT: u64 = 256 * 1024;

/// Placeholder that [`with_digests`] replaces by the body's real `Content-Digest`.
pub const AUTO_DIGEST: &[u8] = b"sha-256=:AUTO:";

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Replaces every [`AUTO_DIGEST`] in a raw HTTP/1.1 request stream by the SHA-256 of the body
/// of the request it stands in (the `Content-Length` bytes after its header block, or the rest
/// of the input). A fuzzer cannot invert SHA-256; without this no PUT would ever be stored and
/// the manifest check behind it would go unfuzzed.
pub fn with_digests(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut copied = 0;
    let mut from = 0;
    while let Some(at) = find(input, AUTO_DIGEST, from) {
        let block_start = input[..at]
            .windows(4)
            .rposition(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        let Some(block_end) = find(input, b"\r\n\r\n", at) else {
            break;
        };
        let body_start = block_end + 4;
        let headers = String::from_utf8_lossy(&input[block_start..block_end]).to_ascii_lowercase();
        let length = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body_end = length
            .and_then(|n| body_start.checked_add(n))
            .map_or(input.len(), |e| e.min(input.len()));
        let digest = Sha256::digest(&input[body_start..body_end]);
        out.extend_from_slice(&input[copied..at]);
        out.extend_from_slice(b"sha-256=:");
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(digest)
                .as_bytes(),
        );
        out.extend_from_slice(b":");
        copied = at + AUTO_DIGEST.len();
        from = copied;
    }
    out.extend_from_slice(&input[copied..]);
    out
}

/// An in-process `neoflix-ingest` behind the TLS layer: the real routes and storage, on a
/// scratch tree, spoken to over an in-memory pipe, with custody by the fixed PKI ([`pki_dir`]):
/// a manifest signed by [`INGEST_DEVICE`] completes and is answered with a receipt signed by
/// [`INGEST_SERVER`].
pub struct Ingest {
    rt: tokio::runtime::Runtime,
    root: PathBuf,
    store: Arc<neoflix_ingest::storage::Storage>,
    /// Shared by every run, as by every request of a server: a leak shows as refusals.
    budget: neoflix_ingest::limits::Budget,
    /// Checks manifest signatures against the fixture CA and signs receipts: built once, as
    /// the server builds it at start.
    custody: Arc<neoflix_ingest::custody::Custody>,
}

impl Ingest {
    /// A server with an empty storage tree.
    pub fn new() -> Ingest {
        let root = scratch("ingest");
        let store = Arc::new(
            neoflix_ingest::storage::Storage::open(&root, INGEST_MAX_OBJECT).expect("storage"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let budget = neoflix_ingest::limits::Budget::new(4 * INGEST_MAX_OBJECT);
        let custody = Arc::new(
            neoflix_ingest::custody::Custody::from_pem(&ca_pem(), identity(INGEST_SERVER))
                .expect("custody from the fixture PKI"),
        );
        Ingest {
            rt,
            root,
            store,
            budget,
            custody,
        }
    }

    /// Sends `input` (after [`with_digests`]) as one connection's bytes, then half-closes;
    /// returns what the server answered. Every run starts from an empty tree.
    pub fn serve(&self, input: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = with_digests(input);
        let ctx = Arc::new(neoflix_ingest::http::Ctx {
            store: self.store.clone(),
            device: INGEST_DEVICE.into(),
            peer: "fuzz".into(),
            // The rate rule is wall-clock timing, which would make runs unrepeatable; an
            // in-memory pipe is never slow.
            rate: neoflix_ingest::http::RateLimit {
                min_bytes_per_sec: 0,
                grace: std::time::Duration::from_secs(3600),
            },
            budget: self.budget.clone(),
            custody: self.custody.clone(),
            index: None,
        });
        let answer = self.rt.block_on(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let service = hyper::service::service_fn(move |req| {
                neoflix_ingest::http::handle(req, ctx.clone())
            });
            // Half-close as a client that has sent everything does; the server still answers.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            let (mut rd, mut wr) = tokio::io::split(client);
            let send = async {
                let _ = wr.write_all(&request).await;
                let _ = wr.shutdown().await;
            };
            let mut answer = Vec::new();
            let receive = rd.read_to_end(&mut answer);
            let (_, _, _) = tokio::join!(conn, send, receive);
            answer
        });
        let _ = std::fs::remove_dir_all(self.root.join(INGEST_DEVICE));
        answer
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest::new()
    }
}

/// The answers on one ingest connection, split at their status lines: (status line such as
/// `201 Created`, body). Good enough for the JSON answers of this protocol, whose bodies never
/// hold `HTTP/1.1 `.
pub fn answers(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|a| {
            let status = a.lines().next().unwrap_or_default().to_string();
            let body = a.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
            (status, body)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_digest_is_the_bodys() {
        let req = b"PUT /x HTTP/1.1\r\ncontent-length: 3\r\ncontent-digest: sha-256=:AUTO:\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        let out = with_digests(req);
        let b64 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"abc"));
        let want = format!("content-digest: sha-256=:{b64}:\r\n\r\nabcGET");
        assert!(String::from_utf8_lossy(&out).contains(&want));
    }

    fn corpus_seed(path: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(path),
        )
        .expect("seed (run the seeds example)")
    }

    /// The upload seed must reach the manifest and custody checks and pass them, or the fuzzer
    /// starts far from the code that matters: six objects, the signature and the manifest are
    /// stored, and the answer is a receipt the fixture server signed for the seed recording.
    #[test]
    fn the_upload_seed_completes_with_a_signed_receipt() {
        let answers = answers(&Ingest::new().serve(&corpus_seed("ingest_http/seed-upload")));
        let created: Vec<_> = answers
            .iter()
            .filter(|(status, _)| status == "201 Created")
            .collect();
        assert_eq!(
            created.len(),
            8,
            "six objects, the signature and the manifest stored: {answers:?}"
        );
        let (signed, receipt) =
            neoflix_format::SignedReceipt::from_json(created[7].1.as_bytes()).expect("a receipt");
        let signer = trust_anchors()
            .check_server(
                neoflix_format::custody::Purpose::Receipt,
                &signed.signature,
                signed.receipt.as_bytes(),
                INGEST_SERVER,
                std::time::SystemTime::now(),
            )
            .expect("signed by the fixture server");
        assert_eq!(signer.name, INGEST_SERVER);
        assert_eq!(receipt.device_id, INGEST_DEVICE);
        assert_eq!(receipt.signed_by, INGEST_DEVICE);
        assert_eq!(
            receipt.manifest_sha256,
            neoflix_format::sha256_hex(&fixture_file("manifest.json"))
        );
        assert!(
            answers.iter().any(|(_, b)| b.contains("\"complete\":true")),
            "{answers:?}"
        );
    }

    /// Without the signature the same upload is refused at the custody check.
    #[test]
    fn the_unsigned_seed_is_refused_for_want_of_a_signature() {
        let answers = answers(&Ingest::new().serve(&corpus_seed("ingest_http/seed-unsigned")));
        let last = answers.last().expect("answers");
        assert!(!last.0.starts_with('2'), "{answers:?}");
        assert!(last.1.contains("not signed"), "{answers:?}");
    }

    fn recording_with(name: &str, file: &str, seed: &str) -> PathBuf {
        let root = scratch(name);
        let dir = root.join("rec-1");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in fixture_objects() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(seed);
        std::fs::copy(seed, dir.join(file)).expect("seed (run the seeds example)");
        root
    }

    /// The manifest seed and the fixture objects are one recording that verifies whole, and
    /// the fixture's signature over it holds: the device's, under the fixture CA.
    #[test]
    fn the_manifest_seed_verifies_against_the_fixture() {
        let root = recording_with("test-manifest", "manifest.json", "manifest/seed-recording");
        let dir = root.join("rec-1");
        std::fs::write(
            dir.join(neoflix_format::custody::SIGNATURE_FILE),
            fixture_file(neoflix_format::custody::SIGNATURE_FILE),
        )
        .unwrap();
        let (bytes, m) = neoflix_format::verify::read_manifest_bytes(&dir).unwrap();
        let custody =
            neoflix_format::custody::check_recording(&dir, &bytes, &m, Some(&trust_anchors()));
        let v = neoflix_format::verify(&dir);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(bytes, fixture_file("manifest.json"));
        match custody.expect("custody holds") {
            neoflix_format::custody::Custody::Signed(s) => {
                assert_eq!(s.name, INGEST_DEVICE);
                assert!(s.chain_checked);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(v.expect("verifies").manifest.fragments.len(), 2);
    }

    /// The signature seed is the fixture's signature and manifest, and it checks.
    #[test]
    fn the_signature_seeds_check() {
        let seed = corpus_seed("signature/seed-manifest");
        let (sig, doc) = split_signature(&seed);
        let sig = neoflix_format::Signature::from_json(sig).expect("a signature");
        assert_eq!(doc, fixture_file("manifest.json"));
        let signer = trust_anchors().check_device(&sig, doc).expect("checks");
        assert_eq!(signer.name, INGEST_DEVICE);
        let seed = corpus_seed("signature/seed-receipt");
        let (receipt, _) = split_signature(&seed);
        let (signed, r) = neoflix_format::SignedReceipt::from_json(receipt).expect("a receipt");
        assert_eq!(r.device_id, INGEST_DEVICE);
        signed
            .signature
            .check(
                neoflix_format::custody::Purpose::Receipt,
                signed.receipt.as_bytes(),
            )
            .expect("checks");
        let seed = corpus_seed("signature/seed-withdrawal");
        let (notice, _) = split_signature(&seed);
        let (signed, w) = neoflix_format::SignedWithdrawal::from_json(notice).expect("a notice");
        assert_eq!(w.device_id, INGEST_DEVICE);
        trust_anchors()
            .check_server(
                neoflix_format::custody::Purpose::Withdrawal,
                &signed.signature,
                signed.withdrawal.as_bytes(),
                INGEST_SERVER,
                std::time::SystemTime::now(),
            )
            .expect("checks as the fixture server's notice");
    }

    /// The journal seed recovers into a recording that verifies, markers included.
    #[test]
    fn the_journal_seed_recovers_a_recording_that_verifies() {
        let root = recording_with("test-journal", "journal.jsonl", "journal/seed-recording");
        let now = std::time::SystemTime::now();
        let ids = neoflix_store::recover(&root, "0123456789abcdef", now, None).unwrap();
        let v = neoflix_format::verify(&root.join("rec-1"));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(ids, ["rec-1"]);
        assert_eq!(v.expect("verifies").manifest.markers.len(), 2);
    }
}
