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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_with_1001() {
    let mut server = serve(&["--shutdown-grace", "30"], &[]).await;
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
/// refuse, given either way, makes `check-config` exit 2 naming the option or the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serve_option_is_read_from_its_flag_and_its_variable() {
    let missing = "/nonexistent/tagcast-test-file";
    let cases: &[(&str, &str, &str)] = &[
        ("host", "not-an-ip", "not-an-ip"),
        ("port", "notaport", "notaport"),
        ("messages", "xml", "xml"),
        ("message-schema", missing, missing),
        ("auth", missing, missing),
        ("authorize-open", "maybe", "maybe"),
        ("queue-size", "0", "--queue-size"),
        ("max-message-bytes", "0", "--max-message-bytes"),
        ("max-connections", "0", "--max-connections"),
        ("max-tags", "many", "many"),
        ("rate-limit", "0", "--rate-limit"),
        ("handshake-timeout", "soon", "soon"),
        ("ping-interval", "often", "often"),
        ("idle-timeout", "never", "never"),
        ("history", "lots", "lots"),
        ("history-bytes", "lots", "lots"),
        ("history-ttl", "long", "long"),
        ("api-key", " ", "--api-key"),
        ("direct-writes", "maybe", "maybe"),
        ("signed-tags", "maybe", "maybe"),
        ("log-format", "xml", "xml"),
        ("shutdown-grace", "long", "long"),
        ("static", missing, missing),
        ("redis", "http://not-redis", "--redis"),
        ("tls-cert", missing, missing),
        ("config", missing, missing),
    ];
    for (option, bad, named) in cases {
        let flag = format!("--{option}");
        let variable = format!("TAGCAST_{}", option.to_uppercase().replace('-', "_"));
        let mut args = vec!["check-config", flag.as_str(), bad];
        // The TLS files come in pairs.
        if *option == "tls-cert" {
            args.extend(["--tls-key", missing]);
        }
        let (status, _, stderr) = run(&args, &[]).await;
        assert_eq!(status.code(), Some(2), "{flag} {bad}: {stderr}");
        assert!(stderr.contains(named), "{flag} {bad}: {stderr}");
        let mut env = vec![(variable.as_str(), *bad)];
        if *option == "tls-cert" {
            env.push(("TAGCAST_TLS_KEY", missing));
        }
        let (status, _, stderr) = run(&["check-config"], &env).await;
        assert_eq!(status.code(), Some(2), "{variable}={bad}: {stderr}");
        assert!(stderr.contains(named), "{variable}={bad}: {stderr}");
    }
}
