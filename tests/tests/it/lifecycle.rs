//! Lifecycle: shutdown closes with 1001, disconnections leave the registry, the plain-HTTP
//! answers of §2 and §7, and a client-initiated close.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_closes_every_connection_with_1001() {
    let server = TestServer::start().await;
    let registry = server.registry.clone();
    let mut a = raw(&server.url).await;
    let mut b = envelope(&server.url).await;
    let mut c = raw(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    server.wait_connections(3).await;

    let stopping = tokio::spawn(server.stop());
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(recv_close(ws).await.0, 1001);
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server stops once its clients answered")
        .unwrap();
    // `stop` returned Ok: `run` ended and dropped its listener. (Dialling the released port
    // would prove nothing: another test may have bound it since.)
    assert_eq!(registry.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_before_a_stop_are_still_delivered() {
    let server = TestServer::start().await;
    let mut receiver = raw(&server.url).await;
    let mut sender = envelope(&server.url_with_tags(r#"{"role":"sender"}"#)).await;
    server.wait_connections(2).await;
    send_text(&mut sender, r#"{"id":1,"message":"last words","tags":{}}"#).await;
    // The ack comes after routing: the message is queued for `receiver`.
    let frames = [recv_json(&mut sender).await, recv_json(&mut sender).await];
    assert!(frames.iter().any(|f| f["type"] == "ack"), "{frames:?}");
    let stopping = tokio::spawn(server.stop());
    assert_eq!(recv_text(&mut receiver).await, r#""last words""#);
    assert_eq!(recv_close(&mut receiver).await.0, 1001);
    assert_eq!(recv_close(&mut sender).await.0, 1001);
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_returns_to_zero_once_every_client_is_gone() {
    let server = TestServer::start().await;
    let abrupt = raw(&server.url).await;
    let mut polite = raw(&server.url_with_tags(r#"{"a":1}"#)).await;
    let sdk = tagcast::WebSocketClient::connect(server.url.clone(), tagcast::Tags::new())
        .await
        .unwrap();
    let mut env = envelope(&server.url).await;
    server.wait_connections(4).await;

    drop(abrupt); // TCP closed without a close frame
    server.wait_connections(3).await;
    polite.close(None).await.unwrap();
    drain_until_end(&mut polite, WAIT).await;
    sdk.close().await;
    env.close(None).await.unwrap();
    drain_until_end(&mut env, WAIT).await;
    server.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_and_the_client_removed() {
    let server = TestServer::start().await;
    let mut leaving = raw(&server.url).await;
    let mut staying = raw(&server.url).await;
    server.wait_connections(2).await;

    leaving
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    let answer = drain_until_end(&mut leaving, WAIT).await;
    assert_eq!(
        answer.map(|(code, _)| code),
        Some(1000),
        "the server answers the close"
    );
    server.wait_connections(1).await;

    // The one staying is unaffected, and messages no longer go to the one that left.
    send_text(&mut staying, r#"{"message":"still here"}"#).await;
    assert_eq!(recv_text(&mut staying).await, r#""still here""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_answers_426_with_how_to_connect() {
    let server = TestServer::start().await;
    for path in ["/", "/anything?x=1"] {
        let answer = http_get(server.addr, path, "").await;
        assert_eq!(answer.status, 426, "{path}: {answer:?}");
        assert!(
            answer.body.contains("ws://"),
            "the body says how to connect: {answer:?}"
        );
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{answer:?}"
        );
    }
    assert_eq!(
        server.registry.len(),
        0,
        "HTTP requests are not connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_200_ok() {
    let server = TestServer::start().await;
    let answer = http_get(server.addr, "/healthz", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_pinged_and_dropped_when_they_stop_answering() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The live client has 1.75 s to answer a ping: enough on a loaded machine.
    let server = TestServer::with_config(tagcast_server::Config {
        ping_interval: Some(Duration::from_millis(250)),
        idle_timeout: Some(Duration::from_secs(2)),
        ..tagcast_server::Config::default()
    })
    .await;
    // A client that reads answers the pings (tungstenite replies to them) and stays.
    let mut alive = raw(&server.url_with_tags(r#"{"g":1}"#)).await;
    // A peer that finished its handshake and then went silent: no pong ever.
    let mut dead = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    dead.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    server.wait_connections(2).await;
    let reader = tokio::spawn(async move {
        // Keep reading (so pings are answered) until the message comes.
        let mut pings = 0;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(20),
                futures_util::StreamExt::next(&mut alive),
            )
            .await
            {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Text(t)))) => return (t.as_str().to_owned(), pings),
                Ok(Some(Ok(_))) => {}
                other => panic!("the live client lost its connection: {other:?}"),
            }
        }
    });
    // The silent one gets pings, then the close 1001 `idle timeout`, and its socket ends:
    // after the 2 s idle timeout and at most the 5 s the server gives a close.
    let mut received = Vec::new();
    let ended =
        tokio::time::timeout(Duration::from_secs(15), dead.read_to_end(&mut received)).await;
    assert!(ended.is_ok(), "the silent peer was never dropped");
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the 101 answer")
        + 4;
    assert!(received.starts_with(b"HTTP/1.1 101"), "{received:?}");
    assert_eq!(
        server_close_frame(&received[head_end..]),
        Some((1001, "idle timeout".to_owned())),
        "the idle peer's close frame"
    );
    server.wait_connections(1).await;
    let answer = http_post(
        server.addr,
        "/publish",
        r#"{"message":"still here","tags":{"g":1}}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body, r#"{"delivered":1}"#,
        "only the live client is left"
    );
    let (text, pings) = reader.await.unwrap();
    assert_eq!(text, r#""still here""#);
    assert!(pings >= 2, "pings seen: {pings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_requests_and_half_frames_do_not_hold_a_connection() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with_config(tagcast_server::Config {
        handshake_timeout: Duration::from_secs(1),
        ping_interval: Some(Duration::from_millis(200)),
        idle_timeout: Some(Duration::from_millis(700)),
        ..tagcast_server::Config::default()
    })
    .await;
    // A slowloris: half a request head, then nothing.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /?tags=%7B%7D HTTP/1.1\r\nHost: x\r\nUpgrade: web")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let dropped = tokio::time::timeout(Duration::from_secs(8), slow.read_to_end(&mut sink)).await;
    assert!(dropped.is_ok(), "a half request head held its connection");

    // A peer that starts a frame (masked text, 100 bytes announced) and never finishes it.
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    server.wait_connections(1).await;
    half.write_all(&[0x81, 0x80 | 100, 1, 2, 3, 4, b'x'])
        .await
        .unwrap();
    // Idle timeout, then at most the 5 s a close may take.
    let dropped = tokio::time::timeout(Duration::from_secs(15), half.read_to_end(&mut sink)).await;
    assert!(dropped.is_ok(), "a half frame held its connection");
    server.wait_connections(0).await;
}
