//! Shared harness of the fuzz targets in `fuzz_targets/` and of the seed writer
//! (`examples/seeds.rs`).
//!
//! Each target feeds libFuzzer's bytes to the real public parser of one kind of outside data and
//! checks a property the parser promises (a round trip, a path that stays in its directory, a
//! recovered recording that verifies). A panic, an overflow (the targets are built with debug
//! assertions, so overflow checks are on), a hang or unbounded memory is a finding.
//!
//! Layout: the fixed department key the sealed seeds are made with, scratch directories on
//! tmpfs for the parsers that read files, the seed recording's objects, a guard on the
//! manifest walk's paths, and an in-process
//! `neoflix-ingest` connection for the HTTP target.
#![deny(missing_docs)]

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use neoflix_seal::DepartmentSecretKey;
use sha2::{Digest, Sha256};

/// The department secret key every sealed seed is wrapped to. A fixed key lets the fuzzer reach
/// the code after a successful unwrap; it protects nothing.
pub const DEPARTMENT_KEY: &str = "neoflix-department-secret-key-v1 4e656f666c69782066757a7a206465706172746d656e74206b65792021212121";

/// The department key of [`DEPARTMENT_KEY`].
pub fn department_key() -> DepartmentSecretKey {
    DepartmentSecretKey::from_file_text(DEPARTMENT_KEY).expect("the fixed fuzz key parses")
}

/// Splits a `sealed` target input: the first [`neoflix_seal::WRAPPED_KEY_LEN`] bytes are a key
/// record, the rest is the sealed object (short inputs are all key record).
pub fn split_sealed(data: &[u8]) -> (&[u8], &[u8]) {
    data.split_at(data.len().min(neoflix_seal::WRAPPED_KEY_LEN))
}

/// A fresh directory for one target process, on tmpfs where there is one: the file-reading
/// targets write and fsync on every run, which on a disk would cost more than the parsing.
/// `NEOFLIX_FUZZ_TMP` (set by `scripts/fuzz`, which removes it afterwards) overrides the base.
pub fn scratch(name: &str) -> PathBuf {
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
    let dir = base.join(format!("neoflix-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Where the seed writer keeps the sealed objects of its recording (`init-000.nfx` and
/// `.key`, `frag-000000.nfx`...): the manifest seeds name them, the journal target recovers them.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/recording")
}

/// The files of [`fixture_dir`], by name.
pub fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let dir = fixture_dir();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run the seeds example)", dir.display()))
        .map(|e| {
            let e = e.expect("fixture entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("fixture file"))
        })
        .collect();
    files.sort();
    files
}

/// Digests for `verify_manifest_with` that read and hash like `neoflix verify`, after checking
/// the property the manifest walk exists to keep: a name from the manifest never reaches a path
/// outside the recording directory.
pub struct Contained {
    /// The recording directory the manifest is checked in.
    pub dir: PathBuf,
}

impl neoflix_store::Digests for Contained {
    fn size_and_sha256(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let rel = path
            .strip_prefix(&self.dir)
            .unwrap_or_else(|_| panic!("{path:?} is outside the recording directory"));
        let parts: Vec<Component> = rel.components().collect();
        assert!(
            parts.len() <= 1 && parts.iter().all(|c| matches!(c, Component::Normal(_))),
            "manifest name {rel:?} leaves the recording directory"
        );
        neoflix_store::ReadAndHash.size_and_sha256(path)
    }
}

/// The device the ingest target's requests come from (the certificate's name in production).
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
/// scratch tree, spoken to over an in-memory pipe.
pub struct Ingest {
    rt: tokio::runtime::Runtime,
    root: PathBuf,
    store: Arc<neoflix_ingest::storage::Storage>,
    /// Shared by every run, as by every request of a server: a leak shows as refusals.
    budget: neoflix_ingest::limits::Budget,
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
        Ingest {
            rt,
            root,
            store,
            budget,
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

impl Default for Ingest {
    fn default() -> Self {
        Ingest::new()
    }
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

    /// The upload seed must reach the manifest check and pass it, or the fuzzer starts far from
    /// the code that matters.
    #[test]
    fn the_upload_seed_makes_a_complete_recording() {
        let seed = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ingest_http/seed-upload"),
        )
        .expect("seed (run the seeds example)");
        let answer = String::from_utf8_lossy(&Ingest::new().serve(&seed)).into_owned();
        let created = answer.matches("HTTP/1.1 201 Created").count();
        assert_eq!(created, 7, "six objects and the manifest stored: {answer}");
        assert!(answer.contains("\"complete\":true"), "{answer}");
    }

    fn recording_with(name: &str, file: &str, seed: &str) -> PathBuf {
        let root = scratch(name);
        let dir = root.join("rec-1");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in fixture_files() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(seed);
        std::fs::copy(seed, dir.join(file)).expect("seed (run the seeds example)");
        root
    }

    /// The manifest seed and the fixture objects are one recording that verifies whole.
    #[test]
    fn the_manifest_seed_verifies_against_the_fixture() {
        let root = recording_with("test-manifest", "manifest.json", "manifest/seed-recording");
        let v = neoflix_store::verify(&root.join("rec-1"));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(v.expect("verifies").manifest.fragments.len(), 2);
    }

    /// The journal seed recovers into a recording that verifies, markers included.
    #[test]
    fn the_journal_seed_recovers_a_recording_that_verifies() {
        let root = recording_with("test-journal", "journal.jsonl", "journal/seed-recording");
        let now = std::time::SystemTime::now();
        let ids = neoflix_store::recover(&root, "0123456789abcdef", now).unwrap();
        let v = neoflix_store::verify(&root.join("rec-1"));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(ids, ["rec-1"]);
        assert_eq!(v.expect("verifies").manifest.markers.len(), 2);
    }
}
