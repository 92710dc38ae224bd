//! Payloads on `<prefix>/<device>/cmd`, as neoflixd reads fleet commands from the broker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_mqtt::{CommandError, parse_command};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_command(data, "room-1");
    let request_id = CommandError::request_id_of(data);
    match parsed {
        Ok(c) => assert_eq!(c.request_id, request_id),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
