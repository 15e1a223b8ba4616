//! The native client's reconnect and resume (PROTOCOL.md §11) against a real server: the
//! connection is cut by a TCP proxy while the server stays up (its history too), or the server
//! restarts; a scripted server checks the `since` each reopening carries.

#![cfg(feature = "client")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tagcast::client::{Event, Received, Reconnect};
use tagcast::error::Close;
use tagcast::{Error, Tags, WebSocketClient, WebSocketRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for anything a test expects.
const PATIENCE: Duration = Duration::from_secs(10);

/// The `--api-key` of the server that tests its API (PROTOCOL.md §12).
const API_KEY: &str = "test-key";

/// A Tagcast server with the default configuration (history on) on 127.0.0.1.
struct TestServer {
    addr: SocketAddr,
    /// The listening socket, kept across a restart: `run` gets a clone of it, so the port is
    /// never released for another process to take while the server is down (connections
    /// made meanwhile wait in its backlog for the next run).
    socket: std::net::TcpListener,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with(tagcast_server::Config::default()).await
    }

    /// Starts on a port the OS picks.
    async fn start_with(config: tagcast_server::Config) -> TestServer {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        TestServer::start_on(socket, config)
    }

    /// Starts (again) on `socket`, the one a stopped server gave back.
    fn start_on(socket: std::net::TcpListener, config: tagcast_server::Config) -> TestServer {
        let addr = socket.local_addr().unwrap();
        let listener = TcpListener::from_std(socket.try_clone().unwrap()).unwrap();
        let server = tagcast_server::Server::builder()
            .config(config)
            .build()
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            socket,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `POST`s `body` to `path` with the API key `API_KEY`, and returns the answer's body.
    async fn post(&self, path: &str, body: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// Stops the server (its connections close with 1001), waits until it has, and gives back
    /// its listening socket, still bound, for a restart on the same address.
    async fn stop(mut self) -> std::net::TcpListener {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
        self.socket
    }
}

/// A TCP proxy in front of a server: `cut` drops every connection through it (both sides see
/// the TCP connection end, without a close frame), while `block` refuses new ones.
struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (refusing, cuts) = (blocked.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue; // dropped: the client's handshake fails
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, blocked, cut }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn block(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }

    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Reconnects quickly, for tests.
fn fast() -> Reconnect {
    Reconnect::new(Duration::from_millis(20), Duration::from_millis(200))
}

async fn next_event(client: &WebSocketClient) -> Event {
    tokio::time::timeout(PATIENCE, client.recv_event())
        .await
        .expect("an event in time")
        .expect("the client is still running")
}

async fn next_message(client: &WebSocketClient) -> Received {
    match next_event(client).await {
        Event::Message(received) => received,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Nothing arrived before a marker `publisher` sends now to `tags`, the client's own: a
/// silence check anchored on a later frame instead of a bare wait.
async fn assert_nothing_before_marker(
    client: &WebSocketClient,
    publisher: &WebSocketClient,
    tags: &Tags,
) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let marker = format!("marker {}", NEXT.fetch_add(1, Ordering::Relaxed));
    let delivered = publisher
        .send(WebSocketRequest::new(marker.as_str()).with_tags(tags.clone()))
        .await
        .unwrap();
    assert_eq!(delivered, 1, "the marker reaches the client alone");
    match next_event(client).await {
        Event::Message(received) => {
            assert_eq!(
                received.message,
                marker.as_str(),
                "expected nothing before the marker"
            )
        }
        other => panic!("expected nothing before the marker, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_connection_gets_what_it_missed_once_and_in_order() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let room = Tags::new().with("room", "resume");
    let client = WebSocketClient::builder(proxy.url())
        .tags(room.clone())
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    let publisher = WebSocketClient::connect(server.url(), Tags::new())
        .await
        .unwrap();
    let say =
        |text: &'static str| publisher.send(WebSocketRequest::new(text).with_tags(room.clone()));

    say("m1").await.unwrap();
    let first = next_message(&client).await;
    assert_eq!(first.message, "m1");
    let first_pos = first.pos.expect("history is on: messages carry a position");

    proxy.block(true);
    proxy.cut();
    match next_event(&client).await {
        Event::Disconnected { code: None, reason } => assert!(!reason.is_empty()),
        other => panic!("expected the drop, got {other:?}"),
    }
    // Away: a send fails at once with a clear error, and is not queued for later.
    let away = client.send(WebSocketRequest::new("never").with_tags(room.clone()));
    let err = tokio::time::timeout(PATIENCE, away)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::NotConnected(_)), "{err:?}");
    assert!(err.to_string().contains("not sent"), "{err}");
    for text in ["m2", "m3", "m4"] {
        say(text).await.unwrap();
    }

    proxy.block(false);
    let mut positions = vec![first_pos];
    for text in ["m2", "m3", "m4"] {
        let replayed = next_message(&client).await;
        assert_eq!(replayed.message, text);
        assert_eq!(replayed.tags, room);
        let pos = replayed.pos.unwrap();
        assert!(!positions.contains(&pos), "{pos} twice");
        positions.push(pos);
    }
    assert_eq!(
        next_event(&client).await,
        Event::Resumed {
            recovered: true,
            missed: 3
        }
    );
    // Live again, on the same tags.
    let delivered = client
        .send(WebSocketRequest::new("m5").with_tags(room.clone()))
        .await
        .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(next_message(&client).await.message, "m5");
    assert_nothing_before_marker(&client, &publisher, &room).await;

    // A second drop resumes from the new place, not from the first one.
    proxy.cut();
    assert!(matches!(
        next_event(&client).await,
        Event::Disconnected { .. }
    ));
    assert_eq!(
        next_event(&client).await,
        Event::Resumed {
            recovered: true,
            missed: 0
        }
    );
    say("m6").await.unwrap();
    assert_eq!(next_message(&client).await.message, "m6");
    assert_nothing_before_marker(&client, &publisher, &room).await;

    client.close().await;
    publisher.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_says_not_recovered() {
    let server = TestServer::start().await;
    let tags = Tags::new().with("room", "restart");
    let client = WebSocketClient::builder(server.url())
        .tags(tags.clone())
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    client
        .send(WebSocketRequest::new("before").with_tags(tags.clone()))
        .await
        .unwrap();
    assert_eq!(next_message(&client).await.message, "before");

    let socket = server.stop().await;
    match next_event(&client).await {
        Event::Disconnected {
            code: Some(1001),
            reason,
        } => assert!(!reason.is_empty()),
        other => panic!("expected the drop, got {other:?}"),
    }
    // A new server is a new history: the old position resumes, but cannot be recovered.
    let server = TestServer::start_on(socket, tagcast_server::Config::default());
    assert_eq!(
        next_event(&client).await,
        Event::Resumed {
            recovered: false,
            missed: 0
        }
    );
    // `recv` skips connection events and returns the next message.
    let delivered = client
        .send(WebSocketRequest::new("after").with_tags(tags.clone()))
        .await
        .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(client.recv().await.unwrap().message, "after");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_retagged_connection_comes_back_with_its_new_tags() {
    let config = tagcast_server::Config {
        api_key: Some(tagcast_server::api::ApiKey(API_KEY.into())),
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    let proxy = Proxy::start(server.addr).await;
    let (old, new) = (
        Tags::new().with("room", "old"),
        Tags::new().with("room", "new"),
    );
    let client = WebSocketClient::builder(proxy.url())
        .tags(old.clone())
        .reconnect(fast())
        .connect()
        .await
        .unwrap();
    let publisher = WebSocketClient::connect(server.url(), Tags::new())
        .await
        .unwrap();
    let say = |text: &'static str, tags: &Tags| {
        publisher.send(WebSocketRequest::new(text).with_tags(tags.clone()))
    };
    say("to old", &old).await.unwrap();
    assert_eq!(next_message(&client).await.message, "to old");

    // The server's application moves the connection to room "new" (PROTOCOL.md §13).
    let answer = server
        .post("/retag", r#"{"tags":{"room":"old"},"set":{"room":"new"}}"#)
        .await;
    assert!(answer.contains(r#""retagged":1"#), "{answer}");
    assert_eq!(
        next_event(&client).await,
        Event::Retagged { tags: new.clone() }
    );
    assert_eq!(say("to new", &new).await.unwrap(), 1);
    assert_eq!(next_message(&client).await.message, "to new");

    proxy.block(true);
    proxy.cut();
    assert!(matches!(
        next_event(&client).await,
        Event::Disconnected { .. }
    ));
    say("old, while away", &old).await.unwrap();
    say("new, while away", &new).await.unwrap();
    proxy.block(false);
    // Reopened with the new tags: only the new room's message is replayed.
    let replayed = next_message(&client).await;
    assert_eq!(replayed.message, "new, while away");
    assert_eq!(
        next_event(&client).await,
        Event::Resumed {
            recovered: true,
            missed: 1
        }
    );
    assert_eq!(say("new, live", &new).await.unwrap(), 1);
    assert_eq!(say("old, live", &old).await.unwrap(), 0);
    assert_eq!(next_message(&client).await.message, "new, live");
    assert_nothing_before_marker(&client, &publisher, &new).await;
    client.close().await;
    publisher.close().await;
    server.stop().await;
}

#[tokio::test]
async fn without_reconnect_the_client_ends_with_its_connection() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let client = WebSocketClient::connect(proxy.url(), Tags::new())
        .await
        .unwrap();
    proxy.cut();
    // Without `reconnect` the drop ends the client: one `Ended`, then nothing.
    let Event::Ended(ended) = next_event(&client).await else {
        panic!("expected the end");
    };
    assert!(
        matches!(&ended, Error::Closed(close) if close.code.is_none()),
        "{ended:?}"
    );
    assert_eq!(client.recv_event().await, None);
    assert_eq!(client.ended(), Some(ended.clone()));
    assert!(client.close_reason().is_some());
    let err = client
        .send(WebSocketRequest::new("late"))
        .await
        .unwrap_err();
    assert_eq!(err, ended);
    server.stop().await;
}

#[tokio::test]
async fn closing_stops_the_reconnecting() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let client = WebSocketClient::builder(proxy.url())
        .reconnect(Reconnect::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
        ))
        .connect()
        .await
        .unwrap();
    proxy.block(true);
    proxy.cut();
    assert!(matches!(
        next_event(&client).await,
        Event::Disconnected { .. }
    ));
    tokio::time::timeout(Duration::from_secs(1), client.close())
        .await
        .expect("close returns at once while reconnecting");
    server.stop().await;
}

/// A scripted envelope server: accepts connections one at a time, hands each one's request
/// URI to the test with a way to talk to it.
struct Scripted {
    addr: SocketAddr,
    listener: TcpListener,
}

type ServerSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Scripted {
            addr: listener.local_addr().unwrap(),
            listener,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next connection (within `wait`), accepted with the `tagcast.v1` subprotocol, and
    /// the query of its request.
    async fn accept(&self, wait: Duration) -> Option<(ServerSocket, String)> {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        let (stream, _) = tokio::time::timeout(wait, self.listener.accept())
            .await
            .ok()?
            .unwrap();
        let (query_tx, query_rx) = std::sync::mpsc::channel();
        // tungstenite's `Callback` fixes this signature, large error response included.
        #[allow(clippy::result_large_err)]
        let callback = move |request: &Request, mut response: Response| {
            let _ = query_tx.send(request.uri().query().unwrap_or_default().to_owned());
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "tagcast.v1".parse().unwrap());
            Ok(response)
        };
        let socket = tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .unwrap();
        Some((socket, query_rx.recv().unwrap()))
    }
}

async fn say(socket: &mut ServerSocket, frame: &str) {
    socket.send(Message::text(frame)).await.unwrap();
}

fn since_of(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .map(str::to_owned)
}

#[tokio::test]
async fn each_reopening_carries_the_right_since() {
    let server = Scripted::start().await;
    let client = WebSocketClient::builder(server.url())
        .reconnect(fast())
        .connect();
    let (client, accepted) = tokio::join!(client, server.accept(PATIENCE));
    let client = client.unwrap();
    let (mut socket, query) = accepted.unwrap();
    assert_eq!(since_of(&query), None);
    say(&mut socket, r#"{"type":"position","pos":"x.1"}"#).await;
    say(
        &mut socket,
        r#"{"type":"message","message":"a","tags":{},"pos":"x.2"}"#,
    )
    .await;
    assert_eq!(next_message(&client).await.pos.as_deref(), Some("x.2"));
    // 1012 (`service restart`): come back and resume.
    let restart = CloseFrame {
        code: CloseCode::Restart,
        reason: "service restart".into(),
    };
    socket.close(Some(restart)).await.unwrap();
    assert!(matches!(
        next_event(&client).await,
        Event::Disconnected { .. }
    ));

    let (mut socket, query) = server.accept(PATIENCE).await.unwrap();
    assert_eq!(since_of(&query).as_deref(), Some("x.2"));
    // The latest position comes first, then part of the replay, then the TCP connection drops
    // before `resumed`: the next reopening resumes after the last replayed message.
    say(&mut socket, r#"{"type":"position","pos":"x.9"}"#).await;
    say(
        &mut socket,
        r#"{"type":"message","message":"b","tags":{},"pos":"x.4"}"#,
    )
    .await;
    assert_eq!(next_message(&client).await.message, "b");
    drop(socket);
    assert!(matches!(
        next_event(&client).await,
        Event::Disconnected { .. }
    ));

    let (mut socket, query) = server.accept(PATIENCE).await.unwrap();
    assert_eq!(since_of(&query).as_deref(), Some("x.4"));
    say(&mut socket, r#"{"type":"position","pos":"x.9"}"#).await;
    say(
        &mut socket,
        r#"{"type":"resumed","recovered":true,"missed":0}"#,
    )
    .await;
    assert_eq!(
        next_event(&client).await,
        Event::Resumed {
            recovered: true,
            missed: 0
        }
    );
    // Kicked by the server's application (4001, PROTOCOL.md §12): no coming back.
    let kicked = CloseFrame {
        code: CloseCode::from(4001),
        reason: "disconnected by the server".into(),
    };
    socket.close(Some(kicked)).await.unwrap();
    let expected = Error::Closed(Close {
        code: Some(Close::DISCONNECTED),
        reason: "disconnected by the server".into(),
    });
    assert_eq!(next_event(&client).await, Event::Ended(expected.clone()));
    // The event stream is over: the client's task has ended, so no reopening can follow (no
    // bare wait for a connection that does not come).
    assert_eq!(client.recv_event().await, None);
    assert_eq!(
        client.close_reason().unwrap(),
        "code 4001 (disconnected by the server)"
    );
    assert_eq!(client.ended(), Some(expected));
}
