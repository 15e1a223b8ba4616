//! Changing tags on an open connection (PROTOCOL.md §13): the retag command, its answer, and
//! its ordering under a continuous publisher.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retags_are_refused_and_the_tags_stay() {
    let server = TestServer::start().await;
    let (mut ws, _) = envelope_at(&server.url_with_tags(r#"{"room":1}"#)).await;
    for (frame, code, names) in [
        (
            json!({"type":"retag","id":1,"tags":[1]}),
            "bad_request",
            "tags",
        ),
        (json!({"type":"retag","id":2}), "bad_request", "tags"),
        (
            json!({"type":"retag","id":3,"tags":{},"extra":1}),
            "bad_request",
            "extra",
        ),
        (json!({"type":"join","id":4}), "bad_request", "join"),
    ] {
        send_text(&mut ws, &frame.to_string()).await;
        let answer = recv_json(&mut ws).await;
        assert_eq!(
            (&answer["type"], &answer["code"]),
            (&json!("error"), &json!(code))
        );
        assert_eq!(answer["id"], frame["id"]);
        let text = answer["error"].as_str().unwrap();
        assert!(text.contains(names), "{text} should name {names}");
    }
    server.wait_connections(1).await;
    let answer = http_post(
        server.addr,
        "/publish",
        r#"{"message":"still","tags":{"room":1}}"#,
    )
    .await;
    assert_eq!(answer.body.trim(), r#"{"delivered":1}"#);
    assert_eq!(recv_message(&mut ws).await.0["message"], "still");
}

fn number(message: &Value) -> u64 {
    message
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{message}"))
}

/// A publisher alternates rooms 1 (even) and 2 (odd) without pause; the client moves from room
/// 1 to room 2. Before the `tags` answer it gets only room 1's, after it only room 2's, and
/// none is missing on either side of the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_answer_use_the_old_tags_and_after_it_the_new() {
    let server = TestServer::start().await;
    let (mut ws, _) = envelope_at(&server.url_with_tags(r#"{"room":1}"#)).await;
    let mut publisher = raw(&server.url).await;
    server.wait_connections(2).await;
    let moved = Arc::new(AtomicBool::new(false));
    let sending = {
        let moved = moved.clone();
        tokio::spawn(async move {
            // Until the client has moved, then 400 more, then a last one for room 2.
            let mut more = 400;
            let mut i = 0u64;
            while more > 0 {
                let room = 1 + i % 2;
                let request = format!(r#"{{"message":"{i}","tags":{{"room":{room}}}}}"#);
                send_text(&mut publisher, &request).await;
                i += 1;
                if moved.load(Ordering::Acquire) {
                    more -= 1;
                }
            }
            send_text(&mut publisher, r#"{"message":"end","tags":{"room":2}}"#).await;
        })
    };
    let mut before = Vec::new();
    // Let some of room 1's arrive, then move.
    while before.len() < 200 {
        let (frame, _) = recv_message(&mut ws).await;
        before.push(number(&frame["message"]));
    }
    send_text(&mut ws, r#"{"type":"retag","id":"move","tags":{"room":2}}"#).await;
    let mut after = Vec::new();
    loop {
        let frame: Value = recv_json(&mut ws).await;
        match frame["type"].as_str() {
            Some("tags") => {
                assert_eq!(
                    (&frame["id"], &frame["tags"]),
                    (&json!("move"), &json!({"room": 2}))
                );
                moved.store(true, Ordering::Release);
            }
            Some("message") if frame["message"] == "end" => break,
            Some("message") if moved.load(Ordering::Acquire) => {
                after.push(number(&frame["message"]))
            }
            Some("message") => before.push(number(&frame["message"])),
            _ => panic!("unexpected {frame}"),
        }
    }
    sending.await.unwrap();
    assert!(
        before.iter().all(|i| i % 2 == 0),
        "room 2's before the answer"
    );
    assert!(
        after.iter().all(|i| i % 2 == 1),
        "room 1's after the answer"
    );
    let expected_before: Vec<u64> = (0..before.len() as u64).map(|k| 2 * k).collect();
    assert_eq!(before, expected_before, "room 1's in order, none missing");
    assert!(after.len() >= 100, "only {} after the move", after.len());
    let first_after = after[0];
    let expected_after: Vec<u64> = (0..after.len() as u64)
        .map(|k| first_after + 2 * k)
        .collect();
    assert_eq!(after, expected_after, "room 2's in order, none missing");
    // The cut c: every request before it was matched against room 1, every one from it on
    // against room 2. So room 1's last is c-1 or c-2, room 2's first c or c+1: nothing in
    // between was lost.
    let last_before = *before.last().unwrap();
    assert!(
        [1, 3].contains(&first_after.abs_diff(last_before)) && first_after > last_before,
        "{last_before} then {first_after}"
    );
}
