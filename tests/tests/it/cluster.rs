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
    // Exactly once: nothing more arrives (a marker routed after it comes next), and EN never
    // hears it.
    let fr_marker = publish_marker(b.addr, json!({"language": "FR"})).await;
    for ws in [&mut a_fr, &mut b_fr, &mut c_fr] {
        assert_marker_next(ws, &fr_marker).await;
    }
    assert_nothing_before_marker(&mut c_en, a.addr, json!({"language": "EN"})).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_with_many_requests_in_flight_gets_its_acks_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "flight").await, node(&redis, "flight").await);
    let mut far = envelope(&b.url_with_tags(r#"{"g":1}"#)).await;
    let mut near = envelope(&a.url_with_tags(r#"{"g":1}"#)).await;
    let mut sender = envelope(&a.url).await;
    b.wait_connections(1).await;
    a.wait_connections(2).await;
    // Everything at once: the node keeps many of them on the bus together.
    for i in 0..500 {
        let text = json!({"id": i, "message": i.to_string(), "tags": {"g": 1}});
        send_text(&mut sender, &text.to_string()).await;
    }
    send_text(&mut sender, r#"{"id":"bad","message":"x","tags":"nope"}"#).await;
    for i in 0..500 {
        assert_eq!(
            recv_json(&mut sender).await,
            json!({"type":"ack","id":i,"delivered":1})
        );
    }
    // A refusal decided at once still comes after the acks of the requests before it.
    let error = recv_json(&mut sender).await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("bad"))
    );
    for ws in [&mut far, &mut near] {
        for i in 0..500 {
            assert_eq!(recv_message(ws).await.0["message"], i.to_string());
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
    redis.restart();
    wait_health(&a, 200, Duration::from_secs(15)).await;
    wait_health(&b, 200, Duration::from_secs(15)).await;
    // This Redis keeps nothing on disk: the cluster's history is gone, so the envelope
    // connection, whose position nobody can vouch for any more, is told to resume (§11).
    assert_eq!(
        recv_close(&mut sender).await,
        (1012, "service restart".to_owned())
    );
    let mut sender = envelope(&a.url).await;
    send_text(&mut sender, r#"{"id":2,"message":"back","tags":{"g":1}}"#).await;
    assert_eq!(recv_json(&mut sender).await["type"], "ack");
    // Nothing refused was delivered, then or after: the listener's next frame is this one.
    assert_eq!(recv_text(&mut listener).await, r#""back""#);

    let metrics = http_get(a.addr, "/metrics", "").await.body;
    assert_eq!(sample(&metrics, "tagcast_bus_up"), 1.0);
    assert_eq!(sample(&metrics, "tagcast_bus_reconnects_total"), 1.0);
    assert_eq!(sample(&metrics, "tagcast_history_gap_closes_total"), 1.0);
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
    assert_nothing_before_marker(&mut on_two, two.addr, json!({"g": 1})).await;
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

// --- The cluster's shared history (PROTOCOL.md §10, §11) ---

async fn node_with(redis_url: String, channel: &str, history: usize) -> TestServer {
    TestServer::with_config(Config {
        redis: Some(redis_url),
        redis_channel: channel.to_owned(),
        history,
        ..Config::default()
    })
    .await
}

async fn publish_on(server: &TestServer, message: &str, tags: serde_json::Value) {
    let body = json!({ "message": message, "tags": tags }).to_string();
    let answer = http_post(server.addr, "/publish", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// What a resuming connection gets: the replayed messages, then the `resumed` frame.
async fn replay_of(ws: &mut Ws) -> (Vec<String>, serde_json::Value) {
    let mut replayed = Vec::new();
    loop {
        let frame = recv_json(ws).await;
        if frame["type"] == "resumed" {
            return (replayed, frame);
        }
        assert_eq!(frame["type"], "message", "{frame}");
        assert!(frame["pos"].is_string(), "{frame}");
        replayed.push(frame["message"].as_str().unwrap().to_owned());
    }
}

fn resume(server: &TestServer, tags: &str, since: &str) -> String {
    format!("{}&since={}", server.url_with_tags(tags), encode(since))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_and_a_new_node_knows_the_history() {
    let redis = RedisServer::start();
    let (a, b) = (
        node_with(redis.url(), "h", 100).await,
        node_with(redis.url(), "h", 100).await,
    );
    let (mut ws, _) = envelope_at(&a.url_with_tags(r#"{"room":1}"#)).await;
    a.wait_connections(1).await;
    publish_on(&b, "seen", json!({"room": 1})).await;
    let (_, seen_at) = recv_message(&mut ws).await;
    ws.close(None).await.unwrap();
    a.wait_connections(0).await;

    publish_on(&a, "missed on A", json!({"room": 1})).await;
    publish_on(&b, "missed on B", json!({"room": 1})).await;
    publish_on(&b, "other room", json!({"room": 2})).await;

    // On the other node: everything it missed, whichever node routed it, in order.
    let (mut ws, cursor) = envelope_at(&resume(&b, r#"{"room":1}"#, &seen_at)).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert_eq!(replayed, ["missed on A", "missed on B"]);
    assert_eq!(
        resumed,
        json!({"type":"resumed","recovered":true,"missed":2})
    );
    // Positions are the cluster's: B's cursor is the last routed request, wherever it went.
    let (_, on_a) = envelope_at(&a.url).await;
    assert_eq!(cursor, on_a);

    // A node that joins later fills its copy of the history from Redis at start.
    let c = node_with(redis.url(), "h", 100).await;
    let (mut ws, _) = envelope_at(&resume(&c, r#"{"room":1}"#, &seen_at)).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert_eq!(replayed, ["missed on A", "missed on B"]);
    assert_eq!(resumed["recovered"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_gets_the_clusters_positions_in_order_with_senders_on_every_node() {
    let redis = RedisServer::start();
    let nodes = [
        node_with(redis.url(), "o", 10_000).await,
        node_with(redis.url(), "o", 10_000).await,
        node_with(redis.url(), "o", 10_000).await,
    ];
    let mut listeners = Vec::new();
    for node in &nodes {
        listeners.push(envelope(&node.url_with_tags(r#"{"g":1}"#)).await);
        node.wait_connections(1).await;
    }
    // A sender on every node, all at once: each request is acked once the cluster ordered it.
    const EACH: usize = 100;
    let mut senders = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut ws = envelope(&node.url).await;
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                let text = json!({"id": i, "message": format!("{n}:{i}"), "tags": {"g": 1}});
                send_text(&mut ws, &text.to_string()).await;
                let ack = recv_json(&mut ws).await;
                assert_eq!(
                    (ack["type"].as_str(), ack["id"].as_u64()),
                    (Some("ack"), Some(i as u64)),
                    "{ack}"
                );
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let mut orders = Vec::new();
    for ws in &mut listeners {
        let mut order = Vec::new();
        let mut next = [0usize; 3];
        let mut last: Option<u64> = None;
        for _ in 0..3 * EACH {
            let (frame, pos) = recv_message(ws).await;
            let sequence: u64 = pos.rsplit('.').next().unwrap().parse().unwrap();
            assert!(last.is_none_or(|l| sequence > l), "{pos} after {last:?}");
            last = Some(sequence);
            let text = frame["message"].as_str().unwrap().to_owned();
            let (n, i) = text.split_once(':').unwrap();
            let n: usize = n.parse().unwrap();
            assert_eq!(i.parse::<usize>().unwrap(), next[n], "sender {n}'s order");
            next[n] += 1;
            order.push(text);
        }
        orders.push(order);
    }
    // Nothing more: a marker routed after them comes next everywhere.
    let marker = publish_marker(nodes[1].addr, json!({"g": 1})).await;
    for ws in &mut listeners {
        assert_marker_next(ws, &marker).await;
    }
    // The same order everywhere: the cluster's.
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

/// A TCP proxy in front of Redis's Unix socket: a node behind it can be cut off from the
/// cluster while the others carry on.
struct RedisProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl RedisProxy {
    async fn start(redis: &RedisServer) -> RedisProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let socket = redis.socket.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    continue; // refused while cut: dropped at once
                }
                let mut cut_rx = cut_rx.clone();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        RedisProxy { addr, cut }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_catches_its_envelope_connections_up_when_it_rejoins() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(&redis).await;
    let a = node_with(proxy.url(), "cut", 100).await;
    let b = node_with(redis.url(), "cut", 100).await;
    let mut env = envelope(&a.url_with_tags(r#"{"g":1}"#)).await;
    let mut plain = raw(&a.url_with_tags(r#"{"g":1}"#)).await;
    a.wait_connections(2).await;
    publish_on(&b, "before", json!({"g": 1})).await;
    assert_eq!(recv_message(&mut env).await.0["message"], "before");
    assert_eq!(recv_text(&mut plain).await, r#""before""#);

    proxy.set_cut(true);
    wait_health(&a, 503, WAIT).await;
    publish_on(&b, "meanwhile 1", json!({"g": 1})).await;
    publish_on(&b, "meanwhile 2", json!({"g": 1})).await;
    proxy.set_cut(false);
    wait_health(&a, 200, Duration::from_secs(15)).await;
    publish_on(&b, "after", json!({"g": 1})).await;

    // The envelope connection gets what it missed before anything newer, exactly once.
    for expected in ["meanwhile 1", "meanwhile 2", "after"] {
        assert_eq!(recv_message(&mut env).await.0["message"], expected);
    }
    let marker = publish_marker(b.addr, json!({"g": 1})).await;
    assert_marker_next(&mut env, &marker).await;
    // A raw connection cannot be caught up: it gets what comes after, and /metrics counts
    // what it missed.
    assert_eq!(recv_text(&mut plain).await, r#""after""#);
    assert_marker_next(&mut plain, &marker).await;
    let metrics = http_get(a.addr, "/metrics", "").await.body;
    assert_eq!(sample(&metrics, "tagcast_bus_missed_deliveries_total"), 2.0);
    assert_eq!(sample(&metrics, "tagcast_history_gap_closes_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_gap_outlived_the_history_closes_its_envelope_connections_with_1012() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(&redis).await;
    let a = node_with(proxy.url(), "gap", 3).await;
    let b = node_with(redis.url(), "gap", 3).await;
    let (mut env, start) = envelope_at(&a.url_with_tags(r#"{"g":1}"#)).await;
    let mut plain = raw(&a.url_with_tags(r#"{"g":1}"#)).await;
    a.wait_connections(2).await;

    proxy.set_cut(true);
    wait_health(&a, 503, WAIT).await;
    // Far more than Redis keeps (MAXLEN ~ 3 trims in whole blocks of 100 entries).
    for i in 0..250 {
        publish_on(&b, &format!("missed {i}"), json!({"g": 1})).await;
    }
    proxy.set_cut(false);
    assert_eq!(
        recv_close(&mut env).await,
        (1012, "service restart".to_owned())
    );
    wait_health(&a, 200, Duration::from_secs(15)).await;
    // Resuming (on this node or any) tells the client it lost messages.
    let (mut env, _) = envelope_at(&resume(&a, r#"{"g":1}"#, &start)).await;
    let (_, resumed) = replay_of(&mut env).await;
    assert_eq!(resumed["recovered"], false);
    // The raw connection stays open and hears what comes next.
    publish_on(&b, "next", json!({"g": 1})).await;
    assert_eq!(recv_text(&mut plain).await, r#""next""#);
    assert_eq!(recv_message(&mut env).await.0["message"], "next");
    let metrics = http_get(a.addr, "/metrics", "").await.body;
    assert_eq!(sample(&metrics, "tagcast_history_gap_closes_total"), 1.0);
}

/// A small seeded generator (xorshift64*): the chaos schedule can be replayed from its seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What one resuming client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Messages in the order received.
    messages: Vec<String>,
    /// When the latest `resumed` frame with `recovered: false` arrived (messages sent after it
    /// must all arrive), if any did.
    unrecovered_at: Option<std::time::Instant>,
    resumes: usize,
    /// What happened, in order (connections, greetings, messages with their positions): shown
    /// when a check fails.
    events: Vec<String>,
}

/// Two nodes (real processes) and Redis, clients resuming on both, a publisher on each; a
/// seeded schedule SIGKILLs and restarts nodes, cuts clients' connections and restarts Redis.
/// Every client ends with every request accepted after its last unrecovered resume (all of
/// them, when every resume was recovered), none twice, in each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nodes_killed_connections_cut_and_redis_restarted_lose_nothing_unannounced() {
    use futures_util::StreamExt;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let seed = std::env::var("TAGCAST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos schedule: TAGCAST_CHAOS_SEED={seed}");
    let mut dice = Dice(seed);

    let mut redis = RedisServer::start();
    let redis_url = redis.url();
    let start_node = || {
        let url = redis_url.clone();
        async move { super::cli::serve(&["--redis", &url, "--history", "1000"], &[]).await }
    };
    let mut nodes = vec![start_node().await, start_node().await];
    // Each node's slot: its port and a generation that changes with every restart. A killed
    // node's port is released, and another test may bind it at once: the slot moves to the
    // replacement before the old node is killed, and a dialer keeps what it connected to only
    // if the slot it dialled still has the same generation afterwards (then the node it
    // reached was not killed yet, so the port was still ours).
    let ports: Arc<Mutex<Vec<(u64, u16)>>> = Arc::new(Mutex::new(
        nodes.iter().map(|n| (0, n.addr().port())).collect(),
    ));
    let unchanged = |ports: &Mutex<Vec<(u64, u16)>>, slot: usize, generation: u64| {
        ports.lock().unwrap()[slot].0 == generation
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Clients: each reads, and on any end resumes from its last position on a node picked at
    // random (the seed decides), until told to stop.
    const CLIENTS: usize = 4;
    let mut clients = Vec::new();
    let mut cutters = Vec::new();
    for c in 0..CLIENTS {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (cut, mut cut_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        cutters.push(cut);
        let (ports, stop, seen2) = (ports.clone(), stop.clone(), seen.clone());
        let mut dice = Dice(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            let mut pos: Option<String> = None;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let (slot, (generation, port)) = {
                    let ports = ports.lock().unwrap();
                    let slot = dice.below(ports.len() as u64) as usize;
                    (slot, ports[slot])
                };
                let mut url = format!("ws://127.0.0.1:{port}/?tags=%7B%22g%22%3A1%7D");
                if let Some(p) = &pos {
                    url.push_str(&format!("&since={}", encode(p)));
                }
                let mut request = url.into_client_request().unwrap();
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    tokio_tungstenite::tungstenite::http::HeaderValue::from_static("tagcast.v1"),
                );
                let connected =
                    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await;
                let Ok(Ok((mut ws, _))) = connected else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue; // that node is down: try again
                };
                if !unchanged(&ports, slot, generation) {
                    continue; // dialled a node being replaced: maybe not ours any more
                }
                seen2.lock().unwrap().events.push(format!(
                    "connected to slot {slot} (generation {generation}, port {port}) since {pos:?}"
                ));
                loop {
                    let frame = tokio::select! {
                        frame = ws.next() => frame,
                        _ = cut_rx.recv() => None, // cut: the socket is dropped unclosed
                    };
                    let Some(Ok(Message::Text(text))) = frame else {
                        let end = match &frame {
                            None => "cut or ended".to_owned(),
                            Some(other) => format!("{other:?}"),
                        };
                        seen2.lock().unwrap().events.push(format!("end: {end}"));
                        break;
                    };
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] != "message" {
                        seen2.lock().unwrap().events.push(text.to_string());
                    }
                    match frame["type"].as_str() {
                        Some("position") => {
                            if pos.is_none() {
                                pos = frame["pos"].as_str().map(str::to_owned);
                                if let Some(ready) = ready_tx.take() {
                                    let _ = ready.send(());
                                }
                            }
                        }
                        Some("message") => {
                            pos = frame["pos"].as_str().map(str::to_owned);
                            let text = frame["message"].as_str().unwrap().to_owned();
                            let mut seen = seen2.lock().unwrap();
                            seen.events.push(format!("{text} at {}", frame["pos"]));
                            seen.messages.push(text);
                        }
                        Some("resumed") => {
                            let mut seen = seen2.lock().unwrap();
                            seen.resumes += 1;
                            if frame["recovered"] == false {
                                seen.unrecovered_at = Some(Instant::now());
                            }
                        }
                        other => panic!("client {c}: unexpected frame {other:?}: {frame}"),
                    }
                }
            }
        });
        ready_rx.await.expect("the client connected");
        clients.push((task, seen));
    }

    // Publishers, one per node, over HTTP: each request's message is unique; what a node
    // answered 200 to was accepted, with the time it was sent.
    let accepted: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..2usize {
        let (ports, stop, accepted) = (ports.clone(), stop.clone(), accepted.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let (generation, port) = ports.lock().unwrap()[p];
                let message = format!("{p}:{i}");
                i += 1;
                let body = json!({"message": message, "tags": {"g": 1}}).to_string();
                let sent = Instant::now();
                let addr = ([127, 0, 0, 1], port).into();
                match tokio::time::timeout(WAIT, try_http_post(addr, "/publish", &body)).await {
                    // Counted only when the node that answered was still ours: a request it
                    // accepted but that is not counted may arrive, it just need not.
                    Ok(Some(200)) if unchanged(&ports, p, generation) => {
                        accepted.lock().unwrap().push((message, sent))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    // The schedule: six faults, a second or so apart.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(300 + dice.below(700))).await;
        // Redis restarts are the rarest: after one, only what follows must arrive.
        match dice.below(5) {
            0 | 1 => {
                let n = dice.below(2) as usize;
                eprintln!("round {round}: SIGKILL node {n} and restart it");
                let replacement = start_node().await;
                {
                    // The slot moves first: from now on nobody dials the old port.
                    let mut ports = ports.lock().unwrap();
                    ports[n] = (ports[n].0 + 1, replacement.addr().port());
                }
                drop(std::mem::replace(&mut nodes[n], replacement)); // SIGKILL
            }
            2 | 3 => {
                let c = dice.below(CLIENTS as u64) as usize;
                eprintln!("round {round}: cut client {c}'s connection");
                let _ = cutters[c].send(());
            }
            _ => {
                eprintln!("round {round}: restart Redis");
                redis.kill();
                redis.restart();
            }
        }
    }
    // Calm: let every node serve again, then stop the publishers and wait for each client to
    // have every accepted request it must have.
    for node in &nodes {
        let addr = node.addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        while try_http_get_status(addr, "/readyz").await != Some(200) {
            assert!(Instant::now() < deadline, "node {addr} never served again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // a few more requests on a calm cluster
    stop.store(true, std::sync::atomic::Ordering::Release);
    for p in publishers {
        p.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > 50,
        "too few requests accepted: {}",
        accepted.len()
    );
    for (c, (task, seen)) in clients.into_iter().enumerate() {
        let must = |seen: &Seen| -> Vec<String> {
            accepted
                .iter()
                .filter(|(_, sent)| seen.unrecovered_at.is_none_or(|at| *sent > at))
                .map(|(m, _)| m.clone())
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let missing: Vec<String> = {
                let seen = seen.lock().unwrap();
                let have: std::collections::HashSet<&String> = seen.messages.iter().collect();
                must(&seen)
                    .into_iter()
                    .filter(|m| !have.contains(m))
                    .collect()
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: client {c} never got {} accepted requests, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        let seen = seen.lock().unwrap();
        // None twice, and each sender's order.
        let mut once = std::collections::HashSet::new();
        let mut last = [None::<u64>; 2];
        // On a failure, what this client went through, and the schedule above.
        let events = || seen.events.join("\n");
        for m in &seen.messages {
            assert!(
                once.insert(m),
                "seed {seed}: client {c} got {m} twice; its events:\n{}",
                events()
            );
            let (p, i) = m.split_once(':').unwrap();
            let (p, i): (usize, u64) = (p.parse().unwrap(), i.parse().unwrap());
            assert!(
                last[p].is_none_or(|l| i > l),
                "seed {seed}: client {c} got {m} after {p}:{:?}; its events:\n{}",
                last[p],
                events()
            );
            last[p] = Some(i);
        }
        eprintln!(
            "client {c}: {} messages, {} resumes, unrecovered: {}",
            seen.messages.len(),
            seen.resumes,
            seen.unrecovered_at.is_some()
        );
    }
}

/// The status of a `POST`, or `None` when the node cannot be reached.
async fn try_http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> Option<u16> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    try_http_status(addr, &request).await
}

/// The status of a `GET`, or `None` when the node cannot be reached.
async fn try_http_get_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    try_http_status(addr, &request).await
}

async fn try_http_status(addr: std::net::SocketAddr, request: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

// --- What crosses the bus (README "Clusters": metadata never leaves the node) ---

/// A RESP value, as much of it as these tests read.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// Every byte string in it, flattened.
    fn bytes(&self) -> Vec<u8> {
        match self {
            Resp::Simple(b) | Resp::Error(b) | Resp::Bulk(Some(b)) => b.clone(),
            Resp::Integer(i) => i.to_string().into_bytes(),
            Resp::Bulk(None) | Resp::Array(None) => Vec::new(),
            Resp::Array(Some(items)) => items.iter().flat_map(Resp::bytes).collect(),
        }
    }
}

/// The first complete RESP value in `buf` and how many bytes it took; `None` while incomplete.
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[1..line_end];
    let after = line_end + 2;
    let number = || -> i64 { std::str::from_utf8(line).unwrap().parse().unwrap() };
    match buf[0] {
        b'+' => Some((Resp::Simple(line.to_vec()), after)),
        b'-' => Some((Resp::Error(line.to_vec()), after)),
        b':' => Some((Resp::Integer(number()), after)),
        b'$' => {
            let len = number();
            if len < 0 {
                return Some((Resp::Bulk(None), after));
            }
            let end = after + len as usize;
            (buf.len() >= end + 2).then(|| (Resp::Bulk(Some(buf[after..end].to_vec())), end + 2))
        }
        b'*' => {
            let len = number();
            if len < 0 {
                return Some((Resp::Array(None), after));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..len {
                let (item, used) = parse_resp(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("not RESP: {:?}", other as char),
    }
}

/// A raw RESP connection to the test's Redis, over its Unix socket.
struct RedisConn {
    stream: tokio::net::UnixStream,
    buf: Vec<u8>,
}

impl RedisConn {
    async fn open(redis: &RedisServer) -> RedisConn {
        RedisConn {
            stream: tokio::net::UnixStream::connect(&redis.socket)
                .await
                .unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, args: &[&[u8]]) {
        use tokio::io::AsyncWriteExt;
        let mut command = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            command.extend_from_slice(arg);
            command.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&command).await.unwrap();
    }

    /// The next complete value Redis sends.
    async fn next(&mut self) -> Resp {
        use tokio::io::AsyncReadExt;
        loop {
            if !self.buf.is_empty() {
                if let Some((value, used)) = parse_resp(&self.buf) {
                    self.buf.drain(..used);
                    return value;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("Redis answers in time")
                .unwrap();
            assert!(n > 0, "Redis closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Resp {
        self.send(args).await;
        self.next().await
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// README "Clusters" and docs/operations.md: on the bus a message is the validated payload and
/// tags; its metadata (and so any secret) never leaves the node. A subscriber to the channel,
/// subscribed before the publish, and the cluster's history stream (`<channel>:history`) hold
/// the message and not one byte string of its metadata, with the history on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_never_reaches_redis() {
    let redis = RedisServer::start();
    for history in [tagcast_server::config::DEFAULT_HISTORY, 0] {
        let channel = format!("metadata-{history}");
        let node = node_with(redis.url(), &channel, history).await;
        let mut subscriber = RedisConn::open(&redis).await;
        let confirmed = subscriber.call(&[b"SUBSCRIBE", channel.as_bytes()]).await;
        assert_eq!(
            confirmed,
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"subscribe".to_vec())),
                Resp::Bulk(Some(channel.as_bytes().to_vec())),
                Resp::Integer(1),
            ]))
        );

        let (secret, key) = ("s3cr3t-of-the-sender", "key-of-the-sender");
        let payload = format!("the payload {history}");
        let body = json!({
            "message": payload,
            "tags": {"room": "bus"},
            "metadata": {"key": key, "secret": secret},
        });
        let answer = http_post(node.addr, "/publish", &body.to_string()).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, r#"{"delivered":0}"#)
        );

        // The node's own publish on the channel (the only one: nothing else publishes there).
        let Resp::Array(Some(push)) = subscriber.next().await else {
            panic!("expected a pub/sub message");
        };
        assert_eq!(push[0], Resp::Bulk(Some(b"message".to_vec())), "{push:?}");
        let record = push[2].bytes();
        assert!(contains(&record, payload.as_bytes()), "{record:?}");
        assert!(contains(&record, br#""room":"bus""#), "{record:?}");
        for leaked in [secret, key, "metadata"] {
            assert!(
                !contains(&record, leaked.as_bytes()),
                "{leaked} crossed the bus: {:?}",
                String::from_utf8_lossy(&record)
            );
        }

        // The history stream, and every other key of the channel.
        let mut conn = RedisConn::open(&redis).await;
        let history_key = format!("{channel}:history");
        let entries = conn
            .call(&[b"XRANGE", history_key.as_bytes(), b"-", b"+"])
            .await;
        let stored = entries.bytes();
        assert_eq!(
            contains(&stored, payload.as_bytes()),
            history > 0,
            "the history stream: {:?}",
            String::from_utf8_lossy(&stored)
        );
        let pattern = format!("{channel}*");
        let Resp::Array(Some(keys)) = conn.call(&[b"KEYS", pattern.as_bytes()]).await else {
            panic!("KEYS answers an array");
        };
        for key_name in keys {
            let key_name = key_name.bytes();
            let kind = conn.call(&[b"TYPE", &key_name]).await.bytes();
            let content = match kind.as_slice() {
                b"string" => conn.call(&[b"GET", &key_name]).await,
                b"stream" => conn.call(&[b"XRANGE", &key_name, b"-", b"+"]).await,
                other => panic!(
                    "unexpected Redis key type {:?}",
                    String::from_utf8_lossy(other)
                ),
            }
            .bytes();
            for leaked in [secret, key] {
                assert!(
                    !contains(&content, leaked.as_bytes()),
                    "{leaked} is in Redis key {:?}",
                    String::from_utf8_lossy(&key_name)
                );
            }
        }
        node.stop().await;
    }
}
