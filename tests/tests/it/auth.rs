//! Authorization (PROTOCOL.md §5): who may open, who may send, start-up errors of the auth
//! file, and an embedded custom `AuthManager`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tagcast_server::auth::{AuthManager, Denied, Handshake};
use tagcast_server::{Config, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::MaybeTlsStream;

use super::util::*;

async fn auth_server(authorize_open: bool) -> TestServer {
    TestServer::with_config(Config {
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open,
        ..Config::default()
    })
    .await
}

/// `ws://…/?key=…&secret=…` (each part optional).
fn url_with_credentials(server: &TestServer, key: Option<&str>, secret: Option<&str>) -> String {
    let mut pairs = Vec::new();
    if let Some(key) = key {
        pairs.push(format!("key={}", encode(key)));
    }
    if let Some(secret) = secret {
        pairs.push(format!("secret={}", encode(secret)));
    }
    format!("{}/?{}", server.url, pairs.join("&"))
}

fn authorized_request(message: &str, key: &str, secret: &str) -> String {
    serde_json::json!({
        "message": message,
        "metadata": {"key": key, "secret": secret},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_opening_needs_an_open_key_or_a_matching_secret() {
    let server = auth_server(false).await;

    // application1 has authorizeOpen: true: its key alone opens, even with a wrong secret.
    let _a = raw(&url_with_credentials(&server, Some("application1"), None)).await;
    let _b = raw(&url_with_credentials(
        &server,
        Some("application1"),
        Some("wrong"),
    ))
    .await;
    // application2 has authorizeOpen: false: it needs its secret.
    let _c = raw(&url_with_credentials(
        &server,
        Some("application2"),
        Some(SECRET2),
    ))
    .await;
    server.wait_connections(3).await;

    for url in [
        url_with_credentials(&server, Some("application2"), None),
        url_with_credentials(&server, Some("application2"), Some(SECRET1)),
        url_with_credentials(&server, Some("unknown"), Some(SECRET2)),
        url_with_credentials(&server, None, Some(SECRET2)),
        server.url.clone(),
    ] {
        let (status, body) = refused(&url).await;
        assert_eq!(status, 401, "{url}");
        assert!(!body.trim().is_empty(), "a 401 explains itself: {url}");
        assert!(
            !body.contains(SECRET1) && !body.contains(SECRET2),
            "the body repeats a secret: {body}"
        );
    }
    assert_eq!(
        server.registry.len(),
        3,
        "refused handshakes never register"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_plain_text_and_does_not_upgrade() {
    let server = auth_server(false).await;
    let answer = http_get(
        server.addr,
        "/?key=application2",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{answer:?}"
    );
    assert!(!answer.body.trim().is_empty(), "{answer:?}");
    assert!(
        answer.header("sec-websocket-accept").is_none(),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authorize_open_true_anyone_opens() {
    let server = auth_server(true).await;
    let _a = raw(&server.url).await;
    let _b = raw(&url_with_credentials(&server, Some("application2"), None)).await;
    let _c = raw(&url_with_credentials(
        &server,
        Some("nobody"),
        Some("nothing"),
    ))
    .await;
    server.wait_connections(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_unauthorized_sends_close_the_sender_with_1008() {
    let server = auth_server(true).await;
    let mut listener = raw(&server.url).await;
    server.wait_connections(1).await;
    let cases = [
        r#"{"message":"no metadata"}"#.to_owned(),
        r#"{"message":"key only","metadata":{"key":"application1"}}"#.to_owned(),
        authorized_request("wrong secret", "application1", SECRET2),
        authorized_request("unknown key", "nobody", SECRET1),
    ];
    for frame in cases {
        let mut sender = raw(&server.url).await;
        send_text(&mut sender, &frame).await;
        let (code, reason) = recv_close(&mut sender).await;
        assert_eq!(code, 1008, "{frame}");
        assert!(!reason.is_empty(), "the close names the problem: {frame}");
        assert!(
            !reason.contains(SECRET1) && !reason.contains(SECRET2),
            "{reason}"
        );
        // Nothing was delivered (the refused request was routed, or not, before its close): the
        // next thing the listener gets is an authorized marker sent after the close.
        send_text(
            &mut listener,
            &authorized_request("marker", "application2", SECRET2),
        )
        .await;
        assert_eq!(recv_text(&mut listener).await, r#""marker""#, "{frame}");
    }
    send_text(
        &mut listener,
        &authorized_request("still open", "application2", SECRET2),
    )
    .await;
    assert_eq!(recv_text(&mut listener).await, r#""still open""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_unauthorized_sends_answer_an_error_and_stay_open() {
    let server = auth_server(true).await;
    let mut sender = envelope(&server.url).await;
    let mut listener = raw(&server.url).await;
    server.wait_connections(2).await;

    send_text(
        &mut sender,
        r#"{"id":"u1","message":"hi","metadata":{"key":"application2","secret":"wrong"}}"#,
    )
    .await;
    let error = recv_json(&mut sender).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["id"], "u1", "{error}");
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert!(
        !error["error"].as_str().unwrap_or_default().is_empty(),
        "{error}"
    );
    // Nothing was delivered: the listener's first frame is the authorized request below.

    // Still open: an authorized request on the same connection goes through.
    send_text(
        &mut sender,
        &serde_json::json!({
            "id": 7,
            "message": "authorized",
            "metadata": {"key": "application2", "secret": SECRET2},
        })
        .to_string(),
    )
    .await;
    let mut frames = [recv_json(&mut sender).await, recv_json(&mut sender).await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        frames[0],
        serde_json::json!({"type":"ack","id":7,"delivered":2})
    );
    assert_eq!(frames[1]["type"], "message");
    assert_eq!(frames[1]["message"], "authorized");
    assert_eq!(recv_text(&mut listener).await, r#""authorized""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_send_is_delivered() {
    let server = auth_server(false).await;
    let mut fr = raw(&format!(
        "{}&tags={}",
        url_with_credentials(&server, Some("application1"), None),
        encode(r#"{"language":"FR"}"#)
    ))
    .await;
    let mut sender = raw(&url_with_credentials(
        &server,
        Some("application2"),
        Some(SECRET2),
    ))
    .await;
    server.wait_connections(2).await;
    // application1's credentials in metadata authorize a send on application2's connection.
    send_text(
        &mut sender,
        &serde_json::json!({
            "message": "Bonjour",
            "tags": {"language": "FR"},
            "metadata": {"key": "application1", "secret": SECRET1},
        })
        .to_string(),
    )
    .await;
    assert_eq!(recv_text(&mut fr).await, r#""Bonjour""#);
    // The sender does not match: its first frame is a later message to everyone.
    send_text(
        &mut sender,
        &authorized_request("to everyone", "application1", SECRET1),
    )
    .await;
    assert_eq!(recv_text(&mut sender).await, r#""to everyone""#);
    assert_eq!(recv_text(&mut fr).await, r#""to everyone""#);
}

fn build_error(yaml: Option<&str>) -> (PathBuf, String) {
    let path = match yaml {
        Some(yaml) => temp_file("auth.yml", yaml),
        None => std::env::temp_dir().join("tagcast-tests-missing-dir/nonexistent-auth.yml"),
    };
    let err = Server::builder()
        .config(Config {
            auth_file: Some(path.clone()),
            authorize_open: false,
            ..Config::default()
        })
        .build()
        .expect_err("the server must not start")
        .to_string();
    (path, err)
}

#[test]
fn a_missing_or_invalid_auth_file_stops_the_server_at_start() {
    for yaml in [None, Some("applications: [\n  - key"), Some("apps: []\n")] {
        let (path, err) = build_error(yaml);
        assert!(
            err.contains(&path.display().to_string()),
            "the error names the file: {err}"
        );
    }
}

#[test]
fn an_application_without_a_secret_is_named_by_its_position() {
    let yaml = "applications:
  - key: application1
    secret: s1
    authorizeOpen: true
  - key: application2
    authorizeOpen: false
";
    let (path, err) = build_error(Some(yaml));
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("application 2"), "{err}");
    assert!(err.contains("secret"), "{err}");

    let yaml = "applications:
  - key: application1
    secret: s1
  - key: application2
    secret: s2
    authorizeOpen: false
";
    let (path, err) = build_error(Some(yaml));
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("application 1"), "{err}");
    assert!(err.contains("authorizeOpen"), "{err}");
}

/// Opens when the `x-team` header says `blue` and the query has a `room`; sends when the
/// request's metadata has `"allowed": true` and the connection's room is `lobby`.
#[derive(Default)]
struct TeamAuth {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl AuthManager for TeamAuth {
    fn authorize_open(&self, handshake: &Handshake) -> Result<(), Denied> {
        self.peers.lock().unwrap().push(handshake.peer);
        let team = handshake
            .headers
            .get("x-team")
            .and_then(|v| v.to_str().ok());
        if team != Some("blue") {
            return Err(Denied("team blue only".into()));
        }
        if handshake.query_value("room").is_none() {
            return Err(Denied("a room is required".into()));
        }
        Ok(())
    }

    fn authorize_send(
        &self,
        handshake: &Handshake,
        request: &tagcast::WebSocketRequest,
    ) -> Result<(), Denied> {
        if handshake.query_value("room") != Some("lobby") {
            return Err(Denied("only the lobby may send".into()));
        }
        if request.metadata().get("allowed") != Some(&serde_json::Value::Bool(true)) {
            return Err(Denied("metadata.allowed must be true".into()));
        }
        Ok(())
    }
}

fn team_request(
    url: &str,
    team: &'static str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-team", HeaderValue::from_static(team));
    request
}

fn local_addr(ws: &Ws) -> SocketAddr {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("plain TCP"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_auth_manager_sees_peer_query_headers_and_request() {
    let auth = TeamAuth::default();
    let peers = auth.peers.clone();
    let server = TestServer::with_builder(Server::builder().auth_manager(auth)).await;

    let (status, body) =
        refused_request(team_request(&format!("{}/?room=lobby", server.url), "red")).await;
    assert_eq!((status, body.trim()), (401, "team blue only"));
    let (status, body) = refused_request(team_request(&server.url, "blue")).await;
    assert_eq!((status, body.trim()), (401, "a room is required"));

    let (mut lobby, _) = tokio_tungstenite::connect_async(team_request(
        &format!("{}/?room=lobby", server.url),
        "blue",
    ))
    .await
    .unwrap();
    let (mut kitchen, _) = tokio_tungstenite::connect_async(team_request(
        &format!("{}/?room=kitchen", server.url),
        "blue",
    ))
    .await
    .unwrap();
    server.wait_connections(2).await;
    let peers = peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 4, "authorize_open runs once per handshake");
    assert!(peers.contains(&local_addr(&lobby)), "{peers:?}");
    assert!(peers.contains(&local_addr(&kitchen)), "{peers:?}");

    // authorize_send sees the request's metadata and the connection's own handshake.
    send_text(
        &mut lobby,
        r#"{"message":"hello","metadata":{"allowed":true}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut kitchen).await, r#""hello""#);
    assert_eq!(recv_text(&mut lobby).await, r#""hello""#);

    send_text(
        &mut kitchen,
        r#"{"message":"from kitchen","metadata":{"allowed":true}}"#,
    )
    .await;
    assert_eq!(
        recv_close(&mut kitchen).await,
        (1008, "only the lobby may send".to_owned())
    );
    send_text(&mut lobby, r#"{"message":"not allowed"}"#).await;
    assert_eq!(
        recv_close(&mut lobby).await,
        (1008, "metadata.allowed must be true".to_owned())
    );
}
