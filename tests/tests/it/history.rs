//! History and resume on a lone node (PROTOCOL.md §11): positions, the replay of what a
//! connection missed, whether it is whole (`recovered`), and no gap or duplicate between replay
//! and live under a continuous publisher.

use std::time::Duration;

use serde_json::{json, Value};
use tagcast_server::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::util::*;

/// Reads what a resuming connection gets: the replayed messages, then its `resumed` frame.
async fn recv_replay(ws: &mut Ws) -> (Vec<(Value, String)>, Value) {
    let mut replayed = Vec::new();
    loop {
        let mut frame = recv_json(ws).await;
        if frame["type"] == "resumed" {
            return (replayed, frame);
        }
        assert_eq!(frame["type"], "message", "{frame}");
        let pos = frame.as_object_mut().unwrap().remove("pos").unwrap();
        replayed.push((frame["message"].clone(), pos.as_str().unwrap().to_owned()));
    }
}

async fn publish(server: &TestServer, message: &str, tags: Value) {
    let body = json!({ "message": message, "tags": tags }).to_string();
    let answer = http_post(server.addr, "/publish", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

fn resume_url(server: &TestServer, tags: &str, since: &str) -> String {
    format!("{}&since={}", server.url_with_tags(tags), encode(since))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_increasing_positions_after_a_first_cursor() {
    let server = TestServer::start().await;
    let (mut ws, start) = envelope_at(&server.url_with_tags(r#"{"room":1}"#)).await;
    server.wait_connections(1).await;
    let mut last = start.clone();
    for i in 0..3 {
        publish(&server, &format!("m{i}"), json!({"room": 1})).await;
        let (frame, pos) = recv_message(&mut ws).await;
        assert_eq!(frame["message"], format!("m{i}"));
        assert_ne!(pos, last);
        last = pos;
    }
    // A new connection's cursor is the last routed position.
    let (_other, cursor) = envelope_at(&server.url).await;
    assert_eq!(cursor, last);
    // Raw connections see no positions at all.
    let mut raw_ws = raw(&server.url_with_tags(r#"{"room":1}"#)).await;
    server.wait_connections(3).await;
    publish(&server, "plain", json!({"room": 1})).await;
    assert_eq!(recv_text(&mut raw_ws).await, r#""plain""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_gets_what_it_missed_then_live_messages() {
    let server = TestServer::start().await;
    let (mut ws, _) = envelope_at(&server.url_with_tags(r#"{"room":1,"user":7}"#)).await;
    server.wait_connections(1).await;
    publish(&server, "seen", json!({"room": 1})).await;
    let (_, seen_at) = recv_message(&mut ws).await;
    ws.close(None).await.unwrap();
    server.wait_connections(0).await;

    publish(&server, "missed 1", json!({"room": 1})).await;
    publish(&server, "other room", json!({"room": 2})).await;
    publish(&server, "missed 2", json!({"user": 7})).await;

    let url = resume_url(&server, r#"{"room":1,"user":7}"#, &seen_at);
    let (mut ws, cursor) = envelope_at(&url).await;
    let (replayed, resumed) = recv_replay(&mut ws).await;
    let messages: Vec<&Value> = replayed.iter().map(|(m, _)| m).collect();
    assert_eq!(messages, [&json!("missed 1"), &json!("missed 2")]);
    assert_eq!(
        resumed,
        json!({"type":"resumed","recovered":true,"missed":2})
    );
    // The cursor sent first is the last routed position, the replay's last one.
    assert_eq!(replayed.last().unwrap().1, cursor);
    publish(&server, "live", json!({"room": 1})).await;
    let (frame, _) = recv_message(&mut ws).await;
    assert_eq!(frame["message"], "live");

    // Resuming from the latest position replays nothing, and says so.
    let (_, latest) = recv_replay_after(&server, &cursor).await;
    assert_eq!(
        latest,
        json!({"type":"resumed","recovered":true,"missed":1})
    );
}

/// Resumes a `{"room":1,"user":7}` connection from `since` and returns its replay.
async fn recv_replay_after(server: &TestServer, since: &str) -> (Vec<(Value, String)>, Value) {
    let url = resume_url(server, r#"{"room":1,"user":7}"#, since);
    let (mut ws, _) = envelope_at(&url).await;
    recv_replay(&mut ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_the_history_is_not_recovered() {
    let server = TestServer::with_config(Config {
        history: 2,
        ..Config::default()
    })
    .await;
    let (_ws, start) = envelope_at(&server.url).await;
    for i in 0..4 {
        publish(&server, &format!("m{i}"), json!({})).await;
    }
    let url = format!("{}/?since={}", server.url, encode(&start));
    let (mut ws, _) = envelope_at(&url).await;
    let (replayed, resumed) = recv_replay(&mut ws).await;
    let messages: Vec<&Value> = replayed.iter().map(|(m, _)| m).collect();
    assert_eq!(messages, [&json!("m2"), &json!("m3")]);
    assert_eq!(
        resumed,
        json!({"type":"resumed","recovered":false,"missed":2})
    );

    let metrics = http_get(server.addr, "/metrics", "").await.body;
    assert_eq!(sample(&metrics, "tagcast_history_requests"), 2.0);
    assert!(sample(&metrics, "tagcast_history_bytes") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_are_not_replayed_and_not_recovered() {
    let server = TestServer::with_config(Config {
        history_ttl: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let (_ws, start) = envelope_at(&server.url).await;
    publish(&server, "gone", json!({})).await;
    let url = format!("{}/?since={}", server.url, encode(&start));
    let (mut ws, _) = envelope_at(&url).await;
    let (replayed, resumed) = recv_replay(&mut ws).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        resumed,
        json!({"type":"resumed","recovered":false,"missed":0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_from_before_a_restart_is_not_recovered() {
    let before = TestServer::start().await;
    let (_ws, old) = envelope_at(&before.url).await;
    before.stop().await;

    let after = TestServer::start().await;
    publish(&after, "since the restart", json!({})).await;
    let url = format!("{}/?since={}", after.url, encode(&old));
    let (mut ws, _) = envelope_at(&url).await;
    let (replayed, resumed) = recv_replay(&mut ws).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].0, "since the restart");
    assert_eq!(
        resumed,
        json!({"type":"resumed","recovered":false,"missed":1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_must_be_a_position_and_needs_the_envelope() {
    let server = TestServer::start().await;
    let mut request = format!("{}/?since={}", server.url, encode("a b"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tagcast.v1"),
    );
    let (status, body) = refused_request(request).await;
    assert_eq!(status, 400);
    assert!(body.contains("'since' must be a position"), "{body}");
    // A raw connection cannot resume.
    let (status, body) = refused(&format!("{}/?since=abc.1", server.url)).await;
    assert_eq!(status, 400);
    assert!(body.contains("tagcast.v1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_there_are_no_positions_and_resume_says_so() {
    let server = TestServer::with_config(Config {
        history: 0,
        ..Config::default()
    })
    .await;
    let mut ws = envelope_bare(&server.url).await;
    server.wait_connections(1).await;
    publish(&server, "hi", json!({})).await;
    // The first frame is the message itself, without a position.
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type":"message","message":"hi","tags":{}})
    );
    let mut resumed = envelope_bare(&format!("{}/?since=abc.1", server.url)).await;
    assert_eq!(
        recv_json(&mut resumed).await,
        json!({"type":"resumed","recovered":false,"missed":0})
    );
}

/// Clients drop and resume over and over while a publisher sends without pause: each ends
/// with every message exactly once, in order, and every resume is recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_under_a_continuous_publisher_lose_and_repeat_nothing() {
    const MESSAGES: usize = 1500;
    // The publisher never runs more than this far ahead of the slowest client, so on a loaded
    // machine too the clients resume while it publishes (and a replay is never everything).
    const AHEAD: usize = 100;
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    let progress: std::sync::Arc<[std::sync::atomic::AtomicUsize; 3]> = std::sync::Arc::default();
    for c in 0..3usize {
        let (ws, start) = envelope_at(&server.url_with_tags(r#"{"g":1}"#)).await;
        let url = server.url_with_tags(r#"{"g":1}"#);
        let progress = progress.clone();
        clients.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut last = start;
            let mut got: Vec<usize> = Vec::new();
            let mut resumes = 0;
            // Each client drops its connection after a different number of messages, so it
            // resumes about MESSAGES / budget times whatever the timing.
            let mut budget = 20 + 15 * c;
            while got.last() != Some(&(MESSAGES - 1)) {
                if budget == 0 {
                    ws.close(None).await.unwrap();
                    let (next, _) = envelope_at(&format!("{url}&since={}", encode(&last))).await;
                    ws = next;
                    let (replayed, resumed) = recv_replay(&mut ws).await;
                    assert_eq!(resumed["recovered"], true, "{resumed}");
                    assert_eq!(resumed["missed"], replayed.len(), "{resumed}");
                    // Replayed messages count too: the number of resumes does not depend on
                    // how far the publisher got meanwhile.
                    budget = (20 + 15 * c).saturating_sub(replayed.len()).max(1);
                    for (message, pos) in replayed {
                        got.push(message.as_str().unwrap().parse().unwrap());
                        last = pos;
                    }
                    resumes += 1;
                    progress[c].store(got.len(), std::sync::atomic::Ordering::Release);
                    continue;
                }
                let (frame, pos) = recv_message(&mut ws).await;
                got.push(frame["message"].as_str().unwrap().parse().unwrap());
                last = pos;
                budget -= 1;
                progress[c].store(got.len(), std::sync::atomic::Ordering::Release);
            }
            (got, resumes)
        }));
    }
    server.wait_connections(3).await;
    let mut publisher = raw(&server.url).await;
    for i in 0..MESSAGES {
        // Without a pause while the clients keep up: a condition, not a sleep, holds it back.
        let slowest = || {
            progress
                .iter()
                .map(|p| p.load(std::sync::atomic::Ordering::Acquire))
                .min()
                .unwrap_or(0)
        };
        while i > slowest() + AHEAD {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        send_text(
            &mut publisher,
            &format!(r#"{{"message":"{i}","tags":{{"g":1}}}}"#),
        )
        .await;
    }
    for client in clients {
        let (got, resumes) = client.await.unwrap();
        if let Some(i) = (0..MESSAGES).find(|&i| got.get(i) != Some(&i)) {
            panic!(
                "message {i} is missing, repeated or out of order: got {:?} there",
                &got[i.saturating_sub(2)..(i + 3).min(got.len())]
            );
        }
        assert_eq!(got.len(), MESSAGES, "messages after the last");
        assert!(resumes >= 3, "only {resumes} resumes");
    }
}
