//! What an S3-compatible store answers `neoflix-ingest`: a ListObjectsV2 page and an error
//! document, as the object-store client reads them. A hostile or broken store must get an
//! error, never a panic, a hang or memory without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = neoflix_s3::parse_listing(data) {
        for o in &page.objects {
            let _ = neoflix_s3::check_key(&o.key);
        }
        assert!(page.next.as_ref().is_none_or(|t| !t.is_empty() && t.len() <= 1024));
    }
    let _ = neoflix_s3::parse_error(data);
});
