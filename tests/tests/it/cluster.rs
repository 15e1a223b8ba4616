//! Clusters through a real Redis (PROTOCOL.md §10): delivery on every node exactly once, the
//! sender's order across nodes, refusals while Redis is down and recovery after, and clusters
//! isolated by channel.

use std::time::Duration;

use serde_json::json;
use tagcast_server::{Config, Server};

use super::util::*;

async fn node(redis: &RedisServer, channel: &str) -> TestServer {
    TestServer::with_config(Config {
        redis: Some(redis.url()),
        redis_channel: channel.to_owned(),
        ..Config::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_matching_clients_on_every_node_exactly_once() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        node(&redis, "tagcast").await,
        node(&redis, "tagcast").await,
        node(&redis, "tagcast").await,
    );
    let mut a_fr = raw(&a.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut b_fr = raw(&b.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut c_fr = raw(&c.url_with_tags(r#"{"language":"FR","user":7}"#)).await;
    let mut c_en = raw(&c.url_with_tags(r#"{"language":"EN"}"#)).await;
    let mut sender = envelope(&a.url).await;
    a.wait_connections(2).await;
    b.wait_connections(1).await;
    c.wait_connections(2).await;

    send_text(
        &mut sender,
        r#"{"id":1,"message":"Bonjour","tags":{"language":"FR"}}"#,
    )
    .await;
    // `delivered` counts this node's recipients only.
    assert_eq!(
        recv_json(&mut sender).await,
        json!({"type":"ack","id":1,"delivered":1})
    );
    for ws in [&mut a_fr, &mut b_fr, &mut c_fr] {
        assert_eq!(recv_text(ws).await, r#""Bonjour""#);
    }
    // Exactly once: nothing more arrives, and EN never hears it.
    for ws in [&mut a_fr, &mut b_fr, &mut c_fr, &mut c_en] {
        assert_silent(ws).await;
    }

    // Published over HTTP on node B, envelope recipients on C get the tags too.
    let mut c_env = envelope(&c.url_with_tags(r#"{"language":"EN"}"#)).await;
    c.wait_connections(3).await;
    let answer = http_post(
        b.addr,
        "/publish",
        r#"{"message":"Hello","tags":{"language":"EN"}}"#,
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":0}"#)
    );
    assert_eq!(recv_text(&mut c_en).await, r#""Hello""#);
    assert_eq!(
        recv_message(&mut c_env).await.0,
        json!({"type":"message","message":"Hello","tags":{"language":"EN"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_order_holds_across_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "order").await, node(&redis, "order").await);
    let mut far = raw(&b.url_with_tags(r#"{"g":1}"#)).await;
    let mut near = raw(&a.url_with_tags(r#"{"g":1}"#)).await;
    let mut sender = raw(&a.url).await;
    b.wait_connections(1).await;
    a.wait_connections(2).await;
    for i in 0..300 {
        send_text(
            &mut sender,
            &format!(r#"{{"message":"{i}","tags":{{"g":1}}}}"#),
        )
        .await;
    }
    for ws in [&mut far, &mut near] {
        for i in 0..300 {
            assert_eq!(recv_text(ws).await, format!(r#""{i}""#));
        }
    }
}

/// Polls `/healthz` until it answers `status`.
async fn wait_health(server: &TestServer, status: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if http_get(server.addr, "/healthz", "").await.status == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_while_redis_is_down_and_served_again_after() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis, "outage").await, node(&redis, "outage").await);
    let mut listener = raw(&b.url_with_tags(r#"{"g":1}"#)).await;
    let mut sender = envelope(&a.url).await;
    b.wait_connections(1).await;
    a.wait_connections(1).await;
    assert_eq!(http_get(a.addr, "/healthz", "").await.status, 200);

    redis.kill();
    wait_health(&a, 503, WAIT).await;
    wait_health(&b, 503, WAIT).await;

    // Envelope: `unavailable`, and the connection stays open.
    send_text(&mut sender, r#"{"id":1,"message":"lost?","tags":{"g":1}}"#).await;
    let error = recv_json(&mut sender).await;
    assert_eq!(
        (error["id"].clone(), error["code"].clone()),
        (json!(1), json!("unavailable"))
    );
    // HTTP: 503 with a JSON error.
    let answer = http_post(a.addr, "/publish", r#"{"message":"x"}"#).await;
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("\"error\""), "{}", answer.body);
    // Raw: closed with 1013 `cluster unavailable`.
    let mut raw_sender = raw(&a.url).await; // connections may still open
    send_text(&mut raw_sender, r#"{"message":"x"}"#).await;
    assert_eq!(
        recv_close(&mut raw_sender).await,
        (1013, "cluster unavailable".to_owned())
    );
    // Nothing refused was delivered.
    assert_silent(&mut listener).await;

    redis.restart();
    wait_health(&a, 200, Duration::from_secs(15)).await;
    wait_health(&b, 200, Duration::from_secs(15)).await;
    send_text(&mut sender, r#"{"id":2,"message":"back","tags":{"g":1}}"#).await;
    assert_eq!(recv_json(&mut sender).await["type"], "ack");
    assert_eq!(recv_text(&mut listener).await, r#""back""#);

    let metrics = http_get(a.addr, "/metrics", "").await.body;
    assert_eq!(sample(&metrics, "tagcast_bus_up"), 1.0);
    assert_eq!(sample(&metrics, "tagcast_bus_reconnects_total"), 1.0);
    // The envelope, HTTP and raw refusals while Redis was down.
    assert_eq!(
        sample(
            &metrics,
            r#"tagcast_requests_rejected_total{reason="unavailable"}"#
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_on_one_redis_are_isolated_by_channel() {
    let redis = RedisServer::start();
    let (one_a, one_b, two) = (
        node(&redis, "one").await,
        node(&redis, "one").await,
        node(&redis, "two").await,
    );
    let mut on_one = raw(&one_b.url_with_tags(r#"{"g":1}"#)).await;
    let mut on_two = raw(&two.url_with_tags(r#"{"g":1}"#)).await;
    one_b.wait_connections(1).await;
    two.wait_connections(1).await;
    // The nodes are up as soon as they started: the first request is never refused.
    let answer = http_post(
        one_a.addr,
        "/publish",
        r#"{"message":"for one","tags":{"g":1}}"#,
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":0}"#)
    );
    assert_eq!(recv_text(&mut on_one).await, r#""for one""#);
    assert_silent(&mut on_two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_configuration_error_at_start() {
    let url = unreachable_redis_url();
    let server = Server::builder()
        .config(Config {
            redis: Some(url.clone()),
            ..Config::default()
        })
        .build()
        .unwrap();
    let err = server.connect_cluster().await.unwrap_err().to_string();
    assert!(
        err.contains(&url) && err.contains("cannot reach Redis"),
        "{err}"
    );
    let err = Server::builder()
        .config(Config {
            redis: Some("http://nope".into()),
            ..Config::default()
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("--redis"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_requests_as_soon_as_it_has_started() {
    let redis = RedisServer::start();
    for round in 0..5 {
        let node = node(&redis, &format!("start{round}")).await;
        // No wait of any kind: the first request right after the start is carried.
        let answer = http_post(node.addr, "/publish", r#"{"message":"first"}"#).await;
        assert_eq!(
            (answer.status, answer.body.trim()),
            (200, r#"{"delivered":0}"#),
            "round {round}"
        );
        assert_eq!(http_get(node.addr, "/healthz", "").await.status, 200);
        node.stop().await;
    }
}
