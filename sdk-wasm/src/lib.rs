//! # tagcast-wasm: the browser SDK
//!
//! A thin wasm-bindgen layer over the `tagcast` protocol crate (default features off) and
//! gloo-net's WebSocket, published as the npm package `tagcast`. Tags are validated by the same
//! Rust code as on the server, so a bad tag fails before the network. The client speaks the
//! `tagcast.v1` envelope protocol: every `send` resolves to the server's acknowledgement,
//! `setTags` changes the connection's tags in place, and it reconnects with exponential backoff
//! and full jitter when the connection drops, resuming where it left off.
//!
//! ```js
//! import init, { connect } from "tagcast";
//! await init();
//! const client = await connect("ws://localhost:8080", { language: "FR" });
//! client.on("message", ({ message, tags }) => console.log(message, tags));
//! const { delivered } = await client.send("Bonjour !", { language: "FR" });
//! ```
//!
//! One module per concern:
//!
//! - `types`: the TypeScript declarations (`Tags`, `ConnectOptions`, `TagcastError`, ...);
//! - `options`: reading what JavaScript passes in (tags, metadata, options), and `validateTags`;
//! - `errors`: the `TagcastError`s JavaScript catches, with their codes (the class itself is
//!   `js/tagcast-error.js`, a snippet that `scripts/fix-package.mjs` re-exports);
//! - `events`: the application's handlers (`on`, `off`, `onMessage`, `onStateChange`), and
//!   how a handler that throws is reported;
//! - `client`: `connect`, `TagcastClient` (send, setTags, close) and the reading and
//!   reconnecting task.

mod client;
mod errors;
mod events;
mod options;
mod types;

pub use client::{connect, TagcastClient};
pub use options::validate_tags;
