//! # Tagcast: the protocol and the native SDK
//!
//! Tagcast is a WebSocket server that forwards each message to the connections whose tags match
//! (the successor of the PHP Gomoob WebSocket server, wire-compatible with it). This crate holds
//! what every part of Tagcast shares, so a tag or a request means the same thing in the server,
//! the native client and the browser SDK:
//!
//! - [`tags`]: [`Tags`] and [`TagValue`], validated as PROTOCOL.md §1 says (`5 == "5"`), and
//!   [`TagsError`];
//! - [`request`]: [`WebSocketRequest`], its builder, exact serialization, strict parsing, and
//!   its envelope frame with a client's defaults merged;
//! - [`parser`]: [`MessageParser`] and the string, JSON, serde-typed and JSON Schema parsers;
//! - [`tags_tree`]: [`TagsTree`], the inverted index behind routing;
//! - [`envelope`]: the `tagcast.v1` frames (message, ack, error) and their error codes;
//! - [`publisher`]: [`Publisher`], what application code depends on;
//! - [`resume`]: [`Cursor`](resume::Cursor), a client's place in the server's history: the
//!   `since` both SDKs reconnect with (PROTOCOL.md §11);
//! - [`client`] (feature `client`, on by default): [`WebSocketClient`], tokio-based, which can
//!   reconnect and resume by itself ([`Reconnect`], [`Event`]), open with a signed-tags token
//!   ([`ClientBuilder::token`]) and change its tags in place ([`WebSocketClient::set_tags`]);
//! - [`error`]: [`Error`], and [`Close`](error::Close), the close code and reason of a connection;
//! - [`mock`]: [`WebSocketClientMock`], a recording [`Publisher`] for unit tests;
//! - [`token`]: signed tags (HS256 JWTs) for `--signed-tags`: `sign_tags` for backends;
//! - [`url`]: handshake URLs (a server URL with `tags`, `key`, ...), for every client.
//!
//! With default features off the crate has no tokio and builds for `wasm32-unknown-unknown`.
//!
//! ```
//! use tagcast::{Tags, WebSocketRequest};
//!
//! let request = WebSocketRequest::new("Hello").with_tags(Tags::new().with("language", "EN"));
//! assert_eq!(request.to_json(), r#"{"message":"Hello","tags":{"language":"EN"},"metadata":{}}"#);
//! ```

#[cfg(feature = "client")]
pub mod api;
#[cfg(feature = "client")]
pub mod client;
pub mod envelope;
pub mod error;
pub mod mock;
pub mod parser;
pub mod publisher;
pub mod request;
pub mod resume;
pub mod tags;
pub mod tags_tree;
#[cfg(feature = "client")]
mod tls;
pub mod token;
pub mod url;

#[cfg(feature = "client")]
pub use client::{ClientBuilder, Event, Received, Reconnect, WebSocketClient};
pub use envelope::{ErrorCode, RequestId, ServerFrame, SUBPROTOCOL};
pub use error::Error;
pub use mock::WebSocketClientMock;
#[cfg(feature = "json-schema")]
pub use parser::SchemaParser;
pub use parser::{JsonParser, MessageParser, StringParser, TypedParser};
pub use publisher::{PublishFuture, Publisher};
pub use request::{Metadata, ParseOptions, WebSocketRequest};
pub use tags::{TagValue, Tags, TagsError};
pub use tags_tree::TagsTree;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub use token::sign_tags;
pub use token::{sign_tags_until, TokenClaims, TokenError};
