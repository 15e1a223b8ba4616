//! The HTTP side, and the only module that names axum: the WebSocket upgrade (the rules of
//! admission live in [`handshake`](crate::handshake)), `/healthz`, `/metrics`, `POST /publish`
//! (PROTOCOL.md §7), the `--static` folder, and 426 for other plain requests.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Json;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tagcast::RequestId;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tower::ServiceExt;

use crate::api;
use crate::auth::Handshake;
use crate::close::Closer;
use crate::cluster::Bus;
use crate::config::Config;
use crate::connection::{Connection, Settings};
use crate::deadline::HeadDeadline;
use crate::handshake::{parse_query, unix_now, Admission, Admitted};
use crate::metrics::{Metrics, Transport};
use crate::outbox::direct::SharedTcp;
use crate::outbox::Outbox;
use crate::refusal::{Reason, Refusal};
use crate::registry::{Registered, Registry};
use crate::router::{Greeting, Router};

/// What every request handler shares.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// The open connections.
    pub registry: Arc<Registry>,
    /// Routing of requests.
    pub router: Arc<Router>,
    /// The rules of the WebSocket handshake.
    pub admission: Admission,
    /// What each connection's task needs from the configuration.
    pub settings: Settings,
    /// The `--static` folder, served on plain GET requests.
    pub static_files: Option<tower_http::services::ServeDir>,
    /// Counters and histograms of `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The TLS configuration, when `--tls-cert` and `--tls-key` are given.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The bus between the nodes of a cluster.
    pub bus: Arc<dyn Bus>,
    /// Set when a drain begins (SIGTERM): `/readyz` and new handshakes answer 503.
    pub draining: std::sync::atomic::AtomicBool,
}

/// Read buffer of each connection. tungstenite's default (128 KiB) would cost that much per
/// idle connection; requests are small, and larger frames grow the buffer as they arrive.
const READ_BUFFER: usize = 512;
/// Bytes a write batch accumulates before tungstenite writes to the socket (flush writes the
/// rest); the buffer only grows on connections that receive.
const WRITE_BUFFER: usize = 16 * 1024;

/// The HTTP side of the server.
pub fn app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/publish", post(publish))
        .route("/presence", get(presence))
        .route("/disconnect", post(disconnect))
        .route("/retag", post(retag))
        .route("/history", get(history))
        .fallback(websocket_or_426)
        .with_state(state)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.bus.is_up() {
        "ok".into_response()
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster unavailable: the Redis bus is down",
        )
    }
}

/// The process serves (a liveness probe: unlike `/healthz`, a Redis outage does not fail it).
async fn livez() -> Response {
    "ok".into_response()
}

/// Whether to send traffic here: 503 while the bus is down or the server drains.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: the server is shutting down",
        );
    }
    if !state.bus.is_up() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster unavailable: the Redis bus is down",
        );
    }
    "ok".into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.connections.set(state.registry.len() as i64);
    let (kept, bytes) = state
        .router
        .fanout
        .history()
        .map_or((0, 0), |history| history.size());
    state.metrics.history_requests.set(kept as i64);
    state.metrics.history_bytes.set(bytes as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn json_error(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({ "error": error.into() }))).into_response()
}

/// One answer of `/publish`: `{"delivered": n}` or `{"error": "..."}`, with the request's `id`.
fn answer(id: Option<RequestId>, result: &Result<u64, Refusal>) -> Value {
    let mut body = match result {
        Ok(delivered) => json!({ "delivered": delivered }),
        Err(refusal) => json!({ "error": refusal.text }),
    };
    if let Some(id) = id {
        body["id"] = serde_json::to_value(id).unwrap_or(Value::Null);
    }
    body
}

