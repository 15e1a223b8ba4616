//! A server that accepts only messages of one Rust type (the original's `MyMessageParser`).
//!
//! Run: `cargo run -p tagcast-server --example typed_messages` (listens on 127.0.0.1:8080), then
//! `tagcast send --url ws://127.0.0.1:8080 --json '{"messageProperty1": "Hello !"}'`.

use serde::{Deserialize, Serialize};
use tagcast::TypedParser;
use tagcast_server::{Config, Server};

/// The only message this server forwards: unknown properties are refused, `priority` defaults to 0.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MyMessage {
    message_property1: String,
    #[serde(default)]
    priority: u8,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let server = Server::builder()
        .config(Config {
            host: [127, 0, 0, 1].into(),
            ..Config::default()
        })
        .message_parser(TypedParser::<MyMessage>::new())
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    server
        .run(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
