//! Decrypted fMP4 fragments, as their decode time is read and rebased in place.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_mp4::{first_decode_time, rebase_decode_time};

fuzz_target!(|data: &[u8]| {
    let first = first_decode_time(data);
    let mut rebased = data.to_vec();
    if let Ok(base) = first
        && rebase_decode_time(&mut rebased, base).is_ok()
    {
        assert_eq!(first_decode_time(&rebased), Ok(0));
    }
    let mut zero = data.to_vec();
    if rebase_decode_time(&mut zero, 0).is_ok() {
        assert_eq!(zero, data, "rebasing by 0 changes nothing");
    }
});