/// `POST /publish`: one WebSocketRequest, or an array of them answered in order.
async fn publish(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = state.config.max_message_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            state.metrics.rejected(Reason::TooBig);
            let text = format!("the body is over --max-message-bytes ({limit} bytes)");
            log_refused(&state, peer, "/publish", 413, &text);
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, text);
        }
    };
    state.metrics.bytes_in.inc_by(bytes.len() as u64);
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.received(Transport::Http);
            state.metrics.rejected(Reason::BadRequest);
            let text = format!("the body is not valid JSON: {e}");
            log_refused(&state, peer, "/publish", 400, &text);
            return json_error(StatusCode::BAD_REQUEST, text);
        }
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let trusted = state
        .config
        .api_key
        .as_ref()
        .is_some_and(|key| api::bearer_matches(authorization, key));
    // A bearer key that does not open the API: an unauthorized refusal says so, instead of
    // only asking for the metadata the caller meant to replace with it.
    let wrong_bearer = !trusted && authorization.is_some_and(|v| v.starts_with(b"Bearer "));
    let explain = |mut result: Result<_, crate::refusal::Refusal>| {
        if let Err(refusal) = &mut result {
            if wrong_bearer && refusal.reason == crate::refusal::Reason::Unauthorized {
                refusal.text = if state.config.api_key.is_some() {
                    format!(
                        "the Authorization header's API key is wrong; without it, {}",
                        refusal.text
                    )
                } else {
                    format!(
                        "this server has no --api-key, so the Authorization header opens nothing; {}",
                        refusal.text
                    )
                };
            }
        }
        result
    };
    let handshake = Handshake {
        peer,
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        headers: parts.headers,
    };
    match value {
        Value::Array(requests) => {
            // One after the other: the requests of a batch keep their order everywhere.
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                let (id, result) = state.router.route_value(request, &handshake, trusted).await;
                let result = explain(result);
                if let Err(refusal) = &result {
                    let status = refusal.reason.http_status();
                    log_refused(&state, peer, "/publish", status, &refusal.text);
                }
                results.push(answer(id, &result));
            }
            Json(json!({ "results": results })).into_response()
        }
        single => {
            let (id, result) = state.router.route_value(single, &handshake, trusted).await;
            let result = explain(result);
            let status = match &result {
                Ok(_) => StatusCode::OK,
                Err(refusal) => {
                    let code = refusal.reason.http_status();
                    log_refused(&state, peer, "/publish", code, &refusal.text);
                    status(code)
                }
            };
            (status, Json(answer(id, &result))).into_response()
        }
    }
}

/// Logs a refused HTTP request at INFO, within the refusal log budget (never a secret: the
/// text is the server's own explanation).
fn log_refused(state: &AppState, peer: SocketAddr, path: &str, status: u16, text: &str) {
    if state.router.refusals.allow() {
        tracing::info!(%peer, path, status, reason = %text, "HTTP request refused");
    }
}

fn api(state: &AppState) -> api::Api<'_> {
    api::Api {
        key: state.config.api_key.as_ref(),
        fanout: &state.router.fanout,
        max_tags: state.config.max_tags,
        bus: &*state.router.bus,
    }
}

/// Answers a server API request that every node of a cluster answers: checks the key, turns
/// the request into a question with `parse`, and asks it.
async fn api_ask(
    state: &AppState,
    peer: SocketAddr,
    name: &'static str,
    headers: &axum::http::HeaderMap,
    parse: impl FnOnce(&api::Api<'_>) -> Result<api::Question, api::Answer>,
) -> Response {
    let api = api(state);
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let answer = match api.authorize(authorization).and_then(|()| parse(&api)) {
        Ok(question) => api.ask(question).await,
        Err(refused) => refused,
    };
    log_api_answer(state, peer, name, &answer);
    state.metrics.api_request(name, answer.status);
    (status(answer.status), Json(answer.body)).into_response()
}

/// Logs a server API request that was refused (an answer with an `error`).
fn log_api_answer(state: &AppState, peer: SocketAddr, name: &str, answer: &api::Answer) {
    if answer.status >= 400 {
        let text = answer.body["error"].as_str().unwrap_or_default();
        log_refused(state, peer, &format!("/{name}"), answer.status, text);
    }
}

/// Answers a server API request: checks the key, then runs `endpoint`.
fn api_answer(
    state: &AppState,
    peer: SocketAddr,
    name: &'static str,
    headers: &axum::http::HeaderMap,
    endpoint: impl FnOnce(&api::Api<'_>) -> api::Answer,
) -> Response {
    let api = api(state);
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let answer = match api.authorize(authorization) {
        Ok(()) => endpoint(&api),
        Err(refused) => refused,
    };
    log_api_answer(state, peer, name, &answer);
    state.metrics.api_request(name, answer.status);
    (status(answer.status), Json(answer.body)).into_response()
}

async fn presence(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let query = request.uri().query().map(str::to_owned);
    api_ask(&state, peer, "presence", request.headers(), |api| {
        api.presence(query.as_deref())
    })
    .await
}

async fn history(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let query = request.uri().query().map(str::to_owned);
    api_answer(&state, peer, "history", request.headers(), |api| {
        api.history(query.as_deref())
    })
}

async fn disconnect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, state.config.max_message_bytes).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is over --max-message-bytes",
        );
    };
    api_ask(&state, peer, "disconnect", &parts.headers, |api| {
        api.disconnect(&body)
    })
    .await
}

async fn retag(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, state.config.max_message_bytes).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is over --max-message-bytes",
        );
    };
    api_ask(&state, peer, "retag", &parts.headers, |api| {
        api.retag(&body)
    })
    .await
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The peer address of a connection, over plain TCP or TLS, and for plain TCP the socket the
/// router may write to directly.
#[derive(Debug, Clone)]
pub struct Peer(pub SocketAddr, pub Option<SharedTcp>);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr(), None)
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        let socket = stream.io().get_ref().clone();
        Peer(*stream.remote_addr(), Some(socket))
    }
}

