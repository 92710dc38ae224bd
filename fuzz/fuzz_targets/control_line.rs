//! Lines on neoflixd's control socket, parsed as the daemon does (one request per line, trimmed),
//! and the reply lines `neoflix ctl` reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_control::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let line = text.split_inclusive('\n').next().unwrap_or("").trim();
    if let Ok(req) = serde_json::from_str::<Request>(line) {
        let wire = serde_json::to_string(&req).expect("requests serialize");
        assert_eq!(
            serde_json::from_str::<Request>(&wire).expect("round trip"),
            req
        );
    }
    if let Ok(reply) = serde_json::from_str::<Reply>(line) {
        serde_json::to_string(&reply).expect("replies serialize");
    }
});
