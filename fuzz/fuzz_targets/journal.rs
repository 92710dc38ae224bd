//! `journal.jsonl` of a recording a crash left open, as neoflixd's start-up recovery reads it.
//! Whatever the journal says, recovery must succeed and write a readable manifest.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| neoflix_fuzz::scratch("journal"))
}

/// The sealed objects of the open recording (the seed recording's), and a key record whose
/// fragment the crash cut off.
fn files() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut files = neoflix_fuzz::fixture_files();
        let key = files
            .iter()
            .find(|(n, _)| n == "frag-000000.key")
            .expect("key")
            .1
            .clone();
        files.push(("frag-000002.key".into(), key));
        files
    })
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    let dir = root.join("rec-1");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("recording directory");
    for (name, bytes) in files() {
        std::fs::write(dir.join(name), bytes).expect("object file");
    }
    std::fs::write(dir.join("journal.jsonl"), data).expect("journal");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let recovered = neoflix_store::recover(root, "0123456789abcdef", now).expect("recovery");
    assert_eq!(recovered, ["rec-1"]);
    // What recovery writes must at least be a manifest; whether it verifies depends on what
    // the journal claims (see docs/fuzzing.md).
    if let Err(e) = neoflix_store::read_manifest(&dir) {
        panic!("recovery wrote a manifest it cannot read: {e}");
    }
    let _ = neoflix_store::verify(&dir);
});
