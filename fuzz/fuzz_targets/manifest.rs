//! `manifest.json` of a recording, as `neoflix verify` and export read it, checked against the
//! seed recording's sealed objects (`fuzz/fixtures/recording`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use neoflix_store::{Manifest, check_contiguous, read_manifest, verify_manifest_with};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = neoflix_fuzz::scratch("manifest");
        for (name, bytes) in neoflix_fuzz::fixture_files() {
            std::fs::write(dir.join(name), bytes).expect("object file");
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.join("manifest.json"), data).expect("write manifest");
    let Ok(m) = read_manifest(dir) else {
        return;
    };
    let text = serde_json::to_vec(&m).expect("a parsed manifest serializes");
    let again: Manifest = serde_json::from_slice(&text).expect("a written manifest parses");
    assert_eq!(again, m);
    // `neoflix_store::verify` is these two steps, with digests that do not check paths.
    let digests = neoflix_fuzz::Contained { dir: dir.clone() };
    if let Ok(v) = verify_manifest_with(dir, m, &digests) {
        let _ = check_contiguous(&v);
    }
});
