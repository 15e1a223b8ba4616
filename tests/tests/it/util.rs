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

/// Opens an envelope-mode connection (`tagcast.v1`) and reads its first frame, the
/// `position` frame (history on, the default).
pub async fn envelope(url: &str) -> Ws {
    envelope_at(url).await.0
}

/// Opens an envelope-mode connection and returns it with the position its first frame gives.
pub async fn envelope_at(url: &str) -> (Ws, String) {
    let mut ws = envelope_bare(url).await;
    let first = recv_json(&mut ws).await;
    assert_eq!(first["type"], "position", "the first frame: {first}");
    let pos = first["pos"]
        .as_str()
        .unwrap_or_else(|| panic!("no position in {first}"))
        .to_owned();
    (ws, pos)
}

/// Opens an envelope-mode connection and reads nothing.
pub async fn envelope_bare(url: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tagcast.v1"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "tagcast.v1"
    );
    ws
}

/// Reads a `message` frame, checks that it carries a position, and returns it without the
/// position (for comparisons) along with the position.
pub async fn recv_message(ws: &mut Ws) -> (serde_json::Value, String) {
    let mut frame = recv_json(ws).await;
    assert_eq!(frame["type"], "message", "{frame}");
    let pos = frame
        .as_object_mut()
        .and_then(|o| o.remove("pos"))
        .and_then(|p| p.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no position in {frame}"));
    (frame, pos)
}

/// The HTTP status and body of a refused handshake.
pub async fn refused(url: &str) -> (u16, String) {
    refused_request(url.into_client_request().expect("a valid URL")).await
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

/// Checks that nothing reached `ws` before a marker published now (over `/publish` on `addr`)
/// to `tags`, the connection's own: a silence check anchored on a later frame of the same
/// connection instead of a bare wait. Raw and envelope connections alike.
pub async fn assert_nothing_before_marker(
    ws: &mut Ws,
    addr: std::net::SocketAddr,
    tags: serde_json::Value,
) {
    let marker = publish_marker(addr, tags).await;
    assert_marker_next(ws, &marker).await;
}

/// Publishes a unique marker message to `tags` over `/publish` on `addr`; returns its text.
pub async fn publish_marker(addr: std::net::SocketAddr, tags: serde_json::Value) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let marker = format!(
        "marker {}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let body = serde_json::json!({ "message": marker, "tags": tags }).to_string();
    let answer = http_post(addr, "/publish", &body).await;
    assert_eq!(answer.status, 200, "the marker: {}", answer.body);
    marker
}

/// Checks that the next message `ws` gets is `marker` (raw or envelope): nothing came before.
pub async fn assert_marker_next(ws: &mut Ws, marker: &str) {
    let text = recv_text(ws).await;
    let got = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(frame)) => frame.get("message").cloned(),
        Ok(value) => Some(value),
        Err(_) => None,
    };
    assert_eq!(
        got,
        Some(serde_json::Value::String(marker.to_owned())),
        "expected nothing before the marker, got {text}"
    );
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close frame within 5 s");
        match next {
            Some(Ok(Message::Close(frame))) => {
                // tungstenite queues its close reply and writes it on the next read or flush:
                // send it now, or the server waits out its close grace (4 s) for it.
                let _ = ws.flush().await;
                return match frame {
                    Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
                    None => (u16::from(CloseCode::Status), String::new()),
                };
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The `tagcast` binary, built once per test process by `cargo build -p tagcast-server --bin
/// tagcast` (the `CARGO` that runs the tests, in their profile and target folder), so the CLI
/// tests never run a stale binary left over from an earlier build. A failed build fails every
/// test that needs the binary, with cargo's stderr.
pub fn tagcast_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // The test binary is TARGET/PROFILE/deps/integration-HASH.
        let mut dir = std::env::current_exe().map_err(|e| e.to_string())?;
        dir.pop();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let profile = dir
            .file_name()
            .and_then(|p| p.to_str())
            .ok_or_else(|| format!("no profile folder in {}", dir.display()))?
            .to_owned();
        let target_dir = dir
            .parent()
            .ok_or_else(|| format!("no target folder above {}", dir.display()))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(&cargo);
        build
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "-p", "tagcast-server", "--bin", "tagcast"])
            .arg("--target-dir")
            .arg(target_dir);
        // What `cargo test` sets for this test binary is not the build's environment: a build
        // script that reads one of them (ring's reads CARGO_MANIFEST_DIR) would see a change and
        // rebuild the TLS stack and the server, about 16 s, on every run.
        for (name, _) in std::env::vars_os() {
            let set_by_cargo_test = name.to_str().is_some_and(|name| {
                name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                        "CARGO_RUSTC_CURRENT_DIR",
                    ]
                    .contains(&name)
            });
            if set_by_cargo_test {
                build.env_remove(name);
            }
        }
        match profile.as_str() {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let output = build
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
        if !output.status.success() {
            return Err(format!(
                "`cargo build -p tagcast-server --bin tagcast` failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let bin = dir.join(format!("tagcast{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            return Err(format!("cargo built, but {} is missing", bin.display()));
        }
        Ok(bin)
    });
    match built {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Writes `content` to a fresh temporary file and returns its path.
pub fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tagcast-tests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
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

/// The HTTP status and body of a refused handshake made from a full request (custom headers).
pub async fn refused_request(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, String) {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the handshake was accepted"),
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

/// A plain HTTP/1.1 answer read off a raw socket.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header lines, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` (plus `extra_headers`, each `Name: value\r\n`) over a raw TCP connection
/// and reads one answer: its head, then `Content-Length` bytes, the chunks of a chunked body, or
/// everything until the server closes (no HTTP client crate needed). Adds `Connection: close`
/// unless `extra_headers` has its own `Connection`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str, extra_headers: &str) -> HttpAnswer {
    http_request(addr, "GET", path, extra_headers, b"").await
}

/// `POST path` with a JSON body.
pub async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> HttpAnswer {
    http_request(
        addr,
        "POST",
        path,
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .await
}

/// One HTTP/1.1 request over a fresh TCP connection.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &[u8],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connection = if extra_headers.to_ascii_lowercase().contains("connection:") {
        ""
    } else {
        "Connection: close\r\n"
    };
    let length = if method == "GET" && body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{connection}{length}{extra_headers}\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body);
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(answer) = parse_http_answer(&bytes, false) {
                return answer;
            }
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return parse_http_answer(&bytes, true).unwrap_or_else(|| {
                    panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&bytes))
                });
            }
            bytes.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an HTTP answer within 5 s")
}

