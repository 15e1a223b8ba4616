//! Validation: handshake tags (PROTOCOL.md §1, §2) and request parsing (§3), with error texts
//! that name the problem.

use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshake_tags_answer_400_naming_the_problem() {
    let server = TestServer::start().await;
    for (tags, needle) in [
        (r#"{"language":"FR""#, "JSON"),
        (r#"["FR"]"#, "object"),
        (r#""FR""#, "object"),
        (r#"{"score":1.5}"#, "score"),
        (r#"{"n":5.0}"#, "\"n\""),
        (r#"{"n":1e3}"#, "\"n\""),
        (r#"{"flag":true}"#, "flag"),
        (r#"{"nothing":null}"#, "nothing"),
        (r#"{"list":[1]}"#, "list"),
        (r#"{"obj":{}}"#, "obj"),
        (r#"{"big":9223372036854775808}"#, "big"),
    ] {
        let (status, body) = refused(&server.url_with_tags(tags)).await;
        assert_eq!(status, 400, "{tags}");
        assert!(body.contains(needle), "{tags}: {body}");
    }
    let long_name = "n".repeat(129);
    let (status, _) = refused(&server.url_with_tags(&format!(r#"{{"{long_name}":1}}"#))).await;
    assert_eq!(status, 400);
    let long_value = "v".repeat(257);
    let (status, body) =
        refused(&server.url_with_tags(&format!(r#"{{"k":"{long_value}"}}"#))).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"k\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_edge_tags_open() {
    let server = TestServer::start().await;
    let name = "n".repeat(128);
    let value = "v".repeat(256);
    for tags in [
        "[]".to_owned(),
        "{}".to_owned(),
        format!(r#"{{"{name}":"{value}"}}"#),
        r#"{"min":-9223372036854775808,"empty":""}"#.to_owned(),
    ] {
        let mut ws = raw(&server.url_with_tags(&tags)).await;
        send_text(&mut ws, r#"{"message":"ok"}"#).await;
        assert_eq!(recv_text(&mut ws).await, r#""ok""#, "{tags}");
    }
    // The original docs' browser example, `?tags={"language":"FR"}`, as a browser sends it:
    // quotes percent-encoded, braces and colons left as they are.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "GET /?tags={{%22language%22:%22FR%22}} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    server.wait_connections(1).await;
    let mut sender = envelope(&server.url).await;
    send_text(
        &mut sender,
        r#"{"id":1,"message":"m","tags":{"language":"FR"}}"#,
    )
    .await;
    assert_eq!(recv_json(&mut sender).await["delivered"], 1);
}

async fn closed_with(server: &TestServer, frame: &str) -> (u16, String) {
    let mut ws = raw(&server.url).await;
    send_text(&mut ws, frame).await;
    recv_close(&mut ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_close_raw_senders_with_1007_naming_the_problem() {
    let server = TestServer::start().await;
    for (frame, needle) in [
        (r#"{"tags":{}}"#, "The 'message' property is mandatory !"),
        (
            r#"{"message":null}"#,
            "The 'message' property is mandatory !",
        ),
        (r#"{"message":"x","color":"red"}"#, "'color'"),
        (r#"{"message":"x","id":1}"#, "'id'"),
        (r#"{"message":"x","tags":{"lang":false}}"#, "\"lang\""),
        (r#"{"message":"x","tags":"FR"}"#, "tags"),
        (r#"{"message":"x","metadata":5}"#, "'metadata'"),
        (r#"{"message":"x""#, "JSON"),
        (r#"["message"]"#, "object"),
    ] {
        let (code, reason) = closed_with(&server, frame).await;
        assert_eq!(code, 1007, "{frame}");
        assert!(reason.contains(needle), "{frame}: {reason}");
        assert!(reason.len() <= 123);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_error_is_cut_to_fit_the_close_reason() {
    let server = TestServer::start().await;
    let name = "p".repeat(300);
    let (code, reason) = closed_with(&server, &format!(r#"{{"message":"x","{name}":1}}"#)).await;
    assert_eq!(code, 1007);
    assert!(
        reason.len() <= 123 && reason.contains("unknown property"),
        "{reason}"
    );
}
