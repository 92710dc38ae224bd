//! Sealed objects and their key records, as `neoflix export` and `neoflix verify` read them:
//! a key record (the first 144 bytes) and a sealed object (the rest). The layouts are
//! `neoflix-format`'s; unwrapping and opening `neoflix-open`'s.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use neoflix_format::{Kind, ObjectId, WrappedKey, parse_header};
use neoflix_open::{DepartmentSecretKey, open, unwrap};
use neoflix_seal::DataKey;

struct Keys {
    department: DepartmentSecretKey,
    /// A data key that opens nothing here, so that `open` checks lengths and tags of any header.
    other: DataKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let id = ObjectId {
            stream: [0; 16],
            seq: 0,
            kind: Kind::Init,
        };
        let (other, _) = neoflix_seal::seal(&id, b"").expect("seal");
        Keys {
            department: neoflix_fuzz::department_key(),
            other,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    if let Ok(h) = parse_header(data) {
        let _ = h.sealed_len();
    }
    let (record, sealed) = neoflix_fuzz::split_sealed(data);
    let _ = open(&keys.other, sealed);
    if let Ok(rec) = WrappedKey::from_bytes(record) {
        assert_eq!(rec.as_bytes(), record);
        if let Ok(key) = unwrap(&rec, &keys.department, sealed)
            && let Ok((header, plaintext)) = open(&key, sealed)
        {
            assert_eq!(plaintext.len() as u64, header.plaintext_len);
            assert_eq!(header.sealed_len().ok(), Some(sealed.len() as u64));
            assert_eq!(rec.object_header(), header.raw);
        }
    }
});
