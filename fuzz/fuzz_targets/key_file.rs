//! Department key files: `department.pub` as neoflixd and the CLI read it (`neoflix-seal`),
//! `department.key` as review and export read it (`neoflix-open`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_open::DepartmentSecretKey;
use neoflix_seal::DepartmentPublicKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = DepartmentPublicKey::from_file_text(text) {
        let again = DepartmentPublicKey::from_file_text(&k.to_file_text()).expect("round trip");
        assert_eq!(again.to_bytes(), k.to_bytes());
        assert_eq!(again.key_id(), k.key_id());
    }
    if let Ok(k) = DepartmentSecretKey::from_file_text(text) {
        let again = DepartmentSecretKey::from_file_text(&k.to_file_text()).expect("round trip");
        assert_eq!(again.public_key().to_bytes(), k.public_key().to_bytes());
    }
});
