//! `journal.jsonl` of a recording a crash left open, as neoflixd's start-up recovery reads it.
//! Whatever the journal says, recovery must succeed and write a manifest that verifies: the
//! journal is trusted only as far as the files agree, and the files are the seed recording's.
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
        let mut files = neoflix_fuzz::fixture_objects();
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
    // Unsigned, as a box without a signing identity recovers: signing would not read the
    // journal, and would cost more than the recovery.
    let recovered = neoflix_store::recover(root, "0123456789abcdef", now, None).expect("recovery");
    assert_eq!(recovered, ["rec-1"]);
    if let Err(e) = neoflix_format::read_manifest(&dir) {
        panic!("recovery wrote a manifest it cannot read: {e}");
    }
    // One capture stream with one init segment and contiguous fragments: nothing a journal can
    // claim (an init segment that is not there, durations, markers) may make it unreadable.
    if let Err(e) = neoflix_format::verify(&dir) {
        panic!("the recovered recording does not verify: {e}");
    }
});
