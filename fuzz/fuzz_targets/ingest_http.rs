//! What a device sends `neoflix-ingest` once its TLS handshake is done: request lines, paths,
//! headers and bodies (objects and manifests) of one HTTP/1.1 connection, served by the real
//! routes and storage. `sha-256=:AUTO:` in the input stands for the body's real digest.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use neoflix_fuzz::Ingest;

fuzz_target!(|data: &[u8]| {
    static SERVER: OnceLock<Ingest> = OnceLock::new();
    let answer = SERVER.get_or_init(Ingest::new).serve(data);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1."),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
});
