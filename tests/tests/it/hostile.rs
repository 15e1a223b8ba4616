//! Hostile input: whatever one client sends, the server stays up, the others keep receiving
//! everything, and the registry returns to its count afterwards.

use std::time::Duration;

use futures_util::SinkExt;
use tagcast_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::util::*;

/// A healthy pair: one sender, one receiver on {"healthy":1}; checks a message gets through.
struct Healthy {
    sender: Ws,
    receiver: Ws,
    sent: usize,
}

impl Healthy {
    async fn new(server: &TestServer) -> Healthy {
        Healthy {
            sender: raw(&server.url).await,
            receiver: raw(&server.url_with_tags(r#"{"healthy":1}"#)).await,
            sent: 0,
        }
    }

    async fn still_served(&mut self) {
        self.sent += 1;
        let text = format!(r#"{{"message":"ok {}","tags":{{"healthy":1}}}}"#, self.sent);
        send_text(&mut self.sender, &text).await;
        assert_eq!(
            recv_text(&mut self.receiver).await,
            format!(r#""ok {}""#, self.sent)
        );
    }
}

/// A raw TCP connection after a completed WebSocket handshake.
async fn handshaken(server: &TestServer) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

/// A masked client frame (the mask is zero, so the payload goes as is).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Reads the server's close frame code from a raw stream (or 0 if the stream just ended).
async fn close_code(tcp: &mut TcpStream) -> u16 {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut all)).await;
    // Server frames are unmasked: find the close frame (opcode 8).
    let mut i = 0;
    while i + 2 <= all.len() {
        let opcode = all[i] & 0x0f;
        let mut len = (all[i + 1] & 0x7f) as usize;
        let mut at = i + 2;
        if len == 126 {
            len = u16::from_be_bytes([all[at], all[at + 1]]) as usize;
            at += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(all[at..at + 8].try_into().unwrap()) as usize;
            at += 8;
        }
        if opcode == 8 && len >= 2 {
            return u16::from_be_bytes([all[at], all[at + 1]]);
        }
        i = at + len;
    }
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_sender() {
    let server = TestServer::with_config(Config {
        max_message_bytes: 64 * 1024,
        ..Config::default()
    })
    .await;
    let mut healthy = Healthy::new(&server).await;
    server.wait_connections(2).await;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Invalid UTF-8 in a text frame.
        (frame(true, 1, &[0xff, 0xfe, b'"']), 1007),
        // A continuation frame with nothing to continue.
        (frame(true, 0, b"x"), 1002),
        // A new data frame in the middle of a fragmented message.
        (
            [frame(false, 1, b"{\"mess"), frame(true, 2, b"age\":1}")].concat(),
            1002,
        ),
        // Just over the limit, and far over it.
        (frame(true, 1, &vec![b'a'; 64 * 1024 + 1]), 1009),
        (frame(true, 1, &vec![b'a'; 4 * 1024 * 1024]), 1009),
        // Deeply nested JSON: refused by the parser's recursion bound, no crash.
        (
            frame(
                true,
                1,
                format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).as_bytes(),
            ),
            1007,
        ),
    ];
    for (bytes, code) in cases {
        let mut tcp = handshaken(&server).await;
        let _ = tcp.write_all(&bytes).await;
        assert_eq!(close_code(&mut tcp).await, code);
        healthy.still_served().await;
    }
    server.wait_connections(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_tags_and_query_tricks() {
    let server = TestServer::start().await;
    let mut healthy = Healthy::new(&server).await;
    // 10,000 tags in a request.
    let tags: Vec<String> = (0..10_000).map(|i| format!(r#""t{i}":{i}"#)).collect();
    let mut ws = raw(&server.url).await;
    send_text(
        &mut ws,
        &format!(r#"{{"message":"x","tags":{{{}}}}}"#, tags.join(",")),
    )
    .await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("too many tags"), "{reason}");
    // A huge tag name in the query.
    let (status, _) =
        refused(&server.url_with_tags(&format!(r#"{{"{}":1}}"#, "n".repeat(10_000)))).await;
    assert_eq!(status, 400);
    // Percent-encoding tricks: encoded braces decode; `+` is a space; double encoding is text.
    let mut spaced = raw(&format!(
        "{}/?tags=%7B%22city%22%3A%22New+York%22%7D",
        server.url
    ))
    .await;
    let (status, _) = refused(&format!("{}/?tags=%257B%257D", server.url)).await;
    assert_eq!(status, 400, "a double-encoded object is not JSON");
    let mut sender = raw(&server.url).await;
    send_text(
        &mut sender,
        r#"{"message":"hi","tags":{"city":"New York"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut spaced).await, r#""hi""#);
    healthy.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_and_connection_churn_leave_others_served() {
    let server = TestServer::start().await;
    let mut healthy = Healthy::new(&server).await;
    server.wait_connections(2).await;
    // 10,000 pings in a burst.
    let mut flooder = raw(&server.url).await;
    for _ in 0..10_000 {
        if flooder
            .feed(Message::Ping(vec![0u8; 16].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = flooder.flush().await;
    healthy.still_served().await;
    drop(flooder);
    // Thousands of connects and disconnects, some abrupt.
    let mut tasks = Vec::new();
    for i in 0..2000usize {
        let url = server.url_with_tags(&format!(r#"{{"churn":{i}}}"#));
        tasks.push(tokio::spawn(async move {
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
                if i % 2 == 0 {
                    let _ = ws.close(None).await;
                }
            }
        }));
        if tasks.len() >= 64 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    healthy.still_served().await;
    // Half-open TCP: handshaken sockets that vanish without a close.
    for _ in 0..50 {
        drop(handshaken(&server).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.wait_connections(2).await;
    healthy.still_served().await;
}
