//! Limits (PROTOCOL.md §8 and the handshake order of §2): connections, message size, tags,
//! slow consumers.

use std::time::Duration;

use futures_util::SinkExt;
use tagcast_server::Config;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

use super::util::*;

/// Opens `url`, retrying briefly while the server still answers 503 (a slot is released a
/// moment after the registry forgets a closed connection).
async fn open_when_a_slot_frees(url: &str) -> Ws {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => return ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status().as_u16() == 503 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the freed slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_answers_503_until_a_connection_closes() {
    let server = TestServer::with_config(Config {
        max_connections: Some(2),
        ..Config::default()
    })
    .await;
    let mut a = raw(&server.url).await;
    let mut b = envelope(&server.url).await;
    server.wait_connections(2).await;

    let (status, body) = refused(&server.url).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.trim().is_empty());
    // Plain HTTP requests do not count and are still served.
    let health = http_get(server.addr, "/healthz", "").await;
    assert_eq!(health.status, 200, "{health:?}");

    // Refused handshakes did not take a slot: the open ones still work.
    send_text(&mut b, r#"{"id":1,"message":"still here"}"#).await;
    assert_eq!(recv_text(&mut a).await, r#""still here""#);

    a.close(None).await.unwrap();
    drain_until_end(&mut a, WAIT).await;
    server.wait_connections(1).await;
    let mut c = open_when_a_slot_frees(&server.url).await;
    server.wait_connections(2).await;
    assert_eq!(refused(&server.url).await.0, 503);
    send_text(&mut c, r#"{"message":"new one"}"#).await;
    assert_eq!(recv_text(&mut c).await, r#""new one""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_is_checked_before_auth_and_auth_before_tags() {
    let server = TestServer::with_config(Config {
        max_connections: Some(1),
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open: false,
        ..Config::default()
    })
    .await;
    let bad_tags = encode("not json");
    let unauthorized_bad_tags = format!("{}/?tags={bad_tags}", server.url);
    let authorized_bad_tags = format!("{}/?key=application1&tags={bad_tags}", server.url);

    // A free slot: authorization comes before the tags, then the tags.
    assert_eq!(refused(&unauthorized_bad_tags).await.0, 401);
    let (status, body) = refused(&authorized_bad_tags).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tags"), "the 400 names the problem: {body}");

    // The only slot taken: 503 comes first whatever else is wrong.
    let _open = raw(&format!("{}/?key=application1", server.url)).await;
    server.wait_connections(1).await;
    assert_eq!(refused(&unauthorized_bad_tags).await.0, 503);
    assert_eq!(refused(&authorized_bad_tags).await.0, 503);
    assert_eq!(refused(&server.url).await.0, 503);
}

/// `{"message":"xxx…"}` padded so that the frame is exactly `len` bytes.
fn request_of_len(len: usize) -> String {
    let overhead = r#"{"message":""}"#.len();
    let frame = format!(r#"{{"message":"{}"}}"#, "x".repeat(len - overhead));
    assert_eq!(frame.len(), len);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_exactly_max_message_bytes_is_accepted_one_more_closes_with_1009() {
    const MAX: usize = 1000;
    let server = TestServer::with_config(Config {
        max_message_bytes: MAX,
        ..Config::default()
    })
    .await;
    let mut sender = raw(&server.url).await;
    let mut other = raw(&server.url).await;
    server.wait_connections(2).await;

    let exact = request_of_len(MAX);
    send_text(&mut sender, &exact).await;
    let expected = format!("\"{}\"", "x".repeat(MAX - r#"{"message":""}"#.len()));
    assert_eq!(recv_text(&mut sender).await, expected);
    assert_eq!(recv_text(&mut other).await, expected);

    send_text(&mut sender, &request_of_len(MAX + 1)).await;
    assert_eq!(recv_close(&mut sender).await.0, 1009);
    // Nobody else is affected.
    assert_nothing_before_marker(&mut other, server.addr, serde_json::json!({})).await;
    server.wait_connections(1).await;
    send_text(&mut other, r#"{"message":"fine"}"#).await;
    assert_eq!(recv_text(&mut other).await, r#""fine""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_applies_to_the_joined_fragments() {
    const MAX: usize = 1000;
    let server = TestServer::with_config(Config {
        max_message_bytes: MAX,
        ..Config::default()
    })
    .await;
    let fragments = |text: &str| {
        let (first, second) = text.as_bytes().split_at(text.len() / 2);
        [
            Message::Frame(Frame::message(
                first.to_vec(),
                OpCode::Data(Data::Text),
                false,
            )),
            Message::Frame(Frame::message(
                second.to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )),
        ]
    };

    let mut ok = raw(&server.url).await;
    for frame in fragments(&request_of_len(MAX)) {
        ok.send(frame).await.unwrap();
    }
    assert_eq!(
        recv_text(&mut ok).await.len(),
        MAX - r#"{"message":}"#.len()
    );

    // Each fragment fits, the whole does not.
    let mut over = raw(&server.url).await;
    for frame in fragments(&request_of_len(MAX + 1)) {
        over.send(frame).await.unwrap();
    }
    assert_eq!(recv_close(&mut over).await.0, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tags_bounds_connections_and_requests() {
    let server = TestServer::with_config(Config {
        max_tags: 2,
        messages: tagcast_server::MessageMode::Json,
        ..Config::default()
    })
    .await;
    let (status, body) = refused(&server.url_with_tags(r#"{"a":1,"b":2,"c":3}"#)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tags"), "{body}");

    let mut two = raw(&server.url_with_tags(r#"{"a":1,"b":2}"#)).await;
    let mut env = envelope(&server.url).await;
    server.wait_connections(2).await;

    send_text(&mut env, r#"{"id":"ok","message":1,"tags":{"a":1,"b":2}}"#).await;
    assert_eq!(
        recv_json(&mut env).await,
        serde_json::json!({"type":"ack","id":"ok","delivered":1})
    );
    assert_eq!(recv_text(&mut two).await, "1");

    send_text(
        &mut env,
        r#"{"id":"three","message":2,"tags":{"a":1,"b":2,"c":3}}"#,
    )
    .await;
    let error = recv_json(&mut env).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["id"], "three", "{error}");
    assert_eq!(error["code"], "bad_request", "{error}");
    assert_nothing_before_marker(&mut two, server.addr, serde_json::json!({"a": 1, "b": 2})).await;

    send_text(&mut two, r#"{"message":3,"tags":{"a":1,"b":2,"c":3}}"#).await;
    let (code, reason) = recv_close(&mut two).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("tags"), "{reason}");
    assert_nothing_before_marker(&mut env, server.addr, serde_json::json!({})).await;
}

/// The server's count of slow-consumer disconnections, from /metrics.
async fn slow_consumer_disconnects(server: &TestServer) -> f64 {
    let metrics = http_get(server.addr, "/metrics", "").await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    sample(&metrics.body, "tagcast_slow_consumer_disconnects_total")
}

/// A raw-mode client whose socket has a small receive buffer, so that a client that stops
/// reading fills its server-side queue after a few messages, not after megabytes.
async fn raw_with_small_receive_buffer(url: &str, addr: std::net::SocketAddr) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_nobody_else_waits() {
    slow_consumer_is_disconnected(true).await;
}

/// `--direct-writes false`: every frame goes through the recipient's queue; the slow consumer
/// is closed with 1008 all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_with_direct_writes_off() {
    slow_consumer_is_disconnected(false).await;
}

async fn slow_consumer_is_disconnected(direct_writes: bool) {
    let server = TestServer::with_config(Config {
        queue_size: 4,
        direct_writes,
        ..Config::default()
    })
    .await;
    let room = r#"{"room":1}"#;
    // `slow` reads nothing until the server has decided to drop it; `good` reads everything.
    let mut slow = raw_with_small_receive_buffer(&server.url_with_tags(room), server.addr).await;
    let mut good = raw(&server.url_with_tags(room)).await;
    let mut publisher = raw(&server.url).await;
    server.wait_connections(3).await;
    assert_eq!(slow_consumer_disconnects(&server).await, 0.0);

    let padding = "x".repeat(32 * 1024);
    let mut sent = 0;
    loop {
        assert!(
            sent < 2000,
            "{sent} messages and the slow consumer is still not disconnected"
        );
        let frame = format!(r#"{{"message":"{sent} {padding}","tags":{{"room":1}}}}"#);
        send_text(&mut publisher, &frame).await;
        // Lock step: `good` has its message (within 5 s, whatever `slow` does) before the next
        // is sent, so its queue never fills and it never waits for `slow`.
        let got = recv_text(&mut good).await;
        assert!(
            got.starts_with(&format!("\"{sent} ")),
            "message {sent} out of order"
        );
        sent += 1;
        if slow_consumer_disconnects(&server).await > 0.0 {
            break;
        }
    }

    // The close is decided: `slow` reads now, well within the 5 s the server gives it. It
    // finds a prefix of the messages, in order, then the close frame (1008 `slow consumer`).
    let mut received = 0;
    let close = loop {
        let next = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut slow))
            .await
            .expect("the slow consumer's close frame within 5 s");
        match next {
            Some(Ok(Message::Text(t))) => {
                assert!(
                    t.as_str().starts_with(&format!("\"{received} ")),
                    "the slow consumer got message {received} out of order"
                );
                received += 1;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(Some(frame)))) => {
                break (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            other => panic!(
                "after {received} of {sent} messages the slow consumer expected its close \
                 frame, got {other:?}"
            ),
        }
    };
    eprintln!("slow consumer: closed after {received} of {sent} messages");
    assert_eq!(close, (1008, "slow consumer".to_owned()));
    assert!(received < sent, "{received} of {sent} messages");
    assert_eq!(slow_consumer_disconnects(&server).await, 1.0);

    // Reading on answers the close; the server lets it go, and the others are fine: nobody
    // else was counted.
    assert_eq!(drain_until_end(&mut slow, WAIT).await, None);
    server.wait_connections(2).await;
    for i in 0..20 {
        let frame = format!(r#"{{"message":"after {i}","tags":{{"room":1}}}}"#);
        send_text(&mut publisher, &frame).await;
        assert_eq!(recv_text(&mut good).await, format!(r#""after {i}""#));
    }
    assert_eq!(slow_consumer_disconnects(&server).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_rate_limit_is_refused() {
    let server = TestServer::with_config(Config {
        rate_limit: Some(5),
        ..Config::default()
    })
    .await;
    // Envelope: the burst of 5 passes, the rest of a fast burst is refused with
    // `rate_limited`, its id echoed; the connection stays open. The 20 requests go in one
    // write: even a loaded machine reads them well within the 3 s that would refill 15 tokens.
    const BURST: usize = 20;
    let mut e = envelope(&server.url_with_tags(r#"{"none":1}"#)).await;
    for i in 0..BURST {
        e.feed(Message::text(format!(
            r#"{{"id":{i},"message":"m","tags":{{"x":1}}}}"#
        )))
        .await
        .unwrap();
    }
    e.flush().await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..BURST {
        let frame = recv_json(&mut e).await;
        codes.push((
            frame["id"].as_i64().unwrap(),
            frame["type"].as_str().unwrap().to_owned(),
            frame["code"].clone(),
        ));
    }
    let acked = codes.iter().filter(|c| c.1 == "ack").count();
    let limited: Vec<_> = codes
        .iter()
        .filter(|c| c.2 == "rate_limited")
        .map(|c| c.0)
        .collect();
    assert!(
        acked >= 5 && !limited.is_empty() && acked + limited.len() == BURST,
        "{codes:?}"
    );
    // After a second the bucket is full again (a later wake-up only fills it more).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send_text(&mut e, r#"{"id":"later","message":"m","tags":{"x":1}}"#).await;
    assert_eq!(recv_json(&mut e).await["type"], "ack");

    // Raw: closed with 1008 `rate limited`.
    let mut r = raw(&server.url).await;
    for _ in 0..BURST {
        if r.feed(Message::text(r#"{"message":"m","tags":{"x":1}}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = r.flush().await;
    assert_eq!(recv_close(&mut r).await, (1008, "rate limited".to_owned()));
}
