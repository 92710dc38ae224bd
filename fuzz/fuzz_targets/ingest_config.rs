//! `neoflix-ingest.toml`, as the department server reads it at start.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| neoflix_fuzz::scratch("ingest-config").join("neoflix-ingest.toml"))
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write config");
    if let Err(e) = neoflix_ingest::IngestConfig::load(path) {
        let _ = format!("{e:#}");
    }
});
