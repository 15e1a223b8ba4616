//! Tag parsing (PROTOCOL.md §1): never a panic, and valid tags serialize and parse back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagcast::Tags;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tags) = Tags::parse(text) {
        assert_eq!(Tags::parse(&tags.to_json()).expect("round trip"), tags);
    }
});