/// A TCP listener whose connections have `TCP_NODELAY` (small frames must not wait for
/// Nagle's algorithm) and a bound on the time to send the request head.
#[derive(Debug)]
pub struct PlainListener(pub tokio::net::TcpListener, pub std::time::Duration);

impl axum::serve::Listener for PlainListener {
    type Io = HeadDeadline<SharedTcp>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (HeadDeadline::new(SharedTcp::new(stream), self.1), peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr(), None)
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn websocket_or_426(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, direct)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let upgrade = match upgrade_request(&mut parts) {
        Ok(upgrade) => upgrade,
        Err(Some((status, why))) => return text(status, why),
        Err(None) => return plain_request(&state, parts, body).await,
    };
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        state.metrics.handshake_rejected(503);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down: connect to another node",
        );
    }
    let handshake = Handshake {
        peer,
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        headers: parts.headers,
    };
    let admitted = match state.admission.admit(handshake, unix_now()) {
        Ok(admitted) => admitted,
        Err(refused) => {
            let status = refused.status();
            if state.router.refusals.allow() {
                tracing::info!(%peer, status, reason = %refused.text(), "handshake refused");
            }
            state.metrics.handshake_rejected(status);
            return text(self::status(status), refused.text());
        }
    };
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, upgrade.accept)
        .body(Body::empty())
        .expect("a valid response");
    if let Some(protocol) = admitted
        .protocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    let max = state.config.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    // Registered before the 101 goes out, so that a client that saw its handshake complete
    // receives everything published after: what is routed to it before its task runs waits in
    // its queue (held: nothing is written around the 101 and the greeting).
    let (registered, greeting) = register(&state, peer, direct, admitted);
    tokio::spawn(async move {
        // Upgrade failed (the client went away): `registered` leaves the registry and gives
        // its slot back.
        let Ok(upgraded) = upgrade.on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let router = state.router.clone();
        crate::connection::run(socket, registered, router, state.settings, greeting).await
    });
    response
}

/// A WebSocket upgrade request's parts (RFC 6455 §4.2.1, as axum's extractor checks them).
struct Upgrade {
    accept: String,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// The upgrade a request asks for; `Err(None)` for a plain request, `Err(Some(answer))` for a
/// broken upgrade request.
fn upgrade_request(parts: &mut Parts) -> Result<Upgrade, Option<(StatusCode, &'static str)>> {
    let has = |name: header::HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") {
        return Err(None);
    }
    let refuse = |status: StatusCode, why: &'static str| Err(Some((status, why)));
    if parts.method != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        );
    }
    if !has(header::CONNECTION, "upgrade") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        );
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        );
    }
    let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        );
    };
    Ok(Upgrade { accept, on_upgrade })
}

/// A request without an upgrade: the `--static` folder, or 426 saying how to connect.
async fn plain_request(state: &AppState, parts: Parts, body: Body) -> Response {
    if let Some(files) = &state.static_files {
        // ServeDir never lists directories and never leaves its folder.
        return match files
            .clone()
            .oneshot(Request::from_parts(parts, body))
            .await
        {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        };
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let mut response = text(
        StatusCode::UPGRADE_REQUIRED,
        "This is a Tagcast WebSocket server: open a WebSocket to ws://HOST:PORT/?tags={\"language\":\"FR\"} (tags optional).",
    );
    response.headers_mut().insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    response
}

/// Puts an admitted connection in the registry (closed at once during a shutdown), before its
/// 101 is sent, and returns what it writes first (its position, and its replay when it
/// resumes). Its queue holds every frame until its task has written that greeting.
fn register(
    state: &AppState,
    peer: SocketAddr,
    socket: Option<SharedTcp>,
    admitted: Admitted,
) -> (Registered, Greeting) {
    // Nothing may go around the 101 (still to be written by hyper) or the greeting (an
    // envelope connection's position, and its replay when it resumes): every frame is queued
    // until the connection's task has written them and releases the queue.
    let conn = Arc::new(Connection {
        id: state.registry.next_id(),
        envelope: admitted.envelope,
        outbox: Outbox::held(state.config.queue_size, socket),
        closer: Closer::default(),
        peer,
        handshake: admitted.handshake,
        granted: std::sync::Mutex::new(admitted.granted.map(Box::new)),
        skip_through: Default::default(),
    });
    tracing::debug!(connection = conn.id, peer = %conn.peer, tags = %admitted.tags.to_json(), envelope = conn.envelope, "connection opened");
    let greeting = state
        .router
        .fanout
        .open(&conn, admitted.tags, admitted.since.as_deref());
    let greeting = greeting.unwrap_or_else(|| {
        conn.closer
            .close(crate::close::GOING_AWAY, "server shutting down");
        Vec::new()
    });
    let registered = Registered {
        conn,
        registry: state.registry.clone(),
        _slot: admitted.slot,
    };
    (registered, greeting)
}
