//! Request parsing (PROTOCOL.md §3), in raw and envelope mode: never a panic, and an accepted
//! request serializes and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagcast::request::{parse_request, ParseOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for allow_id in [false, true] {
        let options = ParseOptions {
            allow_id,
            max_tags: 64,
        };
        if let (_, Ok(request)) = parse_request(text, &options) {
            let again = tagcast::WebSocketRequest::parse(&request.to_json()).expect("round trip");
            assert_eq!(again, request);
        }
    }
});
