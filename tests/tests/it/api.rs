//! The server API on a lone node (PROTOCOL.md §11 `GET /history`, §12): the API key, presence
//! by tag set, disconnect with 4001, retag with the `tags` frame and its ordering, the kept
//! history, and `/publish` authorized by the key.

use serde_json::{json, Value};
use tagcast_server::api::ApiKey;
use tagcast_server::Config;

use super::util::*;

const KEY: &str = "the-api-key-1234";

async fn api_server(config: Config) -> TestServer {
    TestServer::with_config(Config {
        api_key: Some(ApiKey(KEY.into())),
        ..config
    })
    .await
}

fn bearer() -> String {
    format!("Authorization: Bearer {KEY}\r\n")
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let answer = http_get(server.addr, path, &bearer()).await;
    let body = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON: {}: {e}", answer.body));
    (answer.status, body)
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let headers = format!("{}Content-Type: application/json\r\n", bearer());
    let answer = http_request(
        server.addr,
        "POST",
        path,
        &headers,
        body.to_string().as_bytes(),
    )
    .await;
    let body = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON: {}: {e}", answer.body));
    (answer.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_its_key_and_is_off_without_one() {
    let off = TestServer::start().await;
    let answer = http_get(off.addr, "/presence", "").await;
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("--api-key"), "{}", answer.body);

    let server = api_server(Config::default()).await;
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: the-api-key-1234\r\n",
    ] {
        let answer = http_get(server.addr, "/presence", headers).await;
        assert_eq!(answer.status, 401, "{headers:?}");
        assert!(answer.body.contains("\"error\""), "{}", answer.body);
    }
    for path in ["/disconnect", "/retag"] {
        let answer = http_post(server.addr, path, r#"{"tags":{}}"#).await;
        assert_eq!(answer.status, 401, "{path}");
    }
    assert_eq!(get(&server, "/presence").await.0, 200);
    let metrics = http_get(server.addr, "/metrics", "").await.body;
    assert_eq!(
        sample(
            &metrics,
            r#"tagcast_api_requests_total{endpoint="presence",status="401"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tagcast_api_requests_total{endpoint="presence",status="200"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_connections_by_tag_set_and_by_value() {
    let server = api_server(Config::default()).await;
    let mut open = Vec::new();
    for (room, user) in [(42, 1), (42, 1), (42, 2), (43, 3)] {
        let tags = format!(r#"{{"room":{room},"user":{user}}}"#);
        open.push(raw(&server.url_with_tags(&tags)).await);
    }
    open.push(raw(&server.url).await);
    server.wait_connections(5).await;

    let (status, all) = get(&server, "/presence").await;
    assert_eq!(
        (status, all),
        (200, json!({"connections": 5, "partial": false}))
    );
    let room = encode(r#"{"room":"42"}"#);
    let (status, in_room) = get(&server, &format!("/presence?tags={room}&by=user")).await;
    assert_eq!(status, 200, "{in_room}");
    assert_eq!(
        in_room,
        json!({"connections": 3, "values": {"1": 2, "2": 1}, "truncated": false, "partial": false})
    );
    let (status, bad) = get(&server, "/presence?tags=%5B1%5D").await;
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("tags"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_matching_connections_with_4001() {
    let server = api_server(Config::default()).await;
    let mut user42 = raw(&server.url_with_tags(r#"{"user":42,"device":"a"}"#)).await;
    let mut also42 = envelope(&server.url_with_tags(r#"{"user":42,"device":"b"}"#)).await;
    let mut other = raw(&server.url_with_tags(r#"{"user":7}"#)).await;
    server.wait_connections(3).await;

    let (status, answer) = post(
        &server,
        "/disconnect",
        json!({"tags": {"user": 42}, "reason": "logged out"}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"disconnected": 2, "partial": false}))
    );
    assert_eq!(
        recv_close(&mut user42).await,
        (4001, "logged out".to_owned())
    );
    assert_eq!(
        recv_close(&mut also42).await,
        (4001, "logged out".to_owned())
    );
    server.wait_connections(1).await;
    // The others stay, and the default reason names the server.
    let (status, answer) = post(&server, "/disconnect", json!({"tags": {}})).await;
    assert_eq!(
        (status, answer),
        (200, json!({"disconnected": 1, "partial": false}))
    );
    assert_eq!(
        recv_close(&mut other).await,
        (4001, "disconnected by the server".to_owned())
    );
    let (status, answer) = post(&server, "/disconnect", json!({"reason": "x"})).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("'tags' is required"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retag_moves_connections_and_tells_envelope_clients() {
    let server = api_server(Config {
        max_tags: 2,
        ..Config::default()
    })
    .await;
    let (mut mover, _) = envelope_at(&server.url_with_tags(r#"{"room":42,"user":1}"#)).await;
    let mut raw_mover = raw(&server.url_with_tags(r#"{"room":42}"#)).await;
    let mut stays = raw(&server.url_with_tags(r#"{"room":41}"#)).await;
    server.wait_connections(3).await;

    let (status, answer) = post(
        &server,
        "/retag",
        json!({"tags": {"room": 42}, "set": {"room": 43}}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"retagged": 2, "refused": 0, "partial": false}))
    );
    let frame = recv_json(&mut mover).await;
    assert_eq!(frame["type"], "tags", "{frame}");
    assert_eq!(frame["tags"], json!({"room": 43, "user": 1}));
    assert!(frame.get("id").is_none(), "{frame}");

    // Requests routed after the answer see the new tags.
    let publish = |room: u32| format!(r#"{{"message":"to {room}","tags":{{"room":{room}}}}}"#);
    assert_eq!(
        http_post(server.addr, "/publish", &publish(42))
            .await
            .body
            .trim(),
        r#"{"delivered":0}"#
    );
    assert_eq!(
        http_post(server.addr, "/publish", &publish(43))
            .await
            .body
            .trim(),
        r#"{"delivered":2}"#
    );
    assert_eq!(recv_message(&mut mover).await.0["message"], "to 43");
    assert_eq!(recv_text(&mut raw_mover).await, r#""to 43""#);
    assert_nothing_before_marker(&mut stays, server.addr, json!({"room": 41})).await;

    // Unset, and a result over --max-tags leaves that connection as it was.
    let (status, answer) = post(
        &server,
        "/retag",
        json!({"tags": {"room": 43}, "set": {"lang": "fr"}, "unset": ["room"]}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"retagged": 2, "refused": 0, "partial": false}))
    );
    assert_eq!(
        recv_json(&mut mover).await["tags"],
        json!({"lang": "fr", "user": 1})
    );
    let (status, answer) = post(
        &server,
        "/retag",
        json!({"tags": {"lang": "fr"}, "set": {"a": 1, "b": 2}}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"retagged": 0, "refused": 2, "partial": false}))
    );
    let metrics = http_get(server.addr, "/metrics", "").await.body;
    assert_eq!(sample(&metrics, "tagcast_retags_total"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_what_a_connection_would_have_received() {
    let server = api_server(Config::default()).await;
    let (_ws, start) = envelope_at(&server.url).await;
    for (i, room) in [(0, 1), (1, 2), (2, 1), (3, 1)] {
        let body = json!({"message": format!("m{i}"), "tags": {"room": room}, "metadata": {"secret": "x"}});
        assert_eq!(
            http_post(server.addr, "/publish", &body.to_string())
                .await
                .status,
            200
        );
    }
    let room1 = encode(r#"{"room":1}"#);
    let (status, page) = get(&server, &format!("/history?tags={room1}&limit=2")).await;
    assert_eq!(status, 200);
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["message"], "m0");
    assert_eq!(messages[0]["tags"], json!({"room": 1}));
    assert!(
        messages[0].get("metadata").is_none(),
        "metadata is never kept: {page}"
    );
    assert_eq!(messages[1]["message"], "m2");
    assert_eq!(page["recovered"], true);
    assert_eq!(page["pos"], messages[1]["pos"]);
    // The rest, from the position the page gave.
    let since = encode(page["pos"].as_str().unwrap());
    let (status, rest) = get(&server, &format!("/history?tags={room1}&since={since}")).await;
    assert_eq!(status, 200, "{rest}");
    let rest = rest["messages"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["message"], "m3");
    // After a connection's cursor, for other tags; a connection without tags would have
    // received none of them.
    let room2 = encode(r#"{"room":2}"#);
    let (status, two) = get(
        &server,
        &format!("/history?tags={room2}&since={}", encode(&start)),
    )
    .await;
    assert_eq!(status, 200, "{two}");
    let two = two["messages"].as_array().unwrap().clone();
    assert_eq!(two.len(), 1);
    assert_eq!(two[0]["message"], "m1");
    let (status, none) = get(&server, "/history").await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["messages"], json!([]));

    assert_eq!(get(&server, "/history?limit=1001").await.0, 400);
    assert_eq!(get(&server, "/history?since=a%20b").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_authorizes_publish_under_auth() {
    let auth = temp_file("auth.yml", AUTH_YAML);
    let server = api_server(Config {
        auth_file: Some(auth),
        ..Config::default()
    })
    .await;
    let body = br#"{"message":"from the backend"}"#;
    let without = http_request(server.addr, "POST", "/publish", "", body).await;
    assert_eq!(without.status, 401);
    let headers = format!("{}Content-Type: application/json\r\n", bearer());
    let with = http_request(server.addr, "POST", "/publish", &headers, body).await;
    assert_eq!((with.status, with.body.trim()), (200, r#"{"delivered":0}"#));
}

/// Sends SIGSTOP or SIGCONT to a process.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Stops a process and waits until every one of its threads has stopped.
///
/// `kill` returns once SIGSTOP is queued, and the group stop begins only when the one thread
/// the kernel woke for it runs: on a loaded machine another thread (a worker woken by a
/// socket) can go on running, and answer, in between.
async fn stop(pid: u32) {
    signal(pid, "STOP");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
        let running: Vec<String> = tasks
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
                // The state follows the command's closing parenthesis: "pid (comm) S ...".
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                (state != 'T').then_some(stat)
            })
            .collect();
        if running.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop: {running:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_every_endpoint_covers_every_node_and_a_silent_node_makes_it_partial() {
    let redis = RedisServer::start();
    let clustered = || Config {
        redis: Some(redis.url()),
        redis_channel: "api".into(),
        ..Config::default()
    };
    let a = api_server(clustered()).await;
    let b = api_server(clustered()).await;
    // The third node is a process, so that it can be stopped (SIGSTOP) and go on (SIGCONT).
    let c = super::cli::serve(
        &[
            "--redis",
            &redis.url(),
            "--redis-channel",
            "api",
            "--api-key",
            KEY,
        ],
        &[],
    )
    .await;
    let c_url = |tags: &str| format!("ws://{}/?tags={}", c.addr(), encode(tags));
    let mut open = Vec::new();
    for (user, url) in [
        (1, a.url_with_tags(r#"{"room":42,"user":1}"#)),
        (2, b.url_with_tags(r#"{"room":42,"user":2}"#)),
        (2, b.url_with_tags(r#"{"room":42,"user":2}"#)),
        (3, c_url(r#"{"room":42,"user":3}"#)),
        (4, c_url(r#"{"room":7,"user":4}"#)),
    ] {
        open.push((user, envelope(&url).await));
    }
    a.wait_connections(1).await;
    b.wait_connections(2).await;
    // C's own count, through the API of a node that answers for itself.
    let room42 = encode(r#"{"room":42}"#);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(&a, &format!("/presence?tags={room42}&by=user")).await;
        assert_eq!(status, 200, "{body}");
        if body["connections"] == 4 {
            // Counts from every node, summed per value; nothing but counts crossed the bus.
            assert_eq!(
                body,
                json!({"connections": 4, "values": {"1": 1, "2": 2, "3": 1}, "truncated": false, "partial": false})
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "C's connections never counted: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Retag on B moves connections on every node; each envelope client hears its new tags.
    let (status, body) = post(
        &b,
        "/retag",
        json!({"tags": {"room": 42}, "set": {"room": 43}}),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"retagged": 4, "refused": 0, "partial": false}))
    );
    for (user, ws) in open.iter_mut().filter(|(user, _)| *user != 4) {
        let frame = recv_json(ws).await;
        assert_eq!(frame["type"], "tags", "user {user}: {frame}");
        assert_eq!(frame["tags"]["room"], 43, "user {user}: {frame}");
    }

    // Disconnect on A closes user 2 on B and user 3 on C... every node, with 4001.
    let (status, body) = post(
        &a,
        "/disconnect",
        json!({"tags": {"room": 43}, "reason": "room closed"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"disconnected": 4, "partial": false}))
    );
    for (user, ws) in open.iter_mut().filter(|(user, _)| *user != 4) {
        assert_eq!(
            recv_close(ws).await,
            (4001, "room closed".to_owned()),
            "user {user}"
        );
    }

    a.wait_connections(0).await;
    b.wait_connections(0).await;

    // A node that does not answer within a second is left out, and the answer says so.
    stop(c.pid()).await;
    let asked = std::time::Instant::now();
    let (status, body) = get(&a, "/presence").await;
    signal(c.pid(), "CONT");
    assert_eq!(
        (status, body),
        (200, json!({"connections": 0, "partial": true}))
    );
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(3),
        "the 1 s bound"
    );
    // Once it answers again, the whole cluster is counted.
    let (status, body) = get(&a, "/presence").await;
    assert_eq!(
        (status, body),
        (200, json!({"connections": 1, "partial": false}))
    );
}
