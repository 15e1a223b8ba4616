//! The native client (`tagcast::WebSocketClient`) against a real server: a signed-tags token
//! sent as a subprotocol (PROTOCOL.md §5.1), close codes and refusals in its errors, reconnects
//! that stop when the server means it, and `set_tags` (§13).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tagcast::api::ApiClient;
use tagcast::client::{Event, Reconnect};
use tagcast::error::Close;
use tagcast::{Error, ErrorCode, Tags, TokenError, WebSocketClient, WebSocketRequest};
use tagcast_server::api::ApiKey;
use tagcast_server::{Config, Server};
use tokio::sync::oneshot;

use super::util::*;

const API_KEY: &str = "native-sdk-key";

fn api(url: &str) -> ApiClient {
    ApiClient::new(url).unwrap().api_key(API_KEY)
}

/// `--auth` with `--authorize-open false` and `--signed-tags`, and the server API.
fn signed_config(auth_yaml: &str) -> Config {
    Config {
        auth_file: Some(temp_file("auth.yml", auth_yaml)),
        authorize_open: false,
        signed_tags: true,
        api_key: Some(ApiKey(API_KEY.into())),
        ..Config::default()
    }
}

fn api_config() -> Config {
    Config {
        api_key: Some(ApiKey(API_KEY.into())),
        ..Config::default()
    }
}

/// A token of application2 for `tags`, valid for a minute.
fn token(tags: &Tags) -> String {
    tagcast::sign_tags("application2", SECRET2, tags, Duration::from_secs(60))
}

/// Publishes `text` to `tags` over the server API: how many connections it reached.
async fn publish(api: &ApiClient, text: &str, tags: &Tags) -> u64 {
    let request = WebSocketRequest::new(text).with_tags(tags.clone());
    api.publish(&request).await.unwrap()
}

fn fast() -> Reconnect {
    Reconnect::new(Duration::from_millis(20), Duration::from_millis(200))
}

async fn next_event(client: &WebSocketClient) -> Event {
    tokio::time::timeout(WAIT, client.recv_event())
        .await
        .expect("an event in time")
        .expect("the client is still running")
}

