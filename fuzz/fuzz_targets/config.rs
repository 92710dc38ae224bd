//! `neoflixd.toml`, as neoflixd and `neoflix config validate` read it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match neoflix_config::parse("neoflixd.toml", text) {
        Ok((_, warnings)) => {
            for w in warnings {
                let _ = w.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
