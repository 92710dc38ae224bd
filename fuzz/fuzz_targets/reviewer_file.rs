//! A reviewer file (`*.reviewer`) as `neoflix-ingest reviewer import` reads it, and an auth key
//! as a browser posts it at sign-in: the input is the file, a NUL byte, then the auth key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_format::reviewer::{KEY_LEN, ReviewerFile, WRAPPED_LEN};

fuzz_target!(|data: &[u8]| {
    let (file, auth) = neoflix_fuzz::split_signature(data);
    let Ok(parsed) = ReviewerFile::parse(file) else {
        return;
    };
    // What parses is whole: the server never stores a file it cannot use at sign-in.
    assert_eq!(parsed.wrapped_bytes().map(|w| w.len()), Some(WRAPPED_LEN));
    let again = ReviewerFile::parse(&serde_json::to_vec(&parsed).unwrap())
        .expect("a written reviewer file parses");
    assert_eq!(again, parsed);
    // Only a 32-byte key can pass, and the check never panics on what a browser posts.
    if parsed.check_auth(auth) {
        assert_eq!(auth.len(), KEY_LEN);
    }
});
