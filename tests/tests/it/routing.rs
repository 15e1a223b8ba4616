//! Routing (PROTOCOL.md §3): AND semantics on tags, empty tags mean everyone, integers equal
//! their decimal text, the sender receives its own message, per-sender order.

use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_exactly_the_matching_connections() {
    let server = TestServer::start().await;
    let mut fr = raw(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut fr_user = raw(&server.url_with_tags(r#"{"language":"FR","user":42}"#)).await;
    let mut en = raw(&server.url_with_tags(r#"{"language":"EN"}"#)).await;
    let mut none = raw(&server.url).await;
    let mut sender = raw(&server.url_with_tags(r#"{"role":"backend"}"#)).await;
    server.wait_connections(5).await;

    send_text(
        &mut sender,
        r#"{"message":"Bonjour","tags":{"language":"FR"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut fr).await, r#""Bonjour""#);
    assert_eq!(recv_text(&mut fr_user).await, r#""Bonjour""#);
    // A marker to everyone, after it from the same sender: it is the first thing the others get.
    send_text(&mut sender, r#"{"message":"marker","tags":{}}"#).await;
    for ws in [&mut en, &mut none, &mut sender, &mut fr, &mut fr_user] {
        assert_eq!(recv_text(ws).await, r#""marker""#);
    }

    // AND: both pairs must match.
    send_text(
        &mut sender,
        r#"{"message":"Salut 42","tags":{"language":"FR","user":"42"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut fr_user).await, r#""Salut 42""#);
    send_text(
        &mut sender,
        r#"{"message":"FR marker","tags":{"language":"FR"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut fr).await, r#""FR marker""#);
    assert_eq!(recv_text(&mut fr_user).await, r#""FR marker""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tags_reach_everyone_including_the_sender() {
    let server = TestServer::start().await;
    let mut a = raw(&server.url_with_tags(r#"{"language":"FR"}"#)).await;
    let mut b = raw(&server.url).await;
    for tags in [None, Some("{}"), Some("[]"), Some("null")] {
        let frame = match tags {
            None => r#"{"message":"all"}"#.to_owned(),
            Some(t) => format!(r#"{{"message":"all","tags":{t}}}"#),
        };
        send_text(&mut b, &frame).await;
        assert_eq!(recv_text(&mut a).await, r#""all""#);
        assert_eq!(
            recv_text(&mut b).await,
            r#""all""#,
            "the sender matches too"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integer_tag_equals_its_decimal_text_only() {
    let server = TestServer::start().await;
    let mut user5 = raw(&server.url_with_tags(r#"{"user":5}"#)).await;
    let mut user5_text = raw(&server.url_with_tags(r#"{"user":"5"}"#)).await;
    let mut user05 = raw(&server.url_with_tags(r#"{"user":"05"}"#)).await;
    let mut sender = raw(&server.url_with_tags(r#"{"x":1}"#)).await;
    server.wait_connections(4).await;
    send_text(&mut sender, r#"{"message":"m","tags":{"user":"5"}}"#).await;
    assert_eq!(recv_text(&mut user5).await, r#""m""#);
    assert_eq!(recv_text(&mut user5_text).await, r#""m""#);
    send_text(
        &mut sender,
        r#"{"message":"05 marker","tags":{"user":"05"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut user05).await, r#""05 marker""#);
    send_text(&mut sender, r#"{"message":"n","tags":{"user":5}}"#).await;
    assert_eq!(recv_text(&mut user5).await, r#""n""#);
    assert_eq!(recv_text(&mut user5_text).await, r#""n""#);
    send_text(
        &mut sender,
        r#"{"message":"05 again","tags":{"user":"05"}}"#,
    )
    .await;
    assert_eq!(recv_text(&mut user05).await, r#""05 again""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_requests_arrive_in_order() {
    requests_arrive_in_order(true).await;
}

/// `--direct-writes false`: every frame goes through its recipient's queue, in order too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_requests_arrive_in_order_with_direct_writes_off() {
    requests_arrive_in_order(false).await;
}

/// 500 requests of one sender reach two recipients each, in order.
async fn requests_arrive_in_order(direct_writes: bool) {
    let server = TestServer::with_config(tagcast_server::Config {
        direct_writes,
        ..tagcast_server::Config::default()
    })
    .await;
    let mut r1 = raw(&server.url_with_tags(r#"{"g":1}"#)).await;
    let mut r2 = raw(&server.url_with_tags(r#"{"g":1,"h":2}"#)).await;
    let mut sender = raw(&server.url).await;
    server.wait_connections(3).await;
    const N: usize = 500;
    for i in 0..N {
        send_text(
            &mut sender,
            &format!(r#"{{"message":"{i}","tags":{{"g":1}}}}"#),
        )
        .await;
    }
    for r in [&mut r1, &mut r2] {
        for i in 0..N {
            assert_eq!(recv_text(r).await, format!(r#""{i}""#));
        }
    }
}

/// A quiet connection gets its frame written straight into its socket by the router; a busy
/// one gets it queued behind what its writer still holds, including the rest of a frame the
/// socket took only part of. Either way frames arrive whole and in order, at every size
/// around the frame header's length limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_frames_keep_their_order() {
    let server = TestServer::with_config(tagcast_server::Config {
        max_message_bytes: 4 << 20,
        ..tagcast_server::Config::default()
    })
    .await;
    let mut receiver = raw(&server.url_with_tags(r#"{"g":1}"#)).await;
    let mut sender = raw(&server.url).await;
    server.wait_connections(2).await;
    let mut expected = Vec::new();
    for round in 0..5 {
        // A quiet spell (over 20 ms): the next frame may be written directly.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for (i, size) in [1usize, 125, 126, 65_535, 65_536, 3_000_000, 10]
            .into_iter()
            .enumerate()
        {
            let text = format!("{round}-{i}-{}", "x".repeat(size));
            let request = serde_json::json!({ "message": text, "tags": { "g": 1 } });
            send_text(&mut sender, &request.to_string()).await;
            expected.push(text);
        }
    }
    // The receiver reads only now: meanwhile its socket filled up and writes were partial.
    for text in expected {
        assert_eq!(
            recv_text(&mut receiver).await,
            serde_json::to_string(&text).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_clients_stop_receiving_and_leave_the_index() {
    let server = TestServer::start().await;
    let a = raw(&server.url_with_tags(r#"{"g":1}"#)).await;
    let mut b = raw(&server.url_with_tags(r#"{"g":1}"#)).await;
    server.wait_connections(2).await;
    drop(a);
    server.wait_connections(1).await;
    let mut sender = envelope(&server.url).await;
    send_text(&mut sender, r#"{"id":1,"message":"m","tags":{"g":1}}"#).await;
    let ack = recv_json(&mut sender).await;
    assert_eq!(ack["delivered"], 1);
    assert_eq!(recv_text(&mut b).await, r#""m""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_sends_and_receives() {
    use tagcast::{Tags, WebSocketClient, WebSocketRequest};
    let server = TestServer::start().await;
    let fr = WebSocketClient::connect(server.url.clone(), Tags::new().with("language", "FR"))
        .await
        .unwrap();
    let backend = WebSocketClient::builder(server.url.clone())
        .default_tags(Tags::new().with("language", "EN"))
        .connect()
        .await
        .unwrap();
    let mut en = raw(&server.url_with_tags(r#"{"language":"EN"}"#)).await;
    server.wait_connections(3).await;
    // The request's own tags win over the client's default tags.
    let request = WebSocketRequest::new("Bonjour").with_tags(Tags::new().with("language", "FR"));
    assert_eq!(backend.send(request).await.unwrap(), 1);
    let received = fr.recv().await.unwrap();
    assert_eq!(received.message, "Bonjour");
    assert_eq!(received.tags, Tags::new().with("language", "FR"));
    // Default tags apply when the request has none.
    assert_eq!(
        backend.send(WebSocketRequest::new("Hello")).await.unwrap(),
        1
    );
    assert_eq!(recv_text(&mut en).await, r#""Hello""#);
    // An empty message is refused before the network.
    assert!(matches!(
        backend.send(WebSocketRequest::new("")).await,
        Err(tagcast::Error::EmptyMessage)
    ));
    fr.close().await;
    backend.close().await;
}