async fn next_message(client: &WebSocketClient) -> serde_json::Value {
    match next_event(client).await {
        Event::Message(received) => received.message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The client's event stream has ended: its task is over, so it cannot reconnect any more.
async fn assert_over(client: &WebSocketClient) {
    let next = tokio::time::timeout(WAIT, client.recv_event()).await;
    assert_eq!(next.expect("the end in time"), None);
}

/// A client of `node` with a token for `tags` that reconnects fast, once the node counts it.
async fn signed_client(node: &Node, tags: &Tags) -> WebSocketClient {
    let client = WebSocketClient::builder(node.url())
        .token(token(tags))
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    node.wait_connections(1).await;
    client
}

/// `POST /retag` on `node` moves one connection, which is `client`: its event says `to`.
async fn api_retag(node: &Node, client: &WebSocketClient, tags: &Tags, set: &Tags, to: &Tags) {
    let moved = api(&node.url()).retag(tags, set, &[]).await.unwrap();
    assert_eq!(moved.retagged, 1);
    assert_eq!(
        next_event(client).await,
        Event::Retagged { tags: to.clone() }
    );
}

/// Restarts `node` on its address with `config`, and waits until `client` is back.
async fn restart_with(node: Node, config: Config, client: &WebSocketClient) -> Node {
    let socket = node.stop().await;
    assert!(matches!(
        next_event(client).await,
        Event::Disconnected { .. }
    ));
    let node = Node::start_on(socket, config);
    assert!(matches!(next_event(client).await, Event::Resumed { .. }));
    node.wait_connections(1).await;
    node
}

/// A server that can be stopped and started again on the same address (a restart, for
/// reconnects); `TestServer` always takes a fresh port. The listening socket is bound once and
/// kept across the restart (each run gets a clone of it), so the port is never released for
/// another test to take while the node is down; connections made meanwhile wait in its backlog
/// for the next run.
struct Node {
    addr: SocketAddr,
    socket: std::net::TcpListener,
    registry: std::sync::Arc<tagcast_server::registry::Registry>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// A node on a port the OS picks.
    async fn start(config: Config) -> Node {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Node::start_on(socket, config)
    }

    /// A node on `socket`, the one a stopped node gave back.
    fn start_on(socket: std::net::TcpListener, config: Config) -> Node {
        let server = Server::builder().config(config).build().unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.try_clone().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let registry = server.registry();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Node {
            addr,
            socket,
            registry,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops the node and gives back its listening socket, still bound, for a restart.
    async fn stop(self) -> std::net::TcpListener {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the node stops in time")
            .unwrap()
            .unwrap();
        self.socket
    }

    async fn wait_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.registry.len() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} connections, the node has {}",
                self.registry.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_subprotocol_opens_with_its_signed_tags() {
    let server = TestServer::with_config(signed_config(AUTH_YAML)).await;
    let user42 = Tags::new().with("user", 42);
    let signed = token(&user42);
    let signature = signed.rsplit('.').next().unwrap();
    let builder = WebSocketClient::builder(&server.url).token(signed.clone());
    // The token travels in the subprotocol, never in the URL (access logs), nor in `Debug`.
    assert_eq!(builder.handshake_url().unwrap(), format!("{}/", server.url));
    assert!(!format!("{builder:?}").contains(signature));
    let client = builder.connect().await.unwrap();
    // application2 cannot open with its key alone: only the token let this one in, and the
    // connection listens as the token's tags.
    let raw_client = WebSocketClient::builder(&server.url)
        .raw(true)
        .token(token(&Tags::new().with("user", 43)))
        .connect()
        .await
        .unwrap();
    server.wait_connections(2).await;
    let api = api(&server.url);
    let to = |user: i64| {
        WebSocketRequest::new(format!("for {user}")).with_tags(Tags::new().with("user", user))
    };
    assert_eq!(api.publish(&to(42)).await.unwrap(), 1);
    assert_eq!(api.publish(&to(43)).await.unwrap(), 1);
    assert_eq!(api.publish(&to(44)).await.unwrap(), 0);
    let received = client.recv().await.unwrap();
    assert_eq!((received.message, received.tags), ("for 42".into(), user42));
    // Raw mode offers only the token's protocol, and the server answers with it.
    assert_eq!(raw_client.recv().await.unwrap().text, r#""for 43""#);
    client.close().await;
    raw_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_is_an_error_with_its_status_and_reason() {
    let server = TestServer::with_config(signed_config(AUTH_YAML)).await;
    let user42 = Tags::new().with("user", 42);
    let refused = |builder: tagcast::ClientBuilder| async move {
        match builder.connect().await {
            Err(Error::Refused { status, reason }) => (status, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let forged = tagcast::sign_tags("application2", "wrong", &user42, Duration::from_secs(60));
    let expired = tagcast::sign_tags_until("application2", SECRET2, &user42, 1);
    for (builder, word) in [
        (
            WebSocketClient::builder(&server.url).token(forged),
            "signature",
        ),
        (
            WebSocketClient::builder(&server.url).token(expired),
            "expired",
        ),
        (WebSocketClient::builder(&server.url), "missing"),
        (
            WebSocketClient::builder(&server.url)
                .token(token(&user42))
                .tags(Tags::new().with("user", 43)),
            "subset",
        ),
    ] {
        let (status, reason) = refused(builder).await;
        assert_eq!(status, 401, "{reason}");
        assert!(
            reason.starts_with(word),
            "{reason} should start with {word}"
        );
    }
    let err = WebSocketClient::builder(&server.url)
        .token(token(&user42))
        .tags(Tags::new().with("user", 43))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    assert!(err.is_final());
    assert!(err.to_string().contains("HTTP 401: subset"), "{err}");
    // Not even a JWT: refused before anything is sent.
    let err = WebSocketClient::builder(&server.url)
        .token("not a token")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Token(TokenError::Malformed(_))),
        "{err:?}"
    );
    server.wait_connections(0).await;

    // Bad tags (PROTOCOL.md §2) and the connection limit are refusals too.
    let open = TestServer::with_config(Config {
        max_tags: 1,
        max_connections: Some(1),
        ..Config::default()
    })
    .await;
    let two = Tags::new().with("a", 1).with("b", 2);
    let (status, reason) = refused(WebSocketClient::builder(&open.url).tags(two)).await;
    assert_eq!(status, 400);
    assert!(reason.contains("tags"), "{reason}");
    let first = WebSocketClient::connect(&open.url, Tags::new())
        .await
        .unwrap();
    let err = WebSocketClient::connect(&open.url, Tags::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code(), err.is_final()),
        (Some(503), Some(ErrorCode::Unavailable), false)
    );
    first.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_code_and_reason_reach_the_client() {
    let server = TestServer::with_config(Config {
        max_message_bytes: 1000,
        ..api_config()
    })
    .await;
    let room = Tags::new().with("room", 1);

    // 4001 from POST /disconnect, with the API's reason.
    let client = WebSocketClient::connect(&server.url, room.clone())
        .await
        .unwrap();
    server.wait_connections(1).await;
    assert_eq!(
        api(&server.url)
            .disconnect(&room, Some("logged out"))
            .await
            .unwrap(),
        1
    );
    let kicked = Error::Closed(Close {
        code: Some(Close::DISCONNECTED),
        reason: "logged out".into(),
    });
    assert_eq!(next_event(&client).await, Event::Ended(kicked.clone()));
    assert_over(&client).await;
    assert_eq!(client.ended(), Some(kicked.clone()));
    assert_eq!(client.close_reason().unwrap(), "code 4001 (logged out)");
    let late = client
        .send(WebSocketRequest::new("late"))
        .await
        .unwrap_err();
    assert_eq!((late.close_code(), &late), (Some(4001), &kicked));
    assert!(late.is_final());

    // 1009: a message over --max-message-bytes fails its send with the code and reason.
    let client = WebSocketClient::connect(&server.url, room.clone())
        .await
        .unwrap();
    let big = WebSocketRequest::new("x".repeat(1500));
    match client.send(big).await.unwrap_err() {
        Error::Closed(close) => {
            assert_eq!(close.code, Some(Close::MESSAGE_TOO_BIG), "{close}");
            assert!(!close.reason.is_empty());
            assert!(!close.is_final());
        }
        other => panic!("expected the close, got {other:?}"),
    }
    match next_event(&client).await {
        Event::Ended(error) => assert_eq!(error.close_code(), Some(1009), "{error}"),
        other => panic!("expected the end, got {other:?}"),
    }
    assert_over(&client).await;

    // 1001 when the server stops.
    let client = WebSocketClient::connect(&server.url, room).await.unwrap();
    server.wait_connections(1).await;
    server.stop().await;
    match next_event(&client).await {
        Event::Ended(error) => assert_eq!(error.close_code(), Some(Close::GOING_AWAY), "{error}"),
        other => panic!("expected the end, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_stops_after_4001() {
    let server = TestServer::with_config(api_config()).await;
    let room = Tags::new().with("room", 1);
    let client = WebSocketClient::builder(&server.url)
        .tags(room.clone())
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    server.wait_connections(1).await;
    api(&server.url).disconnect(&room, None).await.unwrap();
    // No `Disconnected` (it would mean "reconnecting"): the end at once, with its code.
    match next_event(&client).await {
        Event::Ended(Error::Closed(close)) => {
            assert_eq!(close.code, Some(4001));
            assert_eq!(close.reason, "disconnected by the server");
            assert!(close.is_final());
        }
        other => panic!("expected the end, got {other:?}"),
    }
    assert_over(&client).await;
    server.wait_connections(0).await;
    assert!(matches!(
        client.set_tags(room).await,
        Err(Error::Closed(Close {
            code: Some(4001),
            ..
        }))
    ));
}

/// A reconnect the server refuses for good (401: the application's secret changed while the
/// client was away) ends the client with the status and reason, instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_stops_at_a_401_refusal() {
    let node = Node::start(signed_config(AUTH_YAML)).await;
    let client = WebSocketClient::builder(node.url())
        .token(token(&Tags::new().with("user", 42)))
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    node.wait_connections(1).await;
    let socket = node.stop().await;
    match next_event(&client).await {
        Event::Disconnected { code, .. } => assert_eq!(code, Some(Close::GOING_AWAY)),
        other => panic!("expected the drop, got {other:?}"),
    }
    let rotated = AUTH_YAML.replace(SECRET2, "a-new-secret-for-application2-xyz");
    let node = Node::start_on(socket, signed_config(&rotated));
    match next_event(&client).await {
        Event::Ended(Error::Refused { status, reason }) => {
            assert_eq!(status, 401);
            assert!(reason.starts_with("signature"), "{reason}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_over(&client).await;
    assert_eq!(client.ended().and_then(|e| e.status()), Some(401));
    node.wait_connections(0).await;
    node.stop().await;
}

fn number(message: &serde_json::Value) -> u64 {
    message
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{message}"))
}

/// A publisher alternates rooms 1 (even numbers) and 2 (odd) without pause while the client
/// moves from room 1 to room 2: before the cut it receives only room 1's, after it only room
/// 2's, none twice, and none missing on either side (PROTOCOL.md §13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tags_changes_which_messages_arrive_at_the_answer() {
    let server = TestServer::start().await;
    let client = WebSocketClient::connect(&server.url, Tags::new().with("room", 1))
        .await
        .unwrap();
    let mut publisher = raw(&server.url).await;
    server.wait_connections(2).await;
    let moved = AtomicBool::new(false);
    let heard = AtomicU64::new(0);
    let publishing = async {
        // Until the client has moved, then 300 more, then the end (room 2).
        let (mut i, mut more) = (0u64, 300);
        while more > 0 {
            let room = 1 + i % 2;
            let request = format!(r#"{{"message":"{i}","tags":{{"room":{room}}}}}"#);
            send_text(&mut publisher, &request).await;
            i += 1;
            if moved.load(Ordering::Acquire) {
                more -= 1;
            } else if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        send_text(&mut publisher, r#"{"message":"end","tags":{"room":2}}"#).await;
        i
    };
    let moving = async {
        // Move once some of room 1's have arrived.
        while heard.load(Ordering::Acquire) < 50 {
            tokio::task::yield_now().await;
        }
        let tags = client.set_tags(Tags::new().with("room", 2)).await;
        moved.store(true, Ordering::Release);
        tags
    };
    // The application keeps receiving while it waits for the answer.
    let receiving = async {
        let (mut before, mut after, mut cut) = (Vec::new(), Vec::new(), false);
        loop {
            match next_event(&client).await {
                Event::Message(m) if m.message == "end" => break,
                Event::Message(m) => {
                    let n = number(&m.message);
                    let room = m.tags.get("room").map(|v| v.canonical().into_owned());
                    if cut {
                        assert_eq!(room.as_deref(), Some("2"), "{n} after the cut");
                        after.push(n);
                    } else {
                        assert_eq!(room.as_deref(), Some("1"), "{n} before the cut");
                        before.push(n);
                        heard.store(before.len() as u64, Ordering::Release);
                    }
                }
                Event::Retagged { tags } => {
                    assert!(!cut, "one cut");
                    assert_eq!(tags, Tags::new().with("room", 2));
                    cut = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(cut);
        (before, after)
    };
    let (sent, tags, (before, after)) = tokio::join!(publishing, moving, receiving);
    assert_eq!(tags.unwrap(), Tags::new().with("room", 2));
    // Before: every even number from 0 up to the cut; after: every odd one from the cut on.
    assert!(before.len() >= 50, "the client moved after 50 of room 1's");
    let expected_before: Vec<u64> = (0..before.len() as u64).map(|k| 2 * k).collect();
    assert_eq!(before, expected_before);
    let first_after = *after.first().expect("messages after the cut");
    let last_before = before.last().copied();
    assert!(
        match last_before {
            Some(last) => first_after == last + 1 || first_after == last + 3,
            None => first_after <= 1,
        },
        "a gap or an overlap at the cut: ... {last_before:?} | {first_after} ..."
    );
    let last_odd = if (sent - 1) % 2 == 1 {
        sent - 1
    } else {
        sent - 2
    };
    let expected_after: Vec<u64> = (first_after..=last_odd).step_by(2).collect();
    assert_eq!(after, expected_after);
    client.close().await;
}

/// Refusals keep the old tags; a newer token widens what the connection may listen to; a
/// reconnect opens with the tags and the token of the last accepted change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tags_refusals_tokens_and_the_next_reconnect() {
    let node = Node::start(Config {
        max_tags: 2,
        ..signed_config(AUTH_YAML)
    })
    .await;
    let api = api(&node.url());
    let (room1, room2) = (
        Tags::new().with("user", 42).with("room", 1),
        Tags::new().with("user", 42).with("room", 2),
    );
    let client = signed_client(&node, &room1).await;

    // Outside the token: refused with its reason, and nothing changes.
    match client.set_tags(room2.clone()).await {
        Err(Error::Rejected {
            code: ErrorCode::Unauthorized,
            message,
        }) => assert!(message.starts_with("subset"), "{message}"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    // Over --max-tags: a bad request.
    let three = room1.clone().with("extra", 1);
    let err = client.set_tags(three).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    // A token the server refuses, and one that is not even a JWT.
    let forged = tagcast::sign_tags("application2", "wrong", &room2, Duration::from_secs(60));
    let err = client
        .set_tags_with_token(room2.clone(), forged)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { code: ErrorCode::Unauthorized, message } if message.starts_with("signature")),
        "{err:?}"
    );
    assert!(matches!(
        client.set_tags_with_token(room2.clone(), "a b").await,
        Err(Error::Token(_))
    ));
    assert_eq!(publish(&api, "hi", &room1).await, 1);
    assert_eq!(next_message(&client).await, "hi");

    // A newer token that grants room 2: accepted, and room 1 is no longer heard.
    let tags = client
        .set_tags_with_token(room2.clone(), token(&room2))
        .await
        .unwrap();
    assert_eq!(tags, room2);
    assert_eq!(
        next_event(&client).await,
        Event::Retagged {
            tags: room2.clone()
        }
    );
    assert_eq!(publish(&api, "hi", &room1).await, 0);
    assert_eq!(publish(&api, "hi", &room2).await, 1);
    assert_eq!(next_message(&client).await, "hi");

    // A restart: the client comes back with room 2 and the newer token (the first token
    // would not allow room 2: the handshake would be refused with `subset`).
    let config = Config {
        max_tags: 2,
        ..signed_config(AUTH_YAML)
    };
    let node = restart_with(node, config, &client).await;
    let api = self::api(&node.url());
    assert_eq!(publish(&api, "back", &room1).await, 0);
    assert_eq!(publish(&api, "back", &room2).await, 1);
    assert_eq!(next_message(&client).await, "back");
    client.close().await;
    node.stop().await;
}

/// The server's API moves a signed-tags client to another room: the `tags` frame carries a
/// token for its new tags, and its next reconnect opens with both (its own token would be
/// refused with `subset`, and the client would be locked out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_retag_survives_the_next_reconnect() {
    let node = Node::start(signed_config(AUTH_YAML)).await;
    let (room1, room3) = (
        Tags::new().with("user", 42).with("room", 1),
        Tags::new().with("user", 42).with("room", 3),
    );
    let client = signed_client(&node, &room1).await;
    let user = Tags::new().with("user", 42);
    api_retag(&node, &client, &user, &Tags::new().with("room", 3), &room3).await;

    let node = restart_with(node, signed_config(AUTH_YAML), &client).await;
    let api = self::api(&node.url());
    assert_eq!(publish(&api, "back", &room1).await, 0);
    assert_eq!(publish(&api, "back", &room3).await, 1);
    assert_eq!(next_message(&client).await, "back");

    // Narrowed by its own retag, then emptied by the API: it comes back with no tags, not
    // with everything its token grants ({"user":42}).
    let room = Tags::new().with("room", 3);
    assert_eq!(client.set_tags(room.clone()).await.unwrap(), room);
    assert!(matches!(next_event(&client).await, Event::Retagged { .. }));
    let emptied = api.retag(&room, &Tags::new(), &["room"]).await.unwrap();
    assert_eq!(emptied.retagged, 1);
    assert_eq!(
        next_event(&client).await,
        Event::Retagged { tags: Tags::new() }
    );
    let node = restart_with(node, signed_config(AUTH_YAML), &client).await;
    let api = self::api(&node.url());
    assert_eq!(publish(&api, "not for it", &user).await, 0);
    client.close().await;
    node.stop().await;
}

/// A client given its token in the URL's query still comes back after an API retag: the
/// server's newer token, which the SDK offers as a subprotocol, wins over the query's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_query_gives_way_to_the_servers_newer_one() {
    let node = Node::start(signed_config(AUTH_YAML)).await;
    let room1 = Tags::new().with("user", 42).with("room", 1);
    let room4 = Tags::new().with("user", 42).with("room", 4);
    let client = WebSocketClient::builder(node.url())
        .query("token", &token(&room1))
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    node.wait_connections(1).await;
    api_retag(&node, &client, &room1, &Tags::new().with("room", 4), &room4).await;
    let node = restart_with(node, signed_config(AUTH_YAML), &client).await;
    assert_eq!(publish(&api(&node.url()), "moved", &room4).await, 1);
    assert_eq!(next_message(&client).await, "moved");
    client.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tags_needs_envelope_mode() {
    let server = TestServer::start().await;
    let client = WebSocketClient::builder(&server.url)
        .raw(true)
        .connect()
        .await
        .unwrap();
    assert!(matches!(
        client.set_tags(Tags::new().with("room", 1)).await,
        Err(Error::Protocol(_))
    ));
    client.close().await;
}

/// The README's native SDK example ("The Rust SDK"), word for word but for its output, which
/// goes to `log` instead of the terminal.
async fn readme_listen(
    url: &str,
    token: String,
    log: &std::sync::Mutex<Vec<String>>,
) -> Result<(), Error> {
    let println = |line: String| log.lock().unwrap().push(line);
    let eprintln = println;
    let client = WebSocketClient::builder(url)
        .token(token) // signed by the backend for {"user":42,"room":7}
        .reconnect(Reconnect::default())
        .connect()
        .await?; // a refused token: Error::Refused { status: 401, reason: "expired: ..." }
    client.set_tags(Tags::new().with("user", 42)).await?; // leaves room 7, without reconnecting
    while let Some(event) = client.recv_event().await {
        match event {
            Event::Message(m) => println(format!("{}", m.message)),
            Event::Disconnected { code, reason } => {
                eprintln(format!("reconnecting ({code:?} {reason})"))
            }
            Event::Ended(Error::Closed(Close {
                code: Some(Close::DISCONNECTED),
                reason,
            })) => {
                eprintln(format!("logged out: {reason}")); // POST /disconnect: no reconnect
            }
            Event::Ended(error) => eprintln(format!("gone: {error}")), // e.g. HTTP 401 on a reconnect
            _ => {}
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_listens_with_a_token_and_ends_at_4001() {
    let server = TestServer::with_config(signed_config(AUTH_YAML)).await;
    let api = api(&server.url);
    let granted = Tags::new().with("user", 42).with("room", 7);
    let log = std::sync::Mutex::new(Vec::new());
    let listening = readme_listen(&server.url, token(&granted), &log);
    let steering = async {
        // Wait until the example has left room 7 (its set_tags was answered).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let user = api
                .presence(&Tags::new().with("user", 42), None)
                .await
                .unwrap();
            let room = api
                .presence(&Tags::new().with("room", 7), None)
                .await
                .unwrap();
            if user.connections == 1 && room.connections == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the example never moved"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            publish(&api, "to room 7", &Tags::new().with("room", 7)).await,
            0
        );
        assert_eq!(
            publish(&api, "to 42", &Tags::new().with("user", 42)).await,
            1
        );
        while log.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the message never came"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let user42 = Tags::new().with("user", 42);
        assert_eq!(api.disconnect(&user42, Some("bye")).await.unwrap(), 1);
    };
    let (listened, ()) = tokio::time::timeout(WAIT, async { tokio::join!(listening, steering) })
        .await
        .expect("the example ends after the disconnect");
    listened.unwrap();
    assert_eq!(*log.lock().unwrap(), [r#""to 42""#, "logged out: bye"]);
}

/// `--auth` with `--authorize-open false`: what the SDK's credentials and default metadata
/// are for.
fn auth_config() -> Config {
    Config {
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open: false,
        ..Config::default()
    }
}

fn metadata(key: &str, secret: &str) -> tagcast::Metadata {
    let mut metadata = tagcast::Metadata::new();
    metadata.insert("key".into(), key.into());
    metadata.insert("secret".into(), secret.into());
    metadata
}

/// `result` is the server's `unauthorized` refusal of a send.
async fn assert_unauthorized(result: Result<u64, Error>) {
    match result {
        Err(Error::Rejected {
            code: ErrorCode::Unauthorized,
            message,
        }) => assert!(!message.is_empty()),
        other => panic!("expected an unauthorized rejection, got {other:?}"),
    }
}

/// README "The Rust SDK": `ClientBuilder::credentials` opens with an application's key and
/// secret (application2 may not open with its key alone) and authorizes every send; default
/// metadata authorizes sends too, merged under each request's own (the request wins); a send
/// without them is `Error::Rejected { code: Unauthorized }` and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_default_metadata_authorize_sends_under_auth() {
    let server = TestServer::with_config(auth_config()).await;
    let room = Tags::new().with("room", "auth");
    let mut listener = raw(&format!(
        "{}/?key=application1&tags={}",
        server.url,
        encode(r#"{"room":"auth"}"#)
    ))
    .await;

    // Without its secret application2 cannot open; with `credentials` it opens and sends.
    let refused = WebSocketClient::builder(&server.url)
        .query("key", "application2")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused:?}");
    let with_credentials = WebSocketClient::builder(&server.url)
        .credentials("application2", SECRET2)
        .connect()
        .await
        .unwrap();
    let request = || WebSocketRequest::new("from credentials").with_tags(room.clone());
    assert_eq!(with_credentials.send(request()).await.unwrap(), 1);
    assert_eq!(recv_text(&mut listener).await, r#""from credentials""#);
    // The request's own metadata wins over the credentials' defaults.
    assert_unauthorized(
        with_credentials
            .send(request().with_metadata(metadata("application2", "not-the-secret")))
            .await,
    )
    .await;

    // application1 opens with its key alone (authorizeOpen true), but its sends need metadata.
    let bare = WebSocketClient::builder(&server.url)
        .query("key", "application1")
        .connect()
        .await
        .unwrap();
    assert_unauthorized(bare.send(request()).await).await;
    // Still open after the refusal: a send with the metadata in the request goes through.
    let authorized = request().with_metadata(metadata("application1", SECRET1));
    assert_eq!(bare.send(authorized).await.unwrap(), 1);
    assert_eq!(recv_text(&mut listener).await, r#""from credentials""#);

    // Default metadata: every send carries it; a request's own entry replaces one of it.
    let defaults = WebSocketClient::builder(&server.url)
        .query("key", "application1")
        .default_metadata(metadata("application1", SECRET1))
        .connect()
        .await
        .unwrap();
    let request = WebSocketRequest::new("from defaults").with_tags(room.clone());
    assert_eq!(defaults.send(request.clone()).await.unwrap(), 1);
    assert_eq!(recv_text(&mut listener).await, r#""from defaults""#);
    assert_unauthorized(
        defaults
            .send(request.clone().with_meta("secret", "not-the-secret"))
            .await,
    )
    .await;
    // A wrong default secret is fixed by the request's own.
    let wrong_default = WebSocketClient::builder(&server.url)
        .query("key", "application1")
        .default_metadata(metadata("application1", "not-the-secret"))
        .connect()
        .await
        .unwrap();
    assert_unauthorized(wrong_default.send(request.clone()).await).await;
    let fixed = request.with_meta("secret", SECRET1);
    assert_eq!(wrong_default.send(fixed).await.unwrap(), 1);
    assert_eq!(recv_text(&mut listener).await, r#""from defaults""#);
    // Nothing refused reached the listener: the next thing it gets is a marker.
    assert_nothing_before_marker_with(&mut listener, &server, "auth").await;

    for client in [with_credentials, bare, defaults, wrong_default] {
        client.close().await;
    }
}

/// A marker published over `/publish` with application1's credentials (the server has
/// `--auth`) to `{"room": room}` is the next thing `ws` gets.
async fn assert_nothing_before_marker_with(ws: &mut Ws, server: &TestServer, room: &str) {
    let body = serde_json::json!({
        "message": "marker",
        "tags": {"room": room},
        "metadata": {"key": "application1", "secret": SECRET1},
    });
    let answer = http_post(server.addr, "/publish", &body.to_string()).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"delivered":1}"#)
    );
    assert_marker_next(ws, "marker").await;
}

/// README "The Rust SDK": default tags are merged under each request's own (the request wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_tags_are_merged_under_the_requests_own() {
    let server = TestServer::start().await;
    let mut a = raw(&server.url_with_tags(r#"{"room":"a","lang":"fr"}"#)).await;
    let mut b = raw(&server.url_with_tags(r#"{"room":"b","lang":"fr"}"#)).await;
    let client = WebSocketClient::builder(&server.url)
        .tags(Tags::new().with("room", "sender"))
        .default_tags(Tags::new().with("room", "a"))
        .connect()
        .await
        .unwrap();
    server.wait_connections(3).await;
    // No tags of its own: the default room.
    assert_eq!(
        client.send(WebSocketRequest::new("default")).await.unwrap(),
        1
    );
    assert_eq!(recv_text(&mut a).await, r#""default""#);
    // Its own room wins, its other tags are added to the default's.
    let own = Tags::new().with("room", "b").with("lang", "fr");
    let request = WebSocketRequest::new("own").with_tags(own);
    assert_eq!(client.send(request).await.unwrap(), 1);
    assert_eq!(recv_text(&mut b).await, r#""own""#);
    assert_nothing_before_marker(&mut a, server.addr, serde_json::json!({"room": "a"})).await;
    client.close().await;
}

/// README "The Rust SDK": `client.messages()` and `client.events()` are streams; a reconnecting
/// client's events are the messages, `Disconnected`, `Resumed` and, when the server means it
/// (4001), `Ended`, in order, and then both streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_events_are_streams_that_end_with_the_client() {
    use futures_util::StreamExt;
    let node = Node::start(api_config()).await;
    let room = Tags::new().with("room", "streams");
    let client = WebSocketClient::builder(node.url())
        .tags(room.clone())
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    node.wait_connections(1).await;
    let api = api(&node.url());
    for text in ["m1", "m2", "m3"] {
        assert_eq!(publish(&api, text, &room).await, 1);
    }
    let messages = std::pin::pin!(client.messages());
    let got = tokio::time::timeout(
        WAIT,
        messages.take(3).map(|m| m.message).collect::<Vec<_>>(),
    )
    .await
    .expect("three messages in time");
    assert_eq!(got, ["m1", "m2", "m3"]);

    let mut events = std::pin::pin!(client.events());
    let socket = node.stop().await;
    match next_in(&mut events).await {
        Some(Event::Disconnected { code, .. }) => assert_eq!(code, Some(Close::GOING_AWAY)),
        other => panic!("expected the drop, got {other:?}"),
    }
    let node = Node::start_on(socket, api_config());
    assert_eq!(
        next_in(&mut events).await,
        Some(Event::Resumed {
            recovered: false,
            missed: 0
        })
    );
    let api = self::api(&node.url());
    assert_eq!(publish(&api, "back", &room).await, 1);
    match next_in(&mut events).await {
        Some(Event::Message(received)) => {
            assert_eq!(received.message, "back");
            assert_eq!(received.tags, room);
        }
        other => panic!("expected the message, got {other:?}"),
    }
    assert_eq!(api.disconnect(&room, Some("bye")).await.unwrap(), 1);
    assert_eq!(
        next_in(&mut events).await,
        Some(Event::Ended(Error::Closed(Close {
            code: Some(Close::DISCONNECTED),
            reason: "bye".into()
        })))
    );
    assert_eq!(
        next_in(&mut events).await,
        None,
        "the events end with the client"
    );
    let after = tokio::time::timeout(WAIT, std::pin::pin!(client.messages()).next()).await;
    assert_eq!(after.expect("at once"), None, "so do the messages");
    node.stop().await;
}

async fn next_in<S: futures_util::Stream<Item = Event> + Unpin>(events: &mut S) -> Option<Event> {
    tokio::time::timeout(WAIT, futures_util::StreamExt::next(events))
        .await
        .expect("an event in time")
}

/// README "The Rust SDK": a send over `--rate-limit` is `Error::Rejected { code: RateLimited }`
/// and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_over_the_rate_limit_is_rejected_with_rate_limited() {
    let server = TestServer::with_config(Config {
        rate_limit: Some(1),
        ..Config::default()
    })
    .await;
    let room = Tags::new().with("room", "limited");
    let client = WebSocketClient::connect(&server.url, room.clone())
        .await
        .unwrap();
    // Five at once against one per second (burst 1): the first goes, the others are refused.
    let sends = (0..5).map(|i| client.send(WebSocketRequest::new(format!("s{i}"))));
    let results = futures_util::future::join_all(sends).await;
    let (sent, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(sent.len(), 1, "{sent:?} {refused:?}");
    for error in refused {
        match error {
            Err(Error::Rejected {
                code: ErrorCode::RateLimited,
                message,
            }) => assert!(!message.is_empty()),
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }
    // The connection stays open: what was sent came, then a message published to it.
    assert_eq!(next_message(&client).await, "s0");
    let marker = publish_marker(server.addr, serde_json::json!({"room": "limited"})).await;
    assert_eq!(next_message(&client).await, marker.as_str());
    assert_eq!(client.ended(), None);
    client.close().await;
}

/// README "The Rust SDK" and "Clusters": a send on a node whose Redis is down is
/// `Error::Rejected { code: Unavailable }`, which is not final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_while_redis_is_down_is_rejected_with_unavailable() {
    let mut redis = RedisServer::start();
    let server = TestServer::with_config(Config {
        redis: Some(redis.url()),
        redis_channel: "sdk-unavailable".into(),
        ..Config::default()
    })
    .await;
    let room = Tags::new().with("room", "down");
    let client = WebSocketClient::connect(&server.url, room.clone())
        .await
        .unwrap();
    let request = || WebSocketRequest::new("hello").with_tags(room.clone());
    assert_eq!(client.send(request()).await.unwrap(), 1);
    assert_eq!(next_message(&client).await, "hello");

    redis.kill();
    // The node notices (its /healthz says 503), then refuses instead of dropping.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(server.addr, "/healthz", "").await.status != 503 {
        assert!(tokio::time::Instant::now() < deadline, "never 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = client.send(request()).await.unwrap_err();
    match &error {
        Error::Rejected {
            code: ErrorCode::Unavailable,
            message,
        } => assert!(!message.is_empty()),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(error.code(), Some(ErrorCode::Unavailable));
    assert!(!error.is_final(), "worth retrying later");
    assert_eq!(client.ended(), None, "the connection stays open");
    client.close().await;
}
