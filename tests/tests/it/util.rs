//! Shared helpers: a `TestServer` on an ephemeral port, raw WebSocket clients, and the binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tagcast_server::{Config, Server, ServerBuilder};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to conclude that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// A raw WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server running in this process on 127.0.0.1:0; stopped (1001 to everyone) when dropped.
pub struct TestServer {
    /// `ws://127.0.0.1:PORT`
    pub url: String,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    pub addr: std::net::SocketAddr,
    pub registry: std::sync::Arc<tagcast_server::registry::Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> TestServer {
        Self::with_builder(Server::builder().config(config)).await
    }

    pub async fn with_builder(builder: ServerBuilder) -> TestServer {
        let server = builder.build().expect("test server configuration");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = server.registry();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            url: format!("ws://{addr}"),
            http: format!("http://{addr}"),
            addr,
            registry,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `ws://…/?tags=<encoded JSON>`
    pub fn url_with_tags(&self, tags: &str) -> String {
        format!("{}/?tags={}", self.url, encode(tags))
    }

    /// Stops the server and waits until `run` returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
    }

    /// Waits until the server holds `n` connections.
    pub async fn wait_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.registry.len() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} connections, the server has {}",
                self.registry.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Opens a raw-mode connection (no subprotocol).
pub async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

/// Opens an envelope-mode connection (`tagcast.v1`).
pub async fn envelope(url: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tagcast.v1"));
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "tagcast.v1"
    );
    ws
}

/// The HTTP status and body of a refused handshake.
pub async fn refused(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the handshake to {url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// The next text frame (pings and pongs skipped); panics on close or timeout.
pub async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within 5 s");
        match next {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next text frame parsed as JSON.
pub async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
}

/// Asserts that no data frame arrives for a while.
pub async fn assert_silent(ws: &mut Ws) {
    match tokio::time::timeout(QUIET, ws.next()).await {
        Err(_) => {}
        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
        Ok(other) => panic!("expected nothing, got {other:?}"),
    }
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close frame within 5 s");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The `tagcast` binary, built by the test command before the tests (`cargo build --bins`).
pub fn tagcast_bin() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("tagcast{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p tagcast-server` (the README's test command does)",
        bin.display()
    );
    bin
}

/// Writes `content` to a fresh temporary file and returns its path.
pub fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tagcast-tests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The auth file of PROTOCOL.md §5.
pub const AUTH_YAML: &str = "applications:
  - key: application1
    secret: B4ajW3P7jfWEYPZsQV8mnteHg97G67uW
    authorizeOpen: true
  - key: application2
    secret: 33yLWdynhaqm9tYjDFKf8gB8zmAPKdDP
    authorizeOpen: false
";
pub const SECRET1: &str = "B4ajW3P7jfWEYPZsQV8mnteHg97G67uW";
pub const SECRET2: &str = "33yLWdynhaqm9tYjDFKf8gB8zmAPKdDP";
