//! Lines on neoflixd's control socket, read by the daemon's own parser
//! (`neoflix_control::parse_request`), and the reply lines `neoflix ctl` reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_control::{Reply, Request, parse_request};

fuzz_target!(|data: &[u8]| {
    // The daemon reads up to the first newline (at most MAX_LINE + 1 bytes).
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    if let Ok(req) = parse_request(line) {
        let wire = serde_json::to_string(&req).expect("requests serialize");
        assert_eq!(
            serde_json::from_str::<Request>(&wire).expect("round trip"),
            req
        );
    }
    if let Ok(text) = std::str::from_utf8(line)
        && let Ok(reply) = serde_json::from_str::<Reply>(text.trim())
    {
        serde_json::to_string(&reply).expect("replies serialize");
    }
});
