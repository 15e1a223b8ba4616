//! Envelope mode (`tagcast.v1`, PROTOCOL.md §6): deliveries with tags, acks, error frames that
//! keep the connection open; raw clients unaffected.

use serde_json::{json, Value};

use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_the_request_tags_and_acks_count_recipients() {
    let server = TestServer::start().await;
    let mut env_fr = envelope(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut raw_fr = raw(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut sender = envelope(&server.url).await;
    server.wait_connections(3).await;

    send_text(
        &mut sender,
        r#"{"id":7,"message":"Bonjour","tags":{"language":"FR"}}"#,
    )
    .await;
    assert_eq!(
        recv_json(&mut sender).await,
        json!({"type":"ack","id":7,"delivered":2})
    );
    assert_eq!(
        recv_message(&mut env_fr).await.0,
        json!({"type":"message","message":"Bonjour","tags":{"language":"FR"}})
    );
    assert_eq!(recv_text(&mut raw_fr).await, r#""Bonjour""#);

    // String ids are echoed; no id, no ack.
    send_text(
        &mut sender,
        r#"{"id":"abc","message":"x","tags":{"language":"EN"}}"#,
    )
    .await;
    assert_eq!(
        recv_json(&mut sender).await,
        json!({"type":"ack","id":"abc","delivered":0})
    );
    // No id, no ack: the first frame after it is the ack of the next request.
    send_text(&mut sender, r#"{"message":"x","tags":{"language":"EN"}}"#).await;
    send_text(
        &mut sender,
        r#"{"id":2,"message":"y","tags":{"language":"EN"}}"#,
    )
    .await;
    assert_eq!(
        recv_json(&mut sender).await,
        json!({"type":"ack","id":2,"delivered":0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_frames_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut ws = envelope(&server.url).await;
    for (frame, id) in [
        (r#"{"id":1,"tags":{}}"#, json!(1)),
        (r#"{"id":"two","message":{"not":"a string"}}"#, json!("two")),
        (r#"{"id":3,"message":"x","extra":true}"#, json!(3)),
        (r#"{"id":4.5,"message":"x"}"#, Value::Null),
        (r#"not json"#, Value::Null),
        (r#"[1,2]"#, Value::Null),
    ] {
        send_text(&mut ws, frame).await;
        let error = recv_json(&mut ws).await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["id"], id, "{frame}");
        assert_eq!(error["code"], "bad_request", "{frame}");
        assert!(!error["error"].as_str().unwrap().is_empty());
    }
    send_text(&mut ws, r#"{"id":5,"message":"still open"}"#).await;
    let mut got = [recv_json(&mut ws).await, recv_json(&mut ws).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_owned());
    assert_eq!(got[0], json!({"type":"ack","id":5,"delivered":1}));
    assert_eq!(got[1]["message"], "still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mandatory_message_text_is_kept_in_envelope_errors() {
    let server = TestServer::start().await;
    let mut ws = envelope(&server.url).await;
    send_text(&mut ws, r#"{"id":1,"message":null}"#).await;
    let error = recv_json(&mut ws).await;
    assert_eq!(error["error"], "The 'message' property is mandatory !");
}
