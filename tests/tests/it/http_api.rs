//! The HTTP API on the WebSocket port (PROTOCOL.md §7): `POST /publish` (one request or a
//! batch), its statuses and JSON errors, and `GET /metrics`.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tagcast_server::Config;
use tokio_tungstenite::tungstenite::Message;

use super::util::*;

fn body(answer: &HttpAnswer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{}: {e}", answer.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_delivers_one_request_and_echoes_its_id() {
    let server = TestServer::start().await;
    let mut fr = raw(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut en = raw(&server.url_with_tags(r#"{"language":"EN"}"#)).await;
    server.wait_connections(2).await;

    let answer = http_post(
        server.addr,
        "/publish",
        r#"{"message":"Bonjour","tags":{"language":"FR"}}"#,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(body(&answer), json!({"delivered": 1}));
    assert_eq!(recv_text(&mut fr).await, r#""Bonjour""#);
    assert_nothing_before_marker(&mut en, server.addr, json!({"language": "EN"})).await;

    let answer = http_post(server.addr, "/publish", r#"{"id":"x-1","message":"all"}"#).await;
    assert_eq!(body(&answer), json!({"delivered": 2, "id": "x-1"}));
}

/// A connection is in the registry before its 101 is sent: a publish that starts once the
/// client's handshake completed reaches it, without waiting for anything else (raw and
/// envelope connections, with the default history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_the_handshake_reaches_the_new_connection() {
    let server = TestServer::start().await;
    for n in 0..20 {
        let tags = json!({ "n": n });
        let url = server.url_with_tags(&tags.to_string());
        let (mut ws, envelope) = match n % 2 {
            0 => (raw(&url).await, false),
            _ => (envelope_bare(&url).await, true),
        };
        let request = json!({ "message": format!("right after {n}"), "tags": tags });
        let answer = http_post(server.addr, "/publish", &request.to_string()).await;
        assert_eq!(
            (answer.status, body(&answer)),
            (200, json!({"delivered": 1})),
            "{n}"
        );
        let text = match envelope {
            false => recv_text(&mut ws).await,
            true => loop {
                // The position comes first with the history on.
                let frame = recv_json(&mut ws).await;
                if frame["type"] == "message" {
                    break frame["message"].to_string();
                }
            },
        };
        assert_eq!(text, format!("\"right after {n}\""), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_400_with_a_json_error_naming_the_problem() {
    let server = TestServer::start().await;
    for (request, needle) in [
        ("{not json", "JSON"),
        (r#"{"tags":{}}"#, "The 'message' property is mandatory !"),
        (r#"{"message":{"a":1}}"#, "is not a string"),
        (r#"{"message":"x","tags":{"n":1.5}}"#, "\"n\""),
        (r#"{"message":"x","colour":"red"}"#, "'colour'"),
        (r#""just a string""#, "object"),
    ] {
        let answer = http_post(server.addr, "/publish", request).await;
        assert_eq!(answer.status, 400, "{request}");
        let error = body(&answer)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(needle), "{request}: {error}");
    }
    let answer = http_post(server.addr, "/publish", r#"{"id":7,"message":null}"#).await;
    assert_eq!(answer.status, 400);
    assert_eq!(body(&answer)["id"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_applies_the_send_rules_of_auth() {
    let server = TestServer::with_config(Config {
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open: false,
        ..Config::default()
    })
    .await;
    let answer = http_post(server.addr, "/publish", r#"{"message":"x"}"#).await;
    assert_eq!(answer.status, 401);
    assert!(body(&answer)["error"].as_str().unwrap().contains("key"));
    let wrong =
        format!(r#"{{"message":"x","metadata":{{"key":"application2","secret":"{SECRET1}"}}}}"#);
    assert_eq!(http_post(server.addr, "/publish", &wrong).await.status, 401);
    let right =
        format!(r#"{{"message":"x","metadata":{{"key":"application2","secret":"{SECRET2}"}}}}"#);
    let answer = http_post(server.addr, "/publish", &right).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(body(&answer), json!({"delivered": 0}));
    assert!(!answer.body.contains(SECRET2));

    // A bearer key on a server without --api-key opens nothing, and the 401 says why.
    let answer = http_request(
        server.addr,
        "POST",
        "/publish",
        "Authorization: Bearer some-key\r\n",
        br#"{"message":"x"}"#,
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        body(&answer)["error"],
        "this server has no --api-key, so the Authorization header opens nothing; \
         sending requires the 'key' and 'secret' of an application in 'metadata'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_in_order_and_delivered_in_order() {
    let server = TestServer::start().await;
    let mut fr = raw(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    server.wait_connections(1).await;
    let batch = r#"[
        {"id": 1, "message": "one", "tags": {"language": "FR"}},
        {"id": 2, "message": 2},
        {"message": "three", "tags": {"language": "EN"}},
        {"id": "four", "message": "four"}
    ]"#;
    let answer = http_post(server.addr, "/publish", batch).await;
    assert_eq!(answer.status, 200);
    let results = body(&answer)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], json!({"id": 1, "delivered": 1}));
    assert_eq!(results[1]["id"], 2);
    assert!(results[1]["error"]
        .as_str()
        .unwrap()
        .contains("not a string"));
    assert_eq!(results[2], json!({"delivered": 0}));
    assert_eq!(results[3], json!({"id": "four", "delivered": 1}));
    assert_eq!(recv_text(&mut fr).await, r#""one""#);
    assert_eq!(recv_text(&mut fr).await, r#""four""#);

    let empty = http_post(server.addr, "/publish", "[]").await;
    assert_eq!((empty.status, body(&empty)), (200, json!({"results": []})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_bounded_by_max_message_bytes() {
    let server = TestServer::with_config(Config {
        max_message_bytes: 100,
        ..Config::default()
    })
    .await;
    // Exactly 100 bytes is accepted.
    let fill = 100 - r#"{"message":""}"#.len();
    let exact = format!(r#"{{"message":"{}"}}"#, "a".repeat(fill));
    assert_eq!(exact.len(), 100);
    assert_eq!(http_post(server.addr, "/publish", &exact).await.status, 200);
    let over = format!(r#"{{"message":"{}"}}"#, "a".repeat(fill + 1));
    let answer = http_post(server.addr, "/publish", &over).await;
    assert_eq!(answer.status, 413);
    assert!(body(&answer)["error"]
        .as_str()
        .unwrap()
        .contains("max-message-bytes"));
    let batch = format!(r#"[{{"message":"{}"}}]"#, "a".repeat(fill));
    assert_eq!(http_post(server.addr, "/publish", &batch).await.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_only_accepts_post() {
    let server = TestServer::start().await;
    assert_eq!(http_get(server.addr, "/publish", "").await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let server = TestServer::with_config(Config {
        max_connections: Some(3),
        queue_size: 2,
        ..Config::default()
    })
    .await;
    let before = http_get(server.addr, "/metrics", "").await;
    assert_eq!(before.status, 200);
    assert_eq!(sample(&before.body, "tagcast_connections"), 0.0);
    assert_eq!(sample(&before.body, "tagcast_deliveries_total"), 0.0);

    let mut a = raw(&server.url_with_tags(r#"{"g":1}"#)).await;
    let mut sender = envelope(&server.url).await;
    server.wait_connections(2).await;
    send_text(&mut sender, r#"{"id":1,"message":"m","tags":{"g":1}}"#).await;
    assert_eq!(recv_json(&mut sender).await["delivered"], 1);
    assert_eq!(recv_text(&mut a).await, r#""m""#);
    send_text(&mut sender, r#"{"id":2,"message":5}"#).await;
    assert_eq!(recv_json(&mut sender).await["code"], "bad_request");
    assert_eq!(refused(&server.url_with_tags("{bad")).await.0, 400);
    let answer = http_post(server.addr, "/publish", r#"{"message":"h","tags":{"g":1}}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(body(&answer), json!({"delivered": 1}));
    assert_eq!(recv_text(&mut a).await, r#""h""#);

    let after = http_get(server.addr, "/metrics", "").await.body;
    assert_eq!(sample(&after, "tagcast_connections"), 2.0);
    assert_eq!(sample(&after, "tagcast_deliveries_total"), 2.0);
    assert_eq!(
        sample(
            &after,
            r#"tagcast_requests_received_total{transport="websocket"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            r#"tagcast_requests_received_total{transport="http"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"tagcast_requests_rejected_total{reason="bad_request"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"tagcast_handshake_rejections_total{status="400"}"#
        ),
        1.0
    );
    assert!(sample(&after, "tagcast_received_bytes_total") > 0.0);
    assert!(sample(&after, "tagcast_sent_bytes_total") > 0.0);
    assert_eq!(sample(&after, "tagcast_routing_latency_seconds_count"), 2.0);

    // A slow consumer and the connection limit show up too.
    let slow = raw(&server.url_with_tags(r#"{"slow":1}"#)).await;
    server.wait_connections(3).await;
    assert_eq!(refused(&server.url).await.0, 503);
    let padding = "x".repeat(64 * 1024);
    for _ in 0..200 {
        let answer = http_post(
            server.addr,
            "/publish",
            &format!(r#"{{"message":"{padding}","tags":{{"slow":1}}}}"#),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        // 1 while the slow consumer is registered, 0 once it was dropped for falling behind.
        let delivered = body(&answer)["delivered"].clone();
        assert!(
            delivered == json!(1) || delivered == json!(0),
            "{}",
            answer.body
        );
        let text = http_get(server.addr, "/metrics", "").await.body;
        if sample(&text, "tagcast_slow_consumer_disconnects_total") == 1.0 {
            assert_eq!(
                sample(&text, r#"tagcast_handshake_rejections_total{status="503"}"#),
                1.0
            );
            drop(slow);
            return;
        }
    }
    panic!("the slow consumer was never counted");
}

/// Each `requests_rejected_total` reason and `handshake_rejections_total` status is counted
/// once per refusal (`unavailable` is counted in the cluster tests, where Redis goes down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_and_handshake_status_is_counted() {
    let server = TestServer::with_config(Config {
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open: false,
        max_connections: Some(1),
        rate_limit: Some(1),
        max_message_bytes: 256,
        ..Config::default()
    })
    .await;
    let key = format!("key=application1&secret={SECRET1}");
    // 401 and 400 while the one slot is free, then 503 once it is taken.
    assert_eq!(refused(&server.url).await.0, 401);
    assert_eq!(
        refused(&format!("{}/?{key}&tags=5", server.url)).await.0,
        400
    );
    let mut sender = envelope(&format!("{}/?{key}", server.url)).await;
    server.wait_connections(1).await;
    assert_eq!(refused(&format!("{}/?{key}", server.url)).await.0, 503);
    // In one write, so that no token comes back between them: bad_request (it spends the
    // burst of 1), then rate_limited twice.
    let creds = format!(r#""metadata":{{"key":"application1","secret":"{SECRET1}"}}"#);
    for frame in [
        format!(r#"{{"id":1,"message":5,{creds}}}"#),
        format!(r#"{{"id":2,"message":"m",{creds}}}"#),
        format!(r#"{{"id":3,"message":"m",{creds}}}"#),
    ] {
        sender.feed(Message::text(frame)).await.unwrap();
    }
    sender.flush().await.unwrap();
    let codes: Vec<Value> = vec![
        recv_json(&mut sender).await["code"].clone(),
        recv_json(&mut sender).await["code"].clone(),
        recv_json(&mut sender).await["code"].clone(),
    ];
    assert_eq!(
        codes,
        [
            json!("bad_request"),
            json!("rate_limited"),
            json!("rate_limited")
        ]
    );
    // unauthorized: /publish without credentials.
    assert_eq!(
        http_post(server.addr, "/publish", r#"{"message":"m"}"#)
            .await
            .status,
        401
    );
    // too_big: over --max-message-bytes on /publish.
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(300));
    assert_eq!(http_post(server.addr, "/publish", &big).await.status, 413);

    let metrics = http_get(server.addr, "/metrics", "").await.body;
    let rejected = |reason: &str| {
        sample(
            &metrics,
            &format!(r#"tagcast_requests_rejected_total{{reason="{reason}"}}"#),
        )
    };
    assert_eq!(rejected("bad_request"), 1.0);
    assert_eq!(rejected("rate_limited"), 2.0);
    assert_eq!(rejected("unauthorized"), 1.0);
    assert_eq!(rejected("too_big"), 1.0);
    assert_eq!(rejected("unavailable"), 0.0);
    for status in ["400", "401", "503"] {
        let series = format!(r#"tagcast_handshake_rejections_total{{status="{status}"}}"#);
        assert_eq!(sample(&metrics, &series), 1.0, "{status}");
    }
}