/// The answer in `bytes` once it is complete (`ended`: the server closed the connection).
pub fn parse_http_answer(bytes: &[u8], ended: bool) -> Option<HttpAnswer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let body = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            return None;
        }
        body[..len].to_owned()
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        if !body.contains("0\r\n\r\n") && !ended {
            return None;
        }
        dechunk(body)
    } else if ended {
        body.to_owned()
    } else {
        return None;
    };
    Some(HttpAnswer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Reads until the connection ends or a close frame arrives, skipping data frames; returns the
/// close frame's code and reason if one came. Panics if neither happens within `limit`.
pub async fn drain_until_end(ws: &mut Ws, limit: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the connection ends in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return Some((u16::from(frame.code), frame.reason.as_str().to_owned()))
            }
            Some(Ok(Message::Close(None))) => {
                return Some((u16::from(CloseCode::Status), String::new()))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// A real `redis-server` on a Unix socket of its own (no TCP port), without persistence; killed
/// when dropped.
pub struct RedisServer {
    /// Its Unix socket: no TCP port is picked, released and hoped to stay free, and a restart
    /// finds its socket again.
    pub socket: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = std::env::temp_dir().join(format!(
            "tagcast-test-redis-{}-{n}.sock",
            std::process::id()
        ));
        let mut redis = RedisServer {
            socket,
            child: None,
        };
        redis.restart();
        redis
    }

    /// `redis+unix:///PATH`
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Starts (again) on the same socket and waits until it answers; fails at once when
    /// redis-server exits instead.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let _ = std::fs::remove_file(&self.socket);
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; the test command installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            use std::io::{Read, Write};
            if let Ok(mut unix) = std::os::unix::net::UnixStream::connect(&self.socket) {
                let _ = unix.set_read_timeout(Some(Duration::from_secs(1)));
                let mut answer = [0u8; 7];
                if unix.write_all(b"PING\r\n").is_ok()
                    && unix.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return;
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "redis-server exited: {exited:?}");
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: Redis going away without a goodbye) and waits for its end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A Redis URL where nothing listens: a Unix socket that does not exist (a released TCP
/// port could be taken by another test meanwhile).
pub fn unreachable_redis_url() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "tagcast-test-no-redis-{}-{n}.sock",
        std::process::id()
    ));
    format!("redis+unix://{}", path.display())
}

/// The value of a sample line `name{labels} value` in a metrics text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The close frame (code and reason) among the unmasked server frames in `bytes`, as read off
/// a raw TCP socket; `None` if the bytes hold no complete close frame.
pub fn server_close_frame(bytes: &[u8]) -> Option<(u16, String)> {
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let opcode = bytes[i] & 0x0f;
        let mut len = (bytes[i + 1] & 0x7f) as usize;
        let mut at = i + 2;
        if len == 126 {
            len = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().unwrap()) as usize;
            at += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().unwrap()) as usize;
            at += 8;
        }
        let payload = bytes.get(at..at + len)?;
        if opcode == 8 && len >= 2 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
        i = at + len;
    }
    None
}
