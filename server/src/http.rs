//! The axum router: WebSocket upgrade (with the handshake rules of PROTOCOL.md §2), `/healthz`,
//! `/metrics`, `POST /publish` (PROTOCOL.md §7), the `--static` folder, and 426 for other plain
//! requests.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Json;
use serde_json::{json, Value};
use tagcast::{ErrorCode, RequestId, Tags, TokenError, SUBPROTOCOL};
use tower::ServiceExt;

use crate::auth::Handshake;
use crate::close::Closer;
use crate::deadline::HeadDeadline;
use crate::metrics::{Rejection, Transport};
use crate::outbox::Outbox;
use crate::registry::{Connection, Registered, Slot};
use crate::router::Refusal;
use crate::socket::SharedTcp;
use crate::AppState;

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
        .route("/metrics", get(metrics))
        .route("/publish", post(publish))
        .fallback(websocket_or_426)
        .with_state(state)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match &state.bus {
        Some(bus) if !bus.is_up() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster unavailable: the Redis bus is down",
        ),
        _ => "ok".into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.connections.set(state.registry.len() as i64);
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

/// The HTTP status of a refusal on `/publish` (PROTOCOL.md §7).
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
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
            state.metrics.rejected(Rejection::TooBig);
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over --max-message-bytes ({limit} bytes)"),
            );
        }
    };
    state.metrics.bytes_in.inc_by(bytes.len() as u64);
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.received(Transport::Http);
            state.metrics.rejected(Rejection::BadRequest);
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
            );
        }
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
                let (id, result) = state.router.route_value(request, &handshake).await;
                results.push(answer(id, &result));
            }
            Json(json!({ "results": results })).into_response()
        }
        single => {
            let (id, result) = state.router.route_value(single, &handshake).await;
            let status = match &result {
                Ok(_) => StatusCode::OK,
                Err(refusal) => status_of(refusal.code),
            };
            (status, Json(answer(id, &result))).into_response()
        }
    }
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

async fn websocket_or_426(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer, direct)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(rejection) => {
            let asks_upgrade = parts
                .headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if asks_upgrade {
                return rejection.into_response();
            }
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
            return response;
        }
    };
    let uri = parts.uri;
    let headers = parts.headers;

    // PROTOCOL.md §2: the connection limit, then authorization, then the tags.
    let Some(slot) = state.registry.reserve(state.config.max_connections) else {
        state.metrics.handshake_rejected(503);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is at its connection limit, try again later",
        );
    };
    let handshake = Handshake {
        peer,
        query: uri.query().map(parse_query).unwrap_or_default(),
        headers,
    };
    let tags = match &state.tokens {
        // --signed-tags: the tags come from a token the application's backend signed.
        Some(applications) => {
            let token = handshake
                .query_value("token")
                .map(str::to_owned)
                .or_else(|| {
                    token_protocol(&upgrade).map(|p| p["tagcast.token.".len()..].to_owned())
                });
            let claims = match token {
                None => Err(TokenError::Missing),
                Some(token) => {
                    tagcast::token::verify(&token, unix_now(), |key| applications.secret_of(key))
                }
            };
            let granted = match claims {
                Ok(claims) => claims.tags,
                Err(e) => return refuse_open(&state, peer, e.to_string()),
            };
            match handshake.query_value("tags") {
                None => granted,
                Some(json) => match parse_tags(json, state.config.max_tags) {
                    Err(e) => return bad_tags(&state, &e),
                    Ok(asked) if granted.contains_all(&asked) => asked,
                    Ok(_) => return refuse_open(&state, peer, TokenError::Subset.to_string()),
                },
            }
        }
        None => {
            if let Err(denied) = state.auth.authorize_open(&handshake) {
                return refuse_open(&state, peer, denied.0);
            }
            match handshake.query_value("tags") {
                None => Tags::new(),
                Some(json) => match parse_tags(json, state.config.max_tags) {
                    Ok(tags) => tags,
                    Err(e) => return bad_tags(&state, &e),
                },
            }
        }
    };
    let handshake = state.auth.keeps_handshake().then(|| Box::new(handshake));
    let max = state.config.max_message_bytes;
    // Offered tagcast.v1 wins; a browser that offered only its token protocol must get one
    // selected back, or it fails the connection.
    let mut known: Vec<std::borrow::Cow<'static, str>> = vec![SUBPROTOCOL.into()];
    if let Some(p) = token_protocol(&upgrade) {
        known.push(p.into());
    }
    let upgrade = upgrade
        .protocols(known)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max);
    let envelope = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == SUBPROTOCOL.as_bytes());
    upgrade.on_upgrade(move |socket| {
        // Registered before the first poll, and the connection's own future is what the
        // upgrade task runs: no wrapper future holding a second copy of the socket.
        let registered = register(&state, peer, direct, handshake, tags, envelope, slot);
        crate::connection::run(socket, registered, state.router.clone())
    })
}

/// The `tagcast.token.<token>` subprotocol a client offered, if any.
fn token_protocol<F>(upgrade: &WebSocketUpgrade<F>) -> Option<String> {
    upgrade
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with("tagcast.token."))
        .map(str::to_owned)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The decoded pairs of a query string (`application/x-www-form-urlencoded`).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Tags from a handshake's `tags` value, bounded by `--max-tags`.
pub fn parse_tags(json: &str, max: usize) -> Result<Tags, tagcast::TagsError> {
    let tags = Tags::parse(json)?;
    tags.check_count(max)?;
    Ok(tags)
}

fn refuse_open(state: &AppState, peer: SocketAddr, reason: String) -> Response {
    tracing::debug!(%peer, %reason, "opening refused");
    state.metrics.handshake_rejected(401);
    text(StatusCode::UNAUTHORIZED, reason)
}

fn bad_tags(state: &AppState, e: &tagcast::TagsError) -> Response {
    state.metrics.handshake_rejected(400);
    text(StatusCode::BAD_REQUEST, format!("invalid 'tags': {e}"))
}

fn register(
    state: &AppState,
    peer: SocketAddr,
    socket: Option<SharedTcp>,
    handshake: Option<Box<Handshake>>,
    tags: Tags,
    envelope: bool,
    slot: Slot,
) -> Registered {
    let conn = Arc::new(Connection {
        id: state.registry.next_id(),
        envelope,
        outbox: Outbox::new(state.config.queue_size, socket),
        closer: Closer::default(),
        peer,
        handshake,
    });
    tracing::debug!(connection = conn.id, peer = %conn.peer, tags = %tags.to_json(), envelope, "connection opened");
    if !state.registry.register(conn.clone(), tags) {
        conn.closer
            .close(crate::close::GOING_AWAY, "server shutting down");
    }
    Registered {
        conn,
        registry: state.registry.clone(),
        _slot: slot,
    }
}
