//! The `tagcast` binary (PROTOCOL.md §9): `serve`, `send` and `listen` as a user runs them.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::util::*;

/// How long a child process may take to start, answer or exit.
const PROCESS_WAIT: Duration = Duration::from_secs(15);

/// The `tagcast` binary with `args`, and of the environment only what `env` sets.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(tagcast_bin());
    command.args(args).kill_on_drop(true);
    // Every TAGCAST_* variable of the test's own environment is cleared: only what a test
    // sets reaches the binary.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("TAGCAST_") || n == "RUST_LOG")
        {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// A running child: its output lines arrive on channels and the whole stderr is kept.
/// Dropping it kills the process.
pub(super) struct Running {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_log: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn lines<R>(reader: R, log: Option<Arc<Mutex<String>>>) -> mpsc::UnboundedReceiver<String>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(log) = &log {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    rx
}

/// Starts `tagcast` with `args` (for other modules' tests).
pub(super) fn spawn_tagcast(args: &[&str], env: &[(&str, &str)]) -> Running {
    spawn(args, env)
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = command(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tagcast");
    let stderr_log = Arc::new(Mutex::new(String::new()));
    let stdout = lines(child.stdout.take().unwrap(), None);
    let stderr = lines(child.stderr.take().unwrap(), Some(stderr_log.clone()));
    Running {
        child,
        stdout,
        stderr,
        stderr_log,
    }
}

impl Running {
    /// The first stderr line containing `needle` (earlier lines are skipped).
    pub(super) async fn stderr_line_with(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.stderr.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!(
                "stderr ended without {needle:?}: {}",
                self.stderr_log.lock().unwrap()
            );
        };
        match tokio::time::timeout(PROCESS_WAIT, wait).await {
            Ok(line) => line,
            Err(_) => panic!(
                "no stderr line with {needle:?} in time: {}",
                self.stderr_log.lock().unwrap()
            ),
        }
    }

    pub(super) async fn next_stdout_line(&mut self) -> String {
        tokio::time::timeout(PROCESS_WAIT, self.stdout.recv())
            .await
            .expect("a stdout line in time")
            .expect("stdout still open")
    }

    pub(super) async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(PROCESS_WAIT, self.child.wait())
            .await
            .expect("the process exits in time")
            .unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Sends SIGTERM through `kill(1)`.
    pub(super) fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGINT through `kill(1)`.
    pub(super) fn interrupt(&self) {
        self.signal("-INT");
    }

    fn signal(&self, which: &str) {
        let status = std::process::Command::new("kill")
            .args([which, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// The whole stderr once the process has exited and its pipe is drained.
    pub(super) async fn stderr_after_exit(&mut self) -> String {
        self.exit_status().await;
        // The reader task ends with the pipe; wait for it. A log cut off here could hide what
        // a test checks is absent (a secret), so a pipe still open in time fails the test.
        tokio::time::timeout(PROCESS_WAIT, async {
            while self.stderr.recv().await.is_some() {}
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "stderr not drained within {PROCESS_WAIT:?} of the exit; so far: {}",
                self.stderr_log.lock().unwrap()
            )
        });
        self.stderr_log.lock().unwrap().clone()
    }
}

/// Runs a short command to its end; returns exit status, stdout and stderr.
pub(super) async fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let output = command(args, env).stdin(Stdio::null()).output();
    let output = tokio::time::timeout(PROCESS_WAIT, output)
        .await
        .unwrap_or_else(|_| panic!("tagcast {args:?} did not finish in time"))
        .expect("run tagcast");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `tagcast serve` on 127.0.0.1 with an OS-picked port; killed when dropped.
pub(super) struct Serve {
    process: Running,
    port: u16,
}

impl Serve {
    /// Where it listens.
    pub(super) fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(super) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM.
    pub(super) fn terminate(&self) {
        self.process.terminate();
    }

    /// Waits for the process to exit.
    pub(super) async fn exit_status(&mut self) -> ExitStatus {
        self.process.exit_status().await
    }

    /// The whole stderr once the process has exited.
    pub(super) async fn stderr_after_exit(&mut self) -> String {
        self.process.stderr_after_exit().await
    }

    /// Waits until `/metrics` counts `n` open connections.
    pub(super) async fn wait_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let metrics = http_get(self.addr(), "/metrics", "").await.body;
            let open = sample(&metrics, "tagcast_connections");
            if open == n as f64 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} connections, the server has {open}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The port of the `listening on 127.0.0.1:PORT` line.
async fn listening_port(process: &mut Running) -> u16 {
    let line = process.stderr_line_with("listening on").await;
    let address = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let address: std::net::SocketAddr = address
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    assert_eq!(address.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(address.port(), 0, "{line}");
    address.port()
}

/// Starts `tagcast serve` with `extra` arguments and waits until it listens.
pub(super) async fn serve(extra: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut args = vec!["serve", "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    let mut process = spawn(&args, env);
    let port = listening_port(&mut process).await;
    Serve { process, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_where_it_listens_and_answers_healthz() {
    let server = serve(&[], &[]).await;
    let addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let answer = http_get(addr, "/healthz", "").await;
    assert_eq!((answer.status, answer.body.trim()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_frames_and_send_prints_delivered() {
    let server = serve(&[], &[]).await;
    let addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut fr = spawn(
        &[
            "listen",
            "--url",
            &server.url(),
            "--tags",
            r#"{"language":"FR"}"#,
        ],
        &[],
    );
    fr.stderr_line_with("connected").await;
    let mut en = raw(&format!(
        "{}/?tags={}",
        server.url(),
        encode(r#"{"language":"EN"}"#)
    ))
    .await;

    let (status, stdout, stderr) = run(
        &[
            "send",
            "--url",
            &server.url(),
            "--tags",
            r#"{"language":"FR"}"#,
            "Bonjour",
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stdout.trim(), "delivered 1");
    assert_eq!(fr.next_stdout_line().await, r#""Bonjour""#);
    // The English connection got nothing: its next frame is a marker sent to it after.
    assert_nothing_before_marker(&mut en, addr, serde_json::json!({"language": "EN"})).await;

    // In JSON mode a structured message is printed as the frame's JSON text.
    let (status, _, stderr) = run(
        &["send", "--url", &server.url(), "--json", r#""Salut""#],
        &[],
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert_eq!(fr.next_stdout_line().await, r#""Salut""#);
    // One line per message: the next line is a marker's, sent after.
    let marker = publish_marker(addr, serde_json::json!({"language": "FR"})).await;
    assert_eq!(fr.next_stdout_line().await, format!("\"{marker}\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reports_the_servers_refusal_and_exits_1() {
    let server = serve(&[], &[]).await; // string mode
    let (status, stdout, stderr) = run(
        &["send", "--url", &server.url(), "--json", r#"{"a":1}"#],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(1), "stdout: {stdout} stderr: {stderr}");
    assert!(!stdout.contains("delivered"), "{stdout}");
    assert!(
        stderr.contains("The 'message' property is not a string"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_delivers_structured_messages() {
    let server = serve(&["--messages", "json"], &[]).await;
    let mut r = raw(&server.url()).await;
    server.wait_connections(1).await;
    let (status, stdout, stderr) = run(
        &["send", "--url", &server.url(), "--json", r#"{"a":1}"#],
        &[],
    )
    .await;
    assert!(status.success(), "{stderr}");
    // Empty tags reach everyone: `r` (send posts to /publish, so it is not a recipient).
    assert_eq!(stdout.trim(), "delivered 1");
    assert_eq!(recv_text(&mut r).await, r#"{"a":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagcast_url_is_read_and_a_flag_wins_over_it() {
    let server = serve(&[], &[]).await;
    let url = server.url();
    let mut listener = spawn(&["listen"], &[("TAGCAST_URL", &url)]);
    listener.stderr_line_with("connected").await;
    server.wait_connections(1).await;

    let (status, stdout, stderr) =
        run(&["send", "from the variable"], &[("TAGCAST_URL", &url)]).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "delivered 1");
    assert_eq!(listener.next_stdout_line().await, r#""from the variable""#);

    // A URL where nothing listens in the variable, the right one in the flag.
    let (status, stdout, stderr) = run(
        &["send", "--url", &url, "from the flag"],
        &[("TAGCAST_URL", "ws://127.0.0.1:1")],
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "delivered 1");
    assert_eq!(listener.next_stdout_line().await, r#""from the flag""#);

    // And the variable alone, pointing nowhere, fails.
    let (status, _, stderr) = run(&["send", "lost"], &[("TAGCAST_URL", "ws://127.0.0.1:1")]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagcast_port_is_read_and_a_flag_wins_over_it() {
    // The variable alone: port 0 instead of the default 8080.
    let mut process = spawn(
        &["serve"],
        &[("TAGCAST_HOST", "127.0.0.1"), ("TAGCAST_PORT", "0")],
    );
    let port = listening_port(&mut process).await;
    assert_ne!(port, 8080);
    drop(process);

    // A bad variable is read (and refused)...
    let (status, _, stderr) = run(
        &["serve", "--host", "127.0.0.1"],
        &[("TAGCAST_PORT", "notanumber")],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("notanumber"), "{stderr}");
    // ...unless the flag overrides it.
    let server = serve(&[], &[("TAGCAST_PORT", "notanumber")]).await;
    let _ws = raw(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_auth_file_exits_2_with_one_line_naming_it() {
    let path = std::env::temp_dir().join("tagcast-tests-missing-dir/nonexistent.yml");
    let path = path.to_str().unwrap();
    let (status, stdout, stderr) = run(
        &[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--auth",
            path,
        ],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(path), "{stderr}");
    // The `listening on` line goes to stderr: the server never started; stdout stays empty.
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(stdout.trim().is_empty(), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_auth_file_exits_2_naming_the_application() {
    let file = temp_file(
        "auth.yml",
        "applications:\n  - key: a\n    secret: s\n    authorizeOpen: true\n  - key: b\n    authorizeOpen: true\n",
    );
    let file = file.to_str().unwrap();
    let (status, _, stderr) = run(
        &[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--auth",
            file,
        ],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(file) && stderr.contains("application 2"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_port_flag_exits_2() {
    let (status, _, stderr) = run(
        &["serve", "--host", "127.0.0.1", "--port", "notanumber"],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        first.contains("notanumber") && first.contains("port"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one line: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_with_1001_and_exits_0() {
    // No drain: straight to the close (the drain has its own test in operations.rs).
    let mut server = serve(&["--shutdown-grace", "0"], &[]).await;
    let mut a = raw(&server.url()).await;
    let mut b = envelope(&server.url()).await;
    server.wait_connections(2).await;
    send_text(&mut b, r#"{"id":1,"message":"ready"}"#).await;
    assert_eq!(recv_text(&mut a).await, r#""ready""#);

    server.process.terminate();
    assert_eq!(recv_close(&mut a).await.0, 1001);
    assert_eq!(recv_close(&mut b).await.0, 1001);
    let status = server.process.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_disconnect_use_the_server_api() {
    let server = serve(&["--api-key", API_KEY], &[]).await;
    let url = server.url();
    let mut room = raw(&format!(
        "{url}/?tags={}",
        encode(r#"{"room":42,"user":7}"#)
    ))
    .await;
    let _other = raw(&format!(
        "{url}/?tags={}",
        encode(r#"{"room":43,"user":8}"#)
    ))
    .await;
    server.wait_connections(2).await;
    let (status, stdout, stderr) = run(
        &[
            "presence",
            "--url",
            &url,
            "--tags",
            r#"{"room":42}"#,
            "--by",
            "user",
        ],
        &[("TAGCAST_API_KEY", API_KEY)],
    )
    .await;
    assert!(status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"connections": 1, "values": {"7": 1}, "truncated": false, "partial": false})
    );
    let (status, stdout, stderr) = run(
        &[
            "disconnect",
            "--url",
            &url,
            "--api-key",
            API_KEY,
            "--tags",
            r#"{"user":7}"#,
            "--reason",
            "bye",
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "disconnected 1");
    assert_eq!(recv_close(&mut room).await, (4001, "bye".to_owned()));
    // A wrong key: the server's refusal, exit 1.
    let (status, _, stderr) = run(&["presence", "--url", &url, "--api-key", "wrong"], &[]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_at_once_without_a_drain() {
    let mut server = serve(&["--shutdown-grace", "60"], &[]).await;
    let mut ws = raw(&server.url()).await;
    server.wait_connections(1).await;
    server.process.interrupt();
    assert_eq!(recv_close(&mut ws).await.0, 1001);
    let status = server.process.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status}");
}

/// `serve --auth` (every connection needs an application) with a trace-level log and no
/// drain, for the tests that read the whole log for secrets.
async fn serve_traced_under_auth(extra: &[&str]) -> Serve {
    let auth = temp_file("auth.yml", AUTH_YAML);
    let mut args = vec![
        "--auth",
        auth.to_str().unwrap(),
        "--authorize-open",
        "false",
        "--shutdown-grace",
        "0",
    ];
    args.extend_from_slice(extra);
    serve(&args, &[("RUST_LOG", "trace")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let mut server = serve_traced_under_auth(&["--api-key", API_KEY]).await;
    let base = server.url();

    // The API key, right and wrong, on /publish and the API.
    let bearer = format!("Authorization: Bearer {API_KEY}\r\n");
    let answer = http_request(
        server.addr(),
        "POST",
        "/publish",
        &bearer,
        br#"{"message":"x"}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = http_get(server.addr(), "/presence", &bearer).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let wrong = format!("Authorization: Bearer {API_KEY}x\r\n");
    assert_eq!(
        http_get(server.addr(), "/presence", &wrong).await.status,
        401
    );

    // Opening with the key and secret in the query; sending with them in metadata.
    let mut client = raw(&format!(
        "{base}/?key=application2&secret={SECRET2}&tags={}",
        encode(r#"{"language":"FR"}"#)
    ))
    .await;
    let request = serde_json::json!({
        "message": "Bonjour",
        "tags": {"language": "FR"},
        "metadata": {"key": "application2", "secret": SECRET2},
    });
    send_text(&mut client, &request.to_string()).await;
    assert_eq!(recv_text(&mut client).await, r#""Bonjour""#);

    // Refusals carrying a wrong (but real) secret are logged too.
    let (status, _) = refused(&format!("{base}/?key=application2&secret={SECRET1}")).await;
    assert_eq!(status, 401);
    let mut other = envelope(&format!("{base}/?key=application1&secret={SECRET1}")).await;
    send_text(
        &mut other,
        &serde_json::json!({
            "id": 1,
            "message": "x",
            "metadata": {"key": "application2", "secret": SECRET1},
        })
        .to_string(),
    )
    .await;
    assert_eq!(recv_json(&mut other).await["code"], "unauthorized");

    server.process.terminate();
    // Both answer the close, so the server does not wait out its close grace for them.
    assert_eq!(recv_close(&mut client).await.0, 1001);
    assert_eq!(recv_close(&mut other).await.0, 1001);
    let log = server.process.stderr_after_exit().await;
    assert!(log.contains("listening on"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("TRACE")),
        "RUST_LOG=trace gives trace lines: {log}"
    );
    assert!(
        log.lines().filter(|l| l.contains("DEBUG")).count() >= 3,
        "connections and requests are logged at debug level: {log}"
    );
    assert!(!log.contains(SECRET2), "SECRET2 in the log:\n{log}");
    assert!(!log.contains(SECRET1), "SECRET1 in the log:\n{log}");
    assert!(!log.contains(API_KEY), "the API key in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log() {
    let mut server = serve_traced_under_auth(&["--signed-tags"]).await;
    let base = server.url();
    // Signed-tags tokens, by query and by subprotocol, good and forged: a token is a bearer
    // credential, so none of its text is logged (its signature is the part that matters).
    let user7 = tagcast::Tags::new().with("user", 7);
    let good = tagcast::sign_tags("application2", SECRET2, &user7, Duration::from_secs(60));
    let forged = tagcast::sign_tags("application2", SECRET1, &user7, Duration::from_secs(60));
    let mut by_query = raw(&format!("{base}/?token={good}")).await;
    let (status, _) = refused(&format!("{base}/?token={forged}")).await;
    assert_eq!(status, 401);
    let mut request = base.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("tagcast.token.{good}")).unwrap(),
    );
    let (mut by_protocol, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let signatures = [&good, &forged].map(|t| t.rsplit('.').next().unwrap().to_owned());

    server.process.terminate();
    // Both token connections were admitted and stayed open until the stop.
    assert_eq!(recv_close(&mut by_query).await.0, 1001);
    assert_eq!(recv_close(&mut by_protocol).await.0, 1001);
    let log = server.process.stderr_after_exit().await;
    assert!(
        log.lines().filter(|l| l.contains("DEBUG")).count() >= 3,
        "connections are logged at debug level: {log}"
    );
    for signature in &signatures {
        assert!(
            !log.contains(signature.as_str()),
            "a token in the log:\n{log}"
        );
    }
}

const API_KEY: &str = "k3y-0f-the-server-api-9f8e7d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_exits_2_naming_it() {
    // `serve --redis URL`: its exit code and stderr.
    async fn serve_with_redis(url: &str) -> (Option<i32>, String) {
        let args = [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--redis",
            url,
        ];
        let (status, _, stderr) = run(&args, &[]).await;
        (status.code(), stderr)
    }
    // With a password in the URL the error names the URL with the password masked.
    let (code, stderr) = serve_with_redis("redis://tagcast:hunter2-redis-pass@127.0.0.1:1/").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("redis://tagcast:***@127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-redis-pass"), "{stderr}");
    let url = unreachable_redis_url();
    let (code, stderr) = serve_with_redis(&url).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// README "Authorization" and "Signed tags" through the binary: under `serve --auth` a send
/// without credentials is refused (exit 1, the server's reason), and one with an application's
/// `--metadata`, with `--api-key` or with `TAGCAST_API_KEY` is delivered; the listener opened
/// with a `tagcast token` hears exactly the accepted ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_under_auth_needs_metadata_or_the_api_key() {
    let auth = temp_file("auth.yml", AUTH_YAML);
    let server = serve(
        &[
            "--auth",
            auth.to_str().unwrap(),
            "--authorize-open",
            "false",
            "--signed-tags",
        ],
        &[("TAGCAST_API_KEY", API_KEY)],
    )
    .await;
    let http = format!("http://127.0.0.1:{}", server.port);
    let (status, token, stderr) = run(
        &[
            "token",
            "--key",
            "application1",
            "--secret",
            SECRET1,
            "--tags",
            r#"{"user":42}"#,
            "--ttl",
            "3600",
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{stderr}");
    let token = token.trim();
    // Without a token the listener is refused (401, the reason first), exit 1.
    let (status, stdout, stderr) = run(&["listen", "--url", &server.url()], &[]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("missing"),
        "{stderr}"
    );
    let mut listener = spawn(
        &[
            "listen",
            "--url",
            &format!("{}/?token={token}", server.url()),
        ],
        &[],
    );
    listener.stderr_line_with("connected").await;
    server.wait_connections(1).await;

    let for42 = ["--tags", r#"{"user":42}"#];
    let send = |extra: &[&str], message: &str| {
        let mut args = vec!["send", "--url", http.as_str()];
        args.extend_from_slice(&for42);
        args.extend_from_slice(extra);
        args.push(message);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run_send = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&args, &env).await
    };

    // Refused: no credentials, a wrong secret, a wrong API key (flag or variable).
    let wrong_secret = format!(r#"{{"key":"application1","secret":"{SECRET2}"}}"#);
    // A send's arguments and environment.
    type Sent = (Vec<String>, Vec<(&'static str, String)>);
    const NEEDS_METADATA: &str =
        "sending requires the 'key' and 'secret' of an application in 'metadata'";
    let wrong_key =
        format!("the Authorization header's API key is wrong; without it, {NEEDS_METADATA}");
    let refusals: [(Sent, &str); 4] = [
        ((send(&[], "no credentials"), vec![]), NEEDS_METADATA),
        (
            (send(&["--metadata", &wrong_secret], "wrong secret"), vec![]),
            NEEDS_METADATA,
        ),
        (
            (send(&["--api-key", "wrong"], "wrong key"), vec![]),
            &wrong_key,
        ),
        (
            (
                send(&[], "wrong key variable"),
                vec![("TAGCAST_API_KEY", "wrong".to_owned())],
            ),
            &wrong_key,
        ),
    ];
    for ((args, env), why) in refusals {
        let shown = format!("{args:?} {env:?}");
        let (status, stdout, stderr) = run_send(args, env).await;
        assert_eq!(status.code(), Some(1), "{shown}: {stdout}{stderr}");
        assert!(!stdout.contains("delivered"), "{shown}: {stdout}");
        // The server's 401 as `send` prints it; a wrong API key says so.
        assert_eq!(
            stderr.trim_end(),
            format!("error: HTTP 401: {why}"),
            "{shown}"
        );
    }
    // Accepted: the application's credentials in --metadata, --api-key, TAGCAST_API_KEY.
    let credentials = format!(r#"{{"key":"application1","secret":"{SECRET1}"}}"#);
    let accepted: [Sent; 3] = [
        (send(&["--metadata", &credentials], "by metadata"), vec![]),
        (send(&["--api-key", API_KEY], "by the key flag"), vec![]),
        (
            send(&[], "by the key variable"),
            vec![("TAGCAST_API_KEY", API_KEY.to_owned())],
        ),
    ];
    for (args, env) in accepted {
        let message = args.last().unwrap().clone();
        let (status, stdout, stderr) = run_send(args, env).await;
        assert!(status.success(), "{message}: {stderr}");
        assert_eq!(stdout.trim(), "delivered 1", "{message}");
        // The refused sends reached nobody: the listener's next line is this one.
        assert_eq!(listener.next_stdout_line().await, format!("\"{message}\""));
    }
}
