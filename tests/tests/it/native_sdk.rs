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

/// A server that can be stopped and started again on the same address (a restart, for
/// reconnects); `TestServer` always takes a fresh port.
struct Node {
    addr: SocketAddr,
    registry: std::sync::Arc<tagcast_server::registry::Registry>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    async fn start(addr: SocketAddr, config: Config) -> Node {
        let server = Server::builder().config(config).build().unwrap();
        // The port of a node just stopped may take a moment to be free again.
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "bind {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let registry = server.registry();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Node {
            addr,
            registry,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the node stops in time")
            .unwrap()
            .unwrap();
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
    let node = Node::start("127.0.0.1:0".parse().unwrap(), signed_config(AUTH_YAML)).await;
    let client = WebSocketClient::builder(node.url())
        .token(token(&Tags::new().with("user", 42)))
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    node.wait_connections(1).await;
    let addr = node.addr;
    node.stop().await;
    match next_event(&client).await {
        Event::Disconnected { code, .. } => assert_eq!(code, Some(Close::GOING_AWAY)),
        other => panic!("expected the drop, got {other:?}"),
    }
    let rotated = AUTH_YAML.replace(SECRET2, "a-new-secret-for-application2-xyz");
    let node = Node::start(addr, signed_config(&rotated)).await;
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
    let node = Node::start(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            max_tags: 2,
            ..signed_config(AUTH_YAML)
        },
    )
    .await;
    let api = api(&node.url());
    let (room1, room2) = (
        Tags::new().with("user", 42).with("room", 1),
        Tags::new().with("user", 42).with("room", 2),
    );
    let client = WebSocketClient::builder(node.url())
        .token(token(&room1))
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    node.wait_connections(1).await;

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
    let addr = node.addr;
    node.stop().await;
    assert!(matches!(
        next_event(&client).await,
        Event::Disconnected { .. }
    ));
    let node = Node::start(
        addr,
        Config {
            max_tags: 2,
            ..signed_config(AUTH_YAML)
        },
    )
    .await;
    assert!(matches!(next_event(&client).await, Event::Resumed { .. }));
    node.wait_connections(1).await;
    let api = self::api(&node.url());
    assert_eq!(publish(&api, "back", &room1).await, 0);
    assert_eq!(publish(&api, "back", &room2).await, 1);
    assert_eq!(next_message(&client).await, "back");
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
