//! `manifest.json` of a recording, as `neoflix verify` and export read it: custody first (the
//! device's `manifest.sig` over the manifest's bytes, under the department CA), then every
//! object checked against the seed recording's signed files (`fuzz/fixtures/recording`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use neoflix_format::custody::{Custody, SIGNATURE_FILE, check_recording};
use neoflix_format::verify::read_manifest_bytes;
use neoflix_format::{Manifest, TrustAnchors, check_contiguous, verify_manifest_with};

struct Fixture {
    /// The recording directory: the fixture's objects and its signature.
    dir: PathBuf,
    /// The manifest the signature was made over.
    signed: Vec<u8>,
    /// The fixture CA, as `--ca` gives it.
    anchors: TrustAnchors,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = neoflix_fuzz::scratch("manifest");
        for (name, bytes) in neoflix_fuzz::fixture_objects() {
            std::fs::write(dir.join(name), bytes).expect("object file");
        }
        let sig = neoflix_fuzz::fixture_file(SIGNATURE_FILE);
        std::fs::write(dir.join(SIGNATURE_FILE), sig).expect("signature file");
        Fixture {
            dir,
            signed: neoflix_fuzz::fixture_file("manifest.json"),
            anchors: neoflix_fuzz::trust_anchors(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Fixture {
        dir,
        signed,
        anchors,
    } = fixture();
    std::fs::write(dir.join("manifest.json"), data).expect("write manifest");
    let Ok((bytes, m)) = read_manifest_bytes(dir) else {
        return;
    };
    assert_eq!(
        bytes, data,
        "the signature is checked over the bytes as stored"
    );
    // The signature holds over the very bytes it signed and nothing else, whatever the
    // manifest says; and never for a device other than the one the manifest names.
    match check_recording(dir, &bytes, &m, Some(anchors)) {
        Ok(Custody::Signed(s)) => {
            assert_eq!(&bytes, signed, "a changed manifest passed custody");
            assert_eq!(s.name, m.device_id);
        }
        Ok(Custody::Unsigned) => panic!("the signature file is there"),
        Err(_) => assert_ne!(&bytes, signed, "the signed manifest failed custody"),
    }
    let text = serde_json::to_vec(&m).expect("a parsed manifest serializes");
    let again: Manifest = serde_json::from_slice(&text).expect("a written manifest parses");
    assert_eq!(again, m);
    // `neoflix_format::verify` is these two steps, with digests that do not check paths.
    let digests = neoflix_fuzz::Contained { dir: dir.clone() };
    if let Ok(v) = verify_manifest_with(dir, m, &digests) {
        let _ = check_contiguous(&v);
    }
});
