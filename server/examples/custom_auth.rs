//! A server with its own authorization rules (the original's `IAuthManager`): connections from
//! loopback only, and sends only with `metadata.token == "let-me-in"`.
//!
//! Run: `cargo run -p tagcast-server --example custom_auth`, then
//! `tagcast send --url ws://127.0.0.1:8080 --metadata '{"token":"let-me-in"}' Hello`.

use tagcast::WebSocketRequest;
use tagcast_server::auth::{AuthManager, Denied, Handshake};
use tagcast_server::Server;

struct LoopbackWithToken;

impl AuthManager for LoopbackWithToken {
    fn authorize_open(&self, handshake: &Handshake) -> Result<(), Denied> {
        if handshake.peer.ip().is_loopback() {
            Ok(())
        } else {
            Err(Denied(
                "connections are accepted from this machine only".into(),
            ))
        }
    }

    fn authorize_send(&self, _: &Handshake, request: &WebSocketRequest) -> Result<(), Denied> {
        match request.metadata().get("token").and_then(|t| t.as_str()) {
            Some("let-me-in") => Ok(()),
            _ => Err(Denied("metadata.token is missing or wrong".into())),
        }
    }

    fn keeps_handshake(&self) -> bool {
        false // authorize_send does not read the handshake: keep only the peer address
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let server = Server::builder().auth_manager(LoopbackWithToken).build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    server
        .run(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
