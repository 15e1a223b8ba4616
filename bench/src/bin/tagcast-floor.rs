//! The floor under scenario 3 (BENCHMARKS.md): the least a server can do per delivery on this
//! machine. It takes the same load as `tagcast serve` in raw mode, but only the part the load
//! generator uses: subscribers are indexed by their `g` tag, and each request from a publisher
//! is written, as one pre-encoded frame, into each subscriber's socket with exactly one `write`
//! system call, with no queue, no task wake-up and no framework between. What Tagcast spends
//! per delivery above this is its own cost; the rest is the kernel's.
//!
//! `tagcast-floor [--host 127.0.0.1] [--port 0]` prints `listening on HOST:PORT` to stderr.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Subscriber = Arc<WebSocketStream<TcpStream>>;

#[derive(Default)]
struct Floor {
    /// Subscribers by the value of their `g` tag.
    groups: Mutex<HashMap<i64, Vec<Subscriber>>>,
    /// Writes that did not take the whole frame at once (a full socket): not retried.
    short_writes: AtomicU64,
}

/// The `g` tag of a handshake's `?tags={...}`, if it has one.
fn group_of(request: &Request) -> Option<i64> {
    let query = request.uri().query()?;
    let tags = url_decode(query.split('&').find_map(|p| p.strip_prefix("tags="))?);
    let tags: serde_json::Value = serde_json::from_str(&tags).ok()?;
    tags.get("g")?.as_i64()
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An unmasked text frame (server to client) around `payload`.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65_536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

async fn connection(floor: Arc<Floor>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut group = None;
    // tungstenite's callback type returns its (large) error response by value.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        group = group_of(request);
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    if let Some(g) = group {
        // A subscriber: never read again; frames go straight into its socket.
        let mut groups = floor.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.entry(g).or_default().push(Arc::new(ws));
        return;
    }
    // A publisher: each request is written to its group, one write per subscriber.
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(request) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        let Some(g) = request["tags"]["g"].as_i64() else {
            continue;
        };
        let payload = serde_json::to_vec(&request["message"]).unwrap_or_default();
        let frame = text_frame(&payload);
        let recipients = floor
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&g)
            .cloned()
            .unwrap_or_default();
        for subscriber in recipients {
            match subscriber.get_ref().try_write(&frame) {
                Ok(n) if n == frame.len() => {}
                _ => {
                    floor.short_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut host = "127.0.0.1".to_owned();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--host", Some(h)) => host = h,
            ("--port", Some(p)) => port = p.parse().unwrap_or(0),
            _ => {
                eprintln!("usage: tagcast-floor [--host HOST] [--port PORT]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind((host.as_str(), port)).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let floor = Arc::new(Floor::default());
    let shown = floor.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!(
            "short writes: {}",
            shown.short_writes.load(Ordering::Relaxed)
        );
        std::process::exit(0);
    });
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(connection(floor.clone(), tcp));
    }
}
