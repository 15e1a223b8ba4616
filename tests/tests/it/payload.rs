//! What a recipient receives (PROTOCOL.md §4) and the message parsing modes of §3.

use serde::{Deserialize, Serialize};
use tagcast_server::{Config, MessageMode, Server};

use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_recipients_get_exactly_the_json_of_message() {
    let server = TestServer::start().await;
    let mut r = raw(&server.url).await;
    send_text(
        &mut r,
        r#"{"message":"Hello \"you\"","tags":{},"metadata":{"note":"never forwarded"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut r).await, r#""Hello \"you\"""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_mode_refuses_other_messages_with_the_original_text() {
    let server = TestServer::start().await;
    let mut sender = raw(&server.url).await;
    let mut other = raw(&server.url).await;
    server.wait_connections(2).await;
    send_text(&mut sender, r#"{"message":{"messageProperty1":"Hello !"}}"#).await;
    let (code, reason) = recv_close(&mut sender).await;
    assert_eq!(code, 1007);
    assert!(
        reason.starts_with("The 'message' property is not a string"),
        "{reason}"
    );
    // Nobody else notices.
    assert_nothing_before_marker(&mut other, server.addr, serde_json::json!({})).await;
    send_text(&mut other, r#"{"message":"still here"}"#).await;
    assert_eq!(recv_text(&mut other).await, r#""still here""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_forwards_any_value_compactly() {
    let server = TestServer::with_config(Config {
        messages: MessageMode::Json,
        ..Config::default()
    })
    .await;
    let mut r = raw(&server.url).await;
    for (sent, got) in [
        (
            r#"{"b": 1, "a": [true, null]}"#,
            r#"{"b":1,"a":[true,null]}"#,
        ),
        ("42", "42"),
        (r#""text""#, r#""text""#),
        ("false", "false"),
    ] {
        send_text(&mut r, &format!(r#"{{"message": {sent}}}"#)).await;
        assert_eq!(recv_text(&mut r).await, got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_refuses_invalid_messages_naming_the_path() {
    let schema = temp_file(
        "schema.json",
        r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#,
    );
    let server = TestServer::with_config(Config {
        messages: MessageMode::Schema(schema),
        ..Config::default()
    })
    .await;
    let mut ok = raw(&server.url).await;
    send_text(&mut ok, r#"{"message":{"text":"hi"}}"#).await;
    assert_eq!(recv_json(&mut ok).await, serde_json::json!({"text":"hi"}));
    let mut bad = envelope(&server.url).await;
    send_text(&mut bad, r#"{"id":"s","message":{"text":5}}"#).await;
    let error = recv_json(&mut bad).await;
    assert_eq!(error["code"], "bad_request");
    assert!(
        error["error"].as_str().unwrap().contains("message/text"),
        "{error}"
    );
}

#[test]
fn a_bad_schema_file_stops_the_server_at_start() {
    let schema = temp_file("schema.json", r#"{"type": 12}"#);
    let err = Server::builder()
        .config(Config {
            messages: MessageMode::Schema(schema.clone()),
            ..Config::default()
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains(&schema.display().to_string()), "{err}");
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MyMessage {
    message_property1: String,
    #[serde(default)]
    priority: u8,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_typed_parser_checks_and_normalizes_messages() {
    let server = TestServer::with_builder(
        Server::builder().message_parser(tagcast::TypedParser::<MyMessage>::new()),
    )
    .await;
    let mut r = raw(&server.url).await;
    send_text(&mut r, r#"{"message":{"messageProperty1":"Hello !"}}"#).await;
    assert_eq!(
        recv_text(&mut r).await,
        r#"{"messageProperty1":"Hello !","priority":0}"#
    );
    send_text(&mut r, r#"{"message":{"messageProperty2":"x"}}"#).await;
    let (code, reason) = recv_close(&mut r).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("messageProperty2"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_refused_like_invalid_requests() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let mut r = raw(&server.url).await;
    r.send(Message::binary(b"{\"message\":\"x\"}".to_vec()))
        .await
        .unwrap();
    assert_eq!(recv_close(&mut r).await.0, 1007);
    let mut e = envelope(&server.url).await;
    e.send(Message::binary(b"x".to_vec())).await.unwrap();
    let error = recv_json(&mut e).await;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["id"], serde_json::Value::Null);
}
