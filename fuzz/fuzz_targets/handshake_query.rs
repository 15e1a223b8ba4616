//! The handshake's query string as the server reads it: decoding, then admission (the `tags`
//! value, bounded by `--max-tags`) exactly as `handshake::Admission::admit` applies it.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tagcast_server::auth::{AllowAll, Handshake};
use tagcast_server::handshake::{parse_query, Admission};
use tagcast_server::registry::Registry;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let admission = Admission {
        registry: Arc::new(Registry::default()),
        max_connections: None,
        max_tags: 64,
        auth: Arc::new(AllowAll),
        tokens: None,
    };
    let handshake = Handshake {
        peer: ([127, 0, 0, 1], 9).into(),
        query: parse_query(query),
        headers: Default::default(),
    };
    let _ = admission.admit(handshake, 0);
});
