//! The handshake's query string as the server reads it: decoding, then the `tags` value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagcast_server::http::{parse_query, parse_tags};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    for (name, value) in parse_query(query) {
        if name == "tags" {
            let _ = parse_tags(&value, 64);
        }
    }
});
