//! What an operator runs into (the `tagcast` binary): config files, check-config, boolean
//! variables, clap's messages, dev-cert with TLS end to end, JSON logs, probes, the drain on
//! SIGTERM and the process metrics.

use std::time::Duration;

use super::cli::{run, serve, spawn_tagcast};
use super::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_options_and_variables_and_flags_win() {
    let toml = temp_file("tagcast.toml", "max-connections = 1\nhistory = 0\n");
    let server = serve(&["--config", toml.to_str().unwrap()], &[]).await;
    let _one = raw(&server.url()).await;
    server.wait_connections(1).await;
    assert_eq!(
        refused(&server.url()).await.0,
        503,
        "max-connections = 1 from the file"
    );

    // A variable wins over the file, and a flag over both.
    let yaml = temp_file("tagcast.yml", "max-connections: 1\nhistory-ttl: 60\n");
    let yaml = yaml.to_str().unwrap();
    let server = serve(&["--config", yaml], &[("TAGCAST_MAX_CONNECTIONS", "2")]).await;
    let _a = raw(&server.url()).await;
    let _b = raw(&server.url()).await;
    server.wait_connections(2).await;
    assert_eq!(refused(&server.url()).await.0, 503);
    let server = serve(
        &["--config", yaml, "--max-connections", "3"],
        &[("TAGCAST_MAX_CONNECTIONS", "2")],
    )
    .await;
    let _open: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| raw_owned(server.url()))).await;
    server.wait_connections(3).await;

    // An unknown key names itself and the file, exit 2.
    let typo = temp_file("typo.toml", "max-connectionz = 5\n");
    let typo = typo.to_str().unwrap();
    let (status, _, stderr) = run(&["serve", "--config", typo], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("max-connectionz") && stderr.contains(typo),
        "{stderr}"
    );
    // A bad value names the file and its key (not a flag nobody typed), on one line; the
    // same value as a flag names the flag.
    let bad = temp_file("bad-port.toml", "port = \"x\"\n");
    let bad = bad.to_str().unwrap();
    let (status, _, stderr) = run(&["serve", "--config", bad], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {bad}: key 'port': invalid value 'x'")),
        "{stderr}"
    );
    let (status, _, stderr) = run(&["serve", "--config", bad, "--port", "y"], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'y' for '--port <PORT>'")
            && stderr.contains("(see 'tagcast serve --help')"),
        "{stderr}"
    );
    // A file that is not TOML at all: one line too.
    let broken = temp_file("broken.toml", "port = \n");
    let (status, _, stderr) = run(&["serve", "--config", broken.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not valid TOML"), "{stderr}");
    // An unknown key in the applications file too.
    let auth = temp_file("auth-typo.yml", "applications:\n  - key: a\n    secret: s\n    authorizeOpen: true\n    authorizedOpen: false\n");
    let (status, _, stderr) = run(&["check-config", "--auth", auth.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("authorizedOpen"), "{stderr}");
}

async fn raw_owned(url: String) -> Ws {
    raw(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_validates_without_opening_a_port() {
    let (status, stdout, stderr) = run(&["check-config", "--port", "1"], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    let (status, _, stderr) = run(&["check-config", "--auth", "/nonexistent/auth.yml"], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/auth.yml"), "{stderr}");
    let redis = unreachable_redis_url();
    let (status, _, stderr) = run(&["check-config", "--redis", &redis], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_variables_take_the_usual_spellings() {
    for yes in ["1", "true", "yes", "on"] {
        let (status, _, stderr) = run(&["check-config"], &[("TAGCAST_SIGNED_TAGS", yes)]).await;
        assert_eq!(status.code(), Some(2), "{yes}: {stderr}");
        assert!(
            stderr.contains("--signed-tags needs --auth"),
            "{yes}: {stderr}"
        );
    }
    for no in ["0", "false", "no", "off"] {
        let (status, _, stderr) = run(&["check-config"], &[("TAGCAST_SIGNED_TAGS", no)]).await;
        assert_eq!(status.code(), Some(0), "{no}: {stderr}");
    }
    let auth = temp_file("auth.yml", AUTH_YAML);
    let server = serve(
        &["--auth", auth.to_str().unwrap()],
        &[("TAGCAST_AUTHORIZE_OPEN", "off")],
    )
    .await;
    assert_eq!(refused(&server.url()).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clap_messages_name_what_is_missing_and_suggest() {
    let (status, _, stderr) = run(&["send", "hi"], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--url"), "{stderr}");
    let (status, _, stderr) = run(&["serve", "--prot", "1"], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'--port'"), "the tip: {stderr}");
    let (_, stdout, stderr) = run(&[], &[]).await;
    let help = stdout + &stderr;
    for command in ["serve", "send", "listen", "check-config", "dev-cert"] {
        assert!(help.contains(command), "{command} in {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cert_serves_tls_that_send_and_listen_trust() {
    let dir = std::env::temp_dir().join(format!("tagcast-dev-cert-{}", std::process::id()));
    let dir_text = dir.to_str().unwrap();
    let (status, stdout, stderr) = run(&["dev-cert", "--out", dir_text], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    assert!(stdout.contains("cert.pem") && key.exists(), "{stdout}");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = serve(&["--tls-cert", cert, "--tls-key", key], &[]).await;
    let url = format!("wss://localhost:{}", server.addr().port());
    let mut listener = spawn_tagcast(
        &[
            "listen",
            "--url",
            &url,
            "--ca-cert",
            cert,
            "--tags",
            r#"{"a":1}"#,
        ],
        &[],
    );
    listener.stderr_line_with("connected").await;
    let (status, stdout, stderr) = run(
        &[
            "send",
            "--url",
            &url,
            "--ca-cert",
            cert,
            "--tags",
            r#"{"a":1}"#,
            "over TLS",
        ],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "delivered 1");
    assert_eq!(listener.next_stdout_line().await, r#""over TLS""#);
    // healthcheck speaks plain HTTP and says so against a TLS port.
    let port = server.addr().port().to_string();
    let (status, _, stderr) = run(&["healthcheck"], &[("TAGCAST_PORT", &port)]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line() {
    let mut server = serve(&["--log-format", "json", "--api-key", "k-5ecret"], &[]).await;
    let _ = refused(&format!("{}/?tags=5", server.url())).await;
    // Refused HTTP requests are logged too: a /publish and a server API call.
    let answer = http_post(server.addr(), "/publish", "not json").await;
    assert_eq!(answer.status, 400);
    let answer = http_get(
        server.addr(),
        "/presence",
        "Authorization: Bearer wrong\r\n",
    )
    .await;
    assert_eq!(answer.status, 401);
    server.terminate();
    let log = server.stderr_after_exit().await;
    assert!(!log.contains("k-5ecret") && !log.contains("wrong"), "{log}");
    let http_refusal = |path: &str, status: u16| {
        log.lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|o| {
                o["message"] == "HTTP request refused" && o["path"] == path && o["status"] == status
            })
        })
    };
    assert!(http_refusal("/publish", 400), "{log}");
    assert!(http_refusal("/presence", 401), "{log}");
    let mut refusal_logged = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{line}"
        );
        refusal_logged |= object["message"] == "handshake refused" && object["status"] == 400;
    }
    assert!(
        refusal_logged,
        "a refused handshake is logged at INFO: {log}"
    );
}

/// README "Logs": with `--log-format json` a refused start is a JSON log line too, whichever
/// step refuses it (a flag, the config file, a file it names, the port) and however the format
/// was asked for (flag, variable, config file). `RUST_LOG` does not hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_with_json_logs_is_one_json_line() {
    let first = serve(&[], &[]).await;
    let port = first.addr().port().to_string();
    let bad_yaml = temp_file("bad.yaml", "port: [1\n");
    let missing = "/no/such/auth.yaml";
    let json_file = temp_file("json.yaml", &format!("log-format: json\nauth: {missing}\n"));
    // Arguments, variables, and what the message must name.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve", "--log-format", "json", "--port", "nope"],
            vec![],
            "'nope'",
        ),
        (
            vec![
                "serve",
                "--log-format=json",
                "--config",
                bad_yaml.to_str().unwrap(),
            ],
            vec![],
            "bad.yaml",
        ),
        (
            vec!["check-config", "--auth", missing],
            vec![("TAGCAST_LOG_FORMAT", "json")],
            missing,
        ),
        (
            vec!["serve", "--config", json_file.to_str().unwrap()],
            vec![],
            missing,
        ),
        (
            vec![
                "serve",
                "--log-format",
                "json",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
            ],
            vec![("RUST_LOG", "off")],
            "cannot listen on 127.0.0.1:",
        ),
    ];
    for (args, env, named) in cases {
        let (status, stdout, stderr) = run(&args, &env).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        let object: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: not JSON: {stderr}: {e}"));
        assert_eq!(object["level"], "ERROR", "{stderr}");
        assert!(object["timestamp"].is_string(), "{stderr}");
        let message = object["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{args:?}: {message}");
        assert!(!message.starts_with("error:"), "{message}");
    }
    // Without JSON logs the same refusal stays a plain `error:` line.
    let (status, _, stderr) = run(&["serve", "--port", "nope"], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.starts_with("error: invalid value 'nope'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_with_1001() {
    let mut server = serve(&["--shutdown-grace", "30", "--api-key", "drain-k3y"], &[]).await;
    let addr = server.addr();
    let mut staying = raw(&server.url()).await;
    server.wait_connections(1).await;
    assert_eq!(http_get(addr, "/readyz", "").await.status, 200);
    server.terminate();
    // Draining: not ready, alive, and new connections refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(addr, "/readyz", "").await.status != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(addr, "/livez", "").await.status, 200);
    assert_eq!(refused(&server.url()).await.0, 503);
    // docs/operations.md: /healthz, POST /publish and the server API keep answering.
    let healthz = http_get(addr, "/healthz", "").await;
    assert_eq!((healthz.status, healthz.body.trim()), (200, "ok"));
    let answer = http_post(addr, "/publish", r#"{"message":"still routed"}"#).await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":1}"#)
    );
    assert_eq!(recv_text(&mut staying).await, r#""still routed""#);
    let presence = http_get(addr, "/presence", "Authorization: Bearer drain-k3y\r\n").await;
    assert_eq!(presence.status, 200, "{}", presence.body);
    let presence: serde_json::Value = serde_json::from_str(&presence.body).unwrap();
    assert_eq!(presence["connections"], 1, "{presence}");
    // Still draining after all that: not ready.
    assert_eq!(http_get(addr, "/readyz", "").await.status, 503);
    // The open connection still works, then leaves: the process exits well before the grace.
    let started = tokio::time::Instant::now();
    staying.close(None).await.unwrap();
    let status = server.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "exits once no connection is left"
    );

    // A connection that stays is closed with 1001 when the grace ends.
    let mut server = serve(&["--shutdown-grace", "1"], &[]).await;
    let mut staying = raw(&server.url()).await;
    server.wait_connections(1).await;
    server.terminate();
    assert_eq!(recv_close(&mut staying).await.0, 1001);
    assert_eq!(server.exit_status().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_build_and_the_process() {
    let server = serve(&[], &[]).await;
    let metrics = http_get(server.addr(), "/metrics", "").await.body;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!(r#"tagcast_build_info{{version="{version}"}}"#)
        ),
        1.0
    );
    assert!(sample(&metrics, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&metrics, "process_open_fds") >= 3.0);
    assert!(sample(&metrics, "process_cpu_seconds_total") >= 0.0);
    assert!(sample(&metrics, "process_start_time_seconds") > 1.7e9);
    assert!(metrics.trim_end().ends_with("# EOF"), "EOF stays last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_in_docs_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tagcast.example.toml");
    let (status, stdout, stderr) = run(&["check-config", "--config", example], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
}

/// Every serve option is read from its flag and from its TAGCAST_* variable: a value it must
/// refuse, given either way, makes `check-config` exit 2 naming the option or the value. The
/// table must hold every option `tagcast serve --help` lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serve_option_is_read_from_its_flag_and_its_variable() {
    let missing = "/nonexistent/tagcast-test-file";
    // The TLS files come in pairs: each row gives a real other half, so the error names the
    // file that was read and refused (distinct paths for the certificate and the key).
    let dir = temp_file("pair/.keep", "");
    let dir = dir.parent().unwrap();
    let (status, _, stderr) = run(&["dev-cert", "--out", dir.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (missing_cert, missing_key) = (
        "/nonexistent/tagcast-cert.pem",
        "/nonexistent/tagcast-key.pem",
    );
    let redis = unreachable_redis_url();
    // option, a value it refuses, what the error names, options that go with it.
    type Row<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Row> = vec![
        ("host", "not-an-ip", "not-an-ip", vec![]),
        ("port", "notaport", "notaport", vec![]),
        ("messages", "xml", "xml", vec![]),
        ("message-schema", missing, missing, vec![]),
        ("auth", missing, missing, vec![]),
        ("authorize-open", "maybe", "maybe", vec![]),
        ("queue-size", "0", "--queue-size", vec![]),
        ("max-message-bytes", "0", "--max-message-bytes", vec![]),
        ("max-connections", "0", "--max-connections", vec![]),
        ("max-tags", "many", "many", vec![]),
        ("rate-limit", "0", "--rate-limit", vec![]),
        ("handshake-timeout", "soon", "soon", vec![]),
        ("ping-interval", "often", "often", vec![]),
        ("idle-timeout", "never", "never", vec![]),
        ("history", "lots", "lots", vec![]),
        ("history-bytes", "lots", "lots", vec![]),
        ("history-ttl", "long", "long", vec![]),
        ("api-key", " ", "--api-key", vec![]),
        ("direct-writes", "maybe", "maybe", vec![]),
        ("signed-tags", "maybe", "maybe", vec![]),
        ("log-format", "xml", "xml", vec![]),
        ("shutdown-grace", "long", "long", vec![]),
        ("static", missing, missing, vec![]),
        ("redis", "http://not-redis", "--redis", vec![]),
        // Refused before Redis is reached (the URL is a socket nobody listens on).
        (
            "redis-channel",
            "",
            "--redis-channel must not be empty",
            vec![("redis", &redis)],
        ),
        (
            "tls-cert",
            missing_cert,
            missing_cert,
            vec![("tls-key", key)],
        ),
        (
            "tls-key",
            missing_key,
            missing_key,
            vec![("tls-cert", cert)],
        ),
        ("config", missing, missing, vec![]),
    ];
    let variable = |option: &str| format!("TAGCAST_{}", option.to_uppercase().replace('-', "_"));

    // Every option of `serve --help` has its row (and no row names an option it lacks).
    let (status, help, stderr) = run(&["serve", "--help"], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let mut listed: Vec<&str> = help
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|name| name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|name| !name.is_empty() && *name != "help" && *name != "version")
        .collect();
    listed.sort_unstable();
    listed.dedup();
    let mut rows: Vec<&str> = cases.iter().map(|row| row.0).collect();
    rows.sort_unstable();
    assert_eq!(
        rows, listed,
        "a row for each option of `tagcast serve --help`:\n{help}"
    );

    for (option, bad, named, with) in &cases {
        let flag = format!("--{option}");
        let mut args = vec!["check-config".to_owned(), flag.clone(), bad.to_string()];
        for (other, value) in with {
            args.extend([format!("--{other}"), value.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, stderr) = run(&args, &[]).await;
        assert_eq!(status.code(), Some(2), "{flag} {bad:?}: {stderr}");
        assert!(stderr.contains(named), "{flag} {bad:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

        let own = variable(option);
        let others: Vec<(String, &str)> = with.iter().map(|(o, v)| (variable(o), *v)).collect();
        let mut env: Vec<(&str, &str)> = vec![(own.as_str(), *bad)];
        env.extend(others.iter().map(|(o, v)| (o.as_str(), *v)));
        let (status, _, stderr) = run(&["check-config"], &env).await;
        assert_eq!(status.code(), Some(2), "{own}={bad:?}: {stderr}");
        assert!(stderr.contains(named), "{own}={bad:?}: {stderr}");
    }
}

/// `tagcast healthcheck` (README "Configuration" and "Docker"): exit 0 when the local server
/// on `TAGCAST_PORT` (or `--port`, which wins) answers `/healthz`, exit 1 when nothing does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_against_a_healthy_server() {
    let server = serve(&[], &[]).await;
    let port = server.addr().port().to_string();
    let (status, stdout, stderr) = run(&["healthcheck"], &[("TAGCAST_PORT", &port)]).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""));
    let (status, stdout, stderr) =
        run(&["healthcheck", "--port", &port], &[("TAGCAST_PORT", "1")]).await;
    assert_eq!(status.code(), Some(0), "the flag wins: {stdout}{stderr}");
    // Nothing on port 1: exit 1 with one line saying why.
    let (status, stdout, stderr) = run(&["healthcheck"], &[("TAGCAST_PORT", "1")]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// A cluster from the command line: `--redis unix:///path` (README's form, not only
/// `redis+unix://`), `--redis-channel` and `TAGCAST_REDIS_CHANNEL` (a node on another channel
/// hears nothing), `TAGCAST_REDIS`; then Redis goes away and `/healthz` answers 503, which
/// `tagcast healthcheck` turns into exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_from_the_command_line_and_healthcheck_when_redis_goes() {
    let mut redis = RedisServer::start();
    let url = format!("unix://{}", redis.socket.display());
    let a = serve(&["--redis", &url, "--redis-channel", "blue"], &[]).await;
    let b = serve(
        &[],
        &[("TAGCAST_REDIS", &url), ("TAGCAST_REDIS_CHANNEL", "blue")],
    )
    .await;
    let c = serve(&["--redis", &url], &[]).await; // the default channel, `tagcast`
    let tags = serde_json::json!({"g": 1});
    let mut on_b = raw(&format!("{}/?tags={}", b.url(), encode(r#"{"g":1}"#))).await;
    let mut on_c = raw(&format!("{}/?tags={}", c.url(), encode(r#"{"g":1}"#))).await;
    b.wait_connections(1).await;
    c.wait_connections(1).await;
    let answer = http_post(a.addr(), "/publish", r#"{"message":"blue","tags":{"g":1}}"#).await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":0}"#),
        "delivered counts the accepting node's recipients"
    );
    assert_eq!(recv_text(&mut on_b).await, r#""blue""#);
    // The node on the default channel heard nothing: its next frame is a marker sent on it.
    assert_nothing_before_marker(&mut on_c, c.addr(), tags.clone()).await;

    let port = b.addr().port().to_string();
    let (status, _, stderr) = run(&["healthcheck"], &[("TAGCAST_PORT", &port)]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    redis.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(b.addr(), "/healthz", "").await.status != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never answered 503 without Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, stdout, stderr) = run(&["healthcheck"], &[("TAGCAST_PORT", &port)]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.starts_with("error: unhealthy: HTTP/1.1 503"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The process is still alive (a Redis outage does not fail liveness).
    assert_eq!(http_get(b.addr(), "/livez", "").await.status, 200);
}

/// README: "address in use" is a configuration error: one line naming the problem, exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_exits_2_with_one_line() {
    let first = serve(&[], &[]).await;
    let port = first.addr().port().to_string();
    let (status, stdout, stderr) =
        run(&["serve", "--host", "127.0.0.1", "--port", &port], &[]).await;
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!("error: cannot listen on 127.0.0.1:{port}: "))
            && lines[0].to_lowercase().contains("address")
            && lines[0].to_lowercase().contains("in use"),
        "{stderr}"
    );
    // The first server is unharmed.
    let answer = http_get(first.addr(), "/healthz", "").await;
    assert_eq!((answer.status, answer.body.trim()), (200, "ok"));
}

/// `--ping-interval 0` and `--idle-timeout 0` mean never (README "Configuration").
///
/// "Never" cannot be shown in a short test: the defaults (30 s and 75 s) would pass any
/// window shorter than that too. So the test shows what it can without a long wait: 0 is
/// accepted, by flag and by variable; the flag's 0 wins over a variable of 1 or 2 (so 0, not
/// that value, is in effect); and each 0 holds over a window in which a small nonzero value
/// fires, measured by a server with those values (`clock`) instead of a sleep. All clients are
/// bare sockets that never write after their handshake, so they answer no ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_ping_interval_and_idle_timeout_mean_never() {
    let (status, stdout, stderr) = run(
        &[
            "check-config",
            "--ping-interval",
            "0",
            "--idle-timeout",
            "0",
        ],
        &[],
    )
    .await;
    assert_eq!(
        (status.code(), stdout.trim()),
        (Some(0), "configuration ok"),
        "{stderr}"
    );
    let zeros = [
        ("TAGCAST_PING_INTERVAL", "0"),
        ("TAGCAST_IDLE_TIMEOUT", "0"),
    ];
    let by_flags = serve(
        &["--ping-interval", "0", "--idle-timeout", "0"],
        &[
            ("TAGCAST_PING_INTERVAL", "1"),
            ("TAGCAST_IDLE_TIMEOUT", "2"),
        ],
    )
    .await;
    let by_variables = serve(&[], &zeros).await;
    let kept = serve(&["--ping-interval", "1", "--idle-timeout", "0"], &[]).await;
    let unpinged = serve(&["--ping-interval", "0", "--idle-timeout", "2"], &[]).await;
    let clock = serve(&["--ping-interval", "1", "--idle-timeout", "2"], &[]).await;
    // Opened in this order: each is silent at least as long as those opened after it.
    let mut by_flags_client = Silent::open(by_flags.addr()).await;
    let mut by_variables_client = Silent::open(by_variables.addr()).await;
    let mut kept_client = Silent::open(kept.addr()).await;
    let mut unpinged_client = Silent::open(unpinged.addr()).await;
    let mut clock_client = Silent::open(clock.addr()).await;

    // The contrast: 1 and 2 pinged it, then dropped it.
    assert_eq!(clock_client.next_frame().await.0, PING);
    let mut frame = clock_client.next_frame().await;
    while frame.0 == PING {
        frame = clock_client.next_frame().await;
    }
    assert_eq!(
        close_of(&frame),
        Some((1001, "idle timeout".to_owned())),
        "{frame:?}"
    );

    // --ping-interval 0 beside --idle-timeout 2: dropped on time, never pinged first.
    let frame = unpinged_client.next_frame().await;
    assert_eq!(
        close_of(&frame),
        Some((1001, "idle timeout".to_owned())),
        "{frame:?}"
    );

    // --idle-timeout 0 beside --ping-interval 1: three unanswered pings (over 2 s of
    // silence, when `clock` dropped its client), and still open: a marker arrives after them.
    for _ in 0..3 {
        assert_eq!(kept_client.next_frame().await.0, PING);
    }
    let marker = publish_marker(kept.addr(), serde_json::json!({})).await;
    let mut frame = kept_client.next_frame().await;
    while frame.0 == PING {
        frame = kept_client.next_frame().await;
    }
    assert_eq!(
        frame,
        (TEXT, format!("\"{marker}\"").into_bytes()),
        "no close before the marker"
    );

    // Both 0: silent longer than all of the above, neither pinged nor dropped: the first
    // frame either gets is a marker sent now.
    for (server, client) in [
        (&by_flags, &mut by_flags_client),
        (&by_variables, &mut by_variables_client),
    ] {
        let marker = publish_marker(server.addr(), serde_json::json!({})).await;
        let frame = client.next_frame().await;
        assert_eq!(
            frame,
            (TEXT, format!("\"{marker}\"").into_bytes()),
            "nothing before the marker"
        );
    }
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// The code and reason of a close frame.
fn close_of(frame: &(u8, Vec<u8>)) -> Option<(u16, String)> {
    (frame.0 == CLOSE && frame.1.len() >= 2).then(|| {
        (
            u16::from_be_bytes([frame.1[0], frame.1[1]]),
            String::from_utf8_lossy(&frame.1[2..]).into_owned(),
        )
    })
}

/// A WebSocket client on a bare TCP socket that writes nothing after its handshake: it
/// answers no ping, as a peer that went away without a goodbye.
struct Silent {
    stream: tokio::net::TcpStream,
    bytes: Vec<u8>,
}

impl Silent {
    async fn open(addr: std::net::SocketAddr) -> Silent {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        let head_end = tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 1024];
            loop {
                if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                    return at + 4;
                }
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed during the handshake");
                bytes.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("a handshake answer in time");
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        bytes.drain(..head_end);
        Silent { stream, bytes }
    }

    /// The next frame from the server: its opcode and payload (server frames are unmasked and,
    /// this small, unfragmented).
    async fn next_frame(&mut self) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some((frame, used)) = parse_frame(&self.bytes) {
                    self.bytes.drain(..used);
                    return frame;
                }
                let n = self.stream.read(&mut buf).await.unwrap_or(0);
                assert!(n > 0, "the socket ended without a frame");
                self.bytes.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("a frame in time")
    }
}

fn parse_frame(bytes: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    let (first, second) = (*bytes.first()?, *bytes.get(1)?);
    assert_eq!(second & 0x80, 0, "server frames are not masked");
    let mut len = usize::from(second & 0x7f);
    let mut at = 2;
    if len == 126 {
        len = usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().unwrap()));
        at = 4;
    } else if len == 127 {
        len = u64::from_be_bytes(bytes.get(2..10)?.try_into().unwrap()) as usize;
        at = 10;
    }
    let payload = bytes.get(at..at + len)?.to_vec();
    Some(((first & 0x0f, payload), at + len))
}
