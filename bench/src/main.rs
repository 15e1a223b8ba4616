//! `tagcast-bench`: a load generator for Tagcast and any server speaking its raw wire format
//! (the Node `ws` baseline in `bench/baselines/`), so both are measured the same way.
//!
//! Every scenario prints one JSON line. Fan-out runs check that each expected delivery arrived
//! exactly once and in per-publisher order, and report deliveries/s, latency percentiles, and
//! the server's CPU seconds and RSS read from `/proc/PID` (`--server-pid`).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod pusher;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Load scenarios for a tag-routing WebSocket server.
#[derive(Debug, Parser)]
#[command(name = "tagcast-bench", about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Trust this PEM certificate for wss:// URLs (a server started with --tls-cert).
    #[arg(long, global = true, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
}

/// The TLS connector for wss:// URLs, set once from --ca-cert.
static TLS: std::sync::OnceLock<tokio_tungstenite::Connector> = std::sync::OnceLock::new();

/// A rustls client trusting only the certificates in the PEM file at `path`.
fn tls_connector(path: &std::path::Path) -> anyhow::Result<tokio_tungstenite::Connector> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.context("a PEM certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S subscribers tagged {"g": i % G}; P publishers cycle over the groups.
    Fanout(FanoutArgs),
    /// Like fanout, with a share of subscribers that never read.
    Slow(SlowArgs),
    /// S idle connections: server memory per connection.
    Idle(IdleArgs),
    /// Handshakes per second with concurrent connectors.
    Connect(ConnectArgs),
    /// Latency of `GET /presence` by tag set on a node with many connections.
    Presence(PresenceArgs),
    /// Publishers, connection churn and slow consumers together for a while: server RSS at
    /// the end against RSS after warm-up.
    Soak(SoakArgs),
}

#[derive(Debug, Clone, Args)]
struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds to run in all.
    #[arg(long, default_value_t = 300)]
    secs: u64,
    /// Seconds before the reference RSS is read: long enough for every slow subscriber to
    /// have been dropped once.
    #[arg(long, default_value_t = 150)]
    warmup_secs: u64,
    /// Reading subscribers, in 10 groups.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Subscribers that stop reading (each replaced after `--slow-hold-secs`).
    #[arg(long, default_value_t = 10)]
    slow: usize,
    /// Seconds a slow subscriber stays silent before it checks that it was dropped (the
    /// server's socket buffers take about a minute of this load before its queue fills).
    #[arg(long, default_value_t = 120)]
    slow_hold_secs: u64,
    /// Requests per second, all publishers together.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Connections opened and closed per second.
    #[arg(long, default_value_t = 50.0)]
    churn: f64,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// Server URL, e.g. ws://127.0.0.1:8080.
    #[arg(long, value_parser = ws_url)]
    url: String,
    /// The server's process id, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label for the server in the output.
    #[arg(long, default_value = "tagcast")]
    server: String,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    protocol: pusher::ServerProtocol,
}

#[derive(Debug, Clone, Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Groups: subscriber i has tags {"g": i % groups}.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Requests each publisher sends.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Size of each message payload in bytes (at least the 40 bytes of stamps).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Requests of one publisher not yet fully delivered, at most (flow control).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// What frees a slot of the in-flight window: `delivered` (every subscriber got the
    /// request) or `ack` (the publisher's node acknowledged it: requests carry an `id`).
    #[arg(long, value_enum, default_value_t = WindowOn::Delivered)]
    window_on: WindowOn,
    /// Offered rate in requests per second for all publishers together, instead of as fast as
    /// the in-flight window allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Connect the publishers to this URL instead of --url (another node of a cluster).
    /// Repeat it to spread the publishers over several nodes: publisher p connects to the
    /// (p mod n)-th URL.
    #[arg(long, value_parser = ws_url)]
    publish_url: Vec<String>,
    /// Another node of a cluster: the subscribers are spread over --url and every --node-url
    /// (subscriber i on the (i mod n)-th, --url first). Only --url's server is measured by
    /// --server-pid.
    #[arg(long, value_parser = ws_url)]
    node_url: Vec<String>,
    /// How publishers send (bench/src/pusher.rs runs the HTTP ones).
    #[arg(long, value_enum, default_value_t = pusher::PublishOver::Ws)]
    publish_over: pusher::PublishOver,
}

/// What frees a slot of a publisher's in-flight window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WindowOn {
    Delivered,
    Ack,
}

impl FanoutArgs {
    /// The node subscriber `i` connects to: --url and the --node-url list, in turn.
    fn subscriber_url(&self, i: usize) -> &str {
        match i % (1 + self.node_url.len()) {
            0 => &self.common.url,
            n => &self.node_url[n - 1],
        }
    }

    /// The node publisher `p` connects to: the --publish-url list in turn, else --url.
    fn publisher_url(&self, p: usize) -> &str {
        if self.publish_url.is_empty() {
            &self.common.url
        } else {
            &self.publish_url[p % self.publish_url.len()]
        }
    }
}

#[derive(Debug, Clone, Args)]
struct SlowArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Percent of subscribers that never read.
    #[arg(long, default_value_t = 1.0)]
    slow_percent: f64,
}

#[derive(Debug, Clone, Args)]
struct PresenceArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open, tagged {"room": i % rooms, "user": i}.
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Rooms: each presence request counts one room's connections (connections / rooms).
    #[arg(long, default_value_t = 190)]
    rooms: usize,
    /// Presence requests to time, one after the other on one keep-alive HTTP connection.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// The server's `--api-key`.
    #[arg(long)]
    api_key: String,
}

#[derive(Debug, Clone, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to wait before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
}

#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Handshakes to make (each connection opens, then closes).
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Concurrent connectors.
    #[arg(long, default_value_t = 64)]
    connectors: usize,
    /// Measure during a burst fan-out: this many subscribers (one group) receive what one
    /// publisher sends while the handshakes run (0: no load).
    #[arg(long, default_value_t = 0)]
    burst_subscribers: usize,
    /// Requests per second of that publisher. The load generator shares the machine's cores:
    /// a rate its own subscribers can follow measures the server, a flood measures the cores.
    #[arg(long, default_value_t = 500.0)]
    burst_rate: f64,
    /// The burst's subscribers are read every this many milliseconds by one thread that polls
    /// their sockets, instead of each waking for every frame (0: each frame as it comes; the
    /// polled ones need `ws://`). Every frame is still received and counted; the load
    /// generator then pays one read per subscriber and period, and leaves the cores it spent
    /// waking for frames to the handshakes being measured.
    #[arg(long, default_value_t = 0)]
    burst_read_every_ms: u64,
}

/// A publisher sending to every `{"g":0}` subscriber without pause, and subscribers counting
/// what they receive, until stopped: the load beside `connect --burst-subscribers`.
async fn burst_load(
    c: &Common,
    subscribers: usize,
    rate: f64,
    read_every: Duration,
    received: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let urls: Vec<String> = (0..subscribers)
        .map(|_| url_with_tags(&c.url, &json!({ "g": 0 })))
        .collect();
    let (polled, awaited) = if read_every.is_zero() {
        (Vec::new(), urls)
    } else {
        (urls, Vec::new())
    };
    let mut tasks = Vec::new();
    if !polled.is_empty() {
        let (stop, received) = (stop.clone(), received.clone());
        let sockets = tokio::task::spawn_blocking(move || polled_subscribers(&polled)).await??;
        tasks.push(tokio::task::spawn_blocking(move || {
            poll_subscribers(sockets, read_every, &received, &stop)
        }));
    }
    for mut ws in open_all(awaited, c.concurrency).await? {
        let (mut stop, received) = (stop.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(_))) => {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        }));
    }
    let mut publisher = open(&c.url).await?;
    let mut stop = stop.clone();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tasks.push(tokio::spawn(async move {
        let request = Message::text(r#"{"message":"burst","tags":{"g":0}}"#);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    if publisher.send(request.clone()).await.is_err() {
                        break;
                    }
                }
            }
        }
    }));
    // Let the burst reach its pace before the handshakes start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(tasks)
}

/// A burst subscriber read by polling: a blocking `tungstenite` socket made non-blocking.
type Polled = tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
>;

/// Opens `--burst-read-every-ms`'s subscribers, one after the other (plain `ws://` only).
fn polled_subscribers(urls: &[String]) -> anyhow::Result<Vec<Polled>> {
    use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
    urls.iter()
        .map(|url| {
            // A small read buffer, as in `open`: tungstenite zero-fills all of it on each read.
            let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
            let (ws, _) = tokio_tungstenite::tungstenite::client::connect_with_config(
                url.as_str(),
                Some(config),
                3,
            )
            .with_context(|| format!("opening a burst subscriber at {url}"))?;
            let MaybeTlsStream::Plain(stream) = ws.get_ref() else {
                bail!("--burst-read-every-ms runs over ws:// only");
            };
            stream.set_nonblocking(true)?;
            Ok(ws)
        })
        .collect()
}

/// Reads every subscriber's arrived frames once a period, on one thread and without epoll:
/// the load generator then pays one `read` per subscriber and period, whatever the frames.
fn poll_subscribers(
    mut sockets: Vec<Polled>,
    every: Duration,
    received: &AtomicU64,
    stop: &watch::Receiver<bool>,
) {
    use tokio_tungstenite::tungstenite::Error;
    while !*stop.borrow() && !sockets.is_empty() {
        let round = Instant::now();
        let mut frames = 0;
        sockets.retain_mut(|ws| loop {
            match ws.read() {
                Ok(Message::Text(_)) => frames += 1,
                Ok(_) => {}
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        });
        received.fetch_add(frames, Ordering::Relaxed);
        std::thread::sleep(every.saturating_sub(round.elapsed()));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(path) = &cli.ca_cert {
        let _ = TLS.set(tls_connector(path)?);
    }
    let fanout_args = match &cli.scenario {
        Scenario::Fanout(a) => Some(a),
        Scenario::Slow(a) => Some(&a.fanout),
        _ => None,
    };
    if fanout_args.is_some_and(|a| a.window_on == WindowOn::Ack) && pusher::handles(&cli.scenario) {
        bail!(
            "--window-on ack needs a Tagcast server and --publish-over ws: the acks come on the \
             publisher's WebSocket"
        );
    }
    let result = match cli.scenario {
        scenario if pusher::handles(&scenario) => pusher::run(&scenario).await?,
        Scenario::Fanout(args) => fanout(&args, 0.0).await?,
        Scenario::Slow(args) => fanout(&args.fanout, args.slow_percent).await?,
        Scenario::Idle(args) => idle(&args).await?,
        Scenario::Connect(args) => connect_rate(&args).await?,
        Scenario::Presence(args) => presence(&args).await?,
        Scenario::Soak(args) => soak(&args).await?,
    };
    println!("{result}");
    Ok(())
}

/// CPU seconds (user + system) and RSS in KiB of a process.
fn process_stats(pid: Option<u32>) -> Option<(f64, u64)> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
    Some((ticks / 100.0, rss))
}

/// Checks a `--url` once, at start, the way every connection's URL is built from it.
fn ws_url(base: &str) -> Result<String, String> {
    tagcast::url::handshake_url(base, &[])
        .map(|_| base.to_owned())
        .map_err(|e| e.to_string())
}

/// The handshake URL of a connection with `tags`, built by the SDK's own helper.
fn url_with_tags(base: &str, tags: &serde_json::Value) -> String {
    tagcast::url::handshake_url(base, &[("tags", &tags.to_string())])
        .expect("URLs are checked when the arguments are parsed (ws_url)")
}

async fn open(url: &str) -> anyhow::Result<Ws> {
    open_with(url, None).await
}

/// Opens an envelope-mode connection (subprotocol `tagcast.v1`): its requests may carry an `id`
/// and are acknowledged.
async fn open_envelope(url: &str) -> anyhow::Result<Ws> {
    open_with(url, Some("tagcast.v1")).await
}

/// Opens a connection, offering `subprotocol` when given.
async fn open_with(url: &str, subprotocol: Option<&'static str>) -> anyhow::Result<Ws> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request = url.into_client_request()?;
    if let Some(subprotocol) = subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(subprotocol),
        );
    }
    // tungstenite zero-fills its whole read buffer on every read: its 128 KiB default made
    // memset half of this process's CPU time. Frames here are small.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        TLS.get().cloned(),
    )
    .await
    .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// Opens a connection whose socket receives into a 4 KiB buffer, like a client on a slow
/// link: the server's queue for it fills after a few megabytes, not after the kernel's
/// auto-tuned buffers (several megabytes on loopback) soak everything up.
async fn open_slow(url: &str) -> anyhow::Result<Ws> {
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(rest))
        .context("a ws:// URL")?;
    let addr = tokio::net::lookup_host(authority)
        .await?
        .next()
        .context("resolving the server")?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(addr).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// Opens one connection per URL, `concurrency` at a time, in order.
async fn open_all(urls: Vec<String>, concurrency: usize) -> anyhow::Result<Vec<Ws>> {
    open_all_with(urls, concurrency, |_| false).await
}

/// Like [`open_all`], opening the connections `slow` picks with [`open_slow`].
async fn open_all_with(
    urls: Vec<String>,
    concurrency: usize,
    slow: impl Fn(usize) -> bool,
) -> anyhow::Result<Vec<Ws>> {
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(urls.len());
    for (i, url) in urls.into_iter().enumerate() {
        let permit = semaphore.clone().acquire_owned().await?;
        let is_slow = slow(i);
        tasks.push(tokio::spawn(async move {
            let ws = if is_slow {
                open_slow(&url).await
            } else {
                open(&url).await
            };
            drop(permit);
            ws
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Nanoseconds since the run's start, the clock stamped into payloads.
fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// Everything subscribers and publishers share during a fan-out run.
struct Run {
    start: Instant,
    publishers: usize,
    messages: usize,
    groups: usize,
    /// Healthy subscribers in each group: the deliveries each request expects.
    expected: Vec<u32>,
    /// Deliveries so far of each request (publisher * messages + seq).
    received: Vec<AtomicU32>,
    /// Flow control of each publisher.
    windows: Vec<Semaphore>,
    completed: AtomicUsize,
    /// Deliveries beyond what a request expected.
    duplicates: AtomicU64,
    reordered: AtomicU64,
}

impl Run {
    /// A run of `args`'s publishers and messages, each group expecting `expected` deliveries.
    fn new(args: &FanoutArgs, expected: Vec<u32>) -> Arc<Run> {
        Arc::new(Run {
            start: Instant::now(),
            publishers: args.publishers,
            messages: args.messages,
            groups: args.groups,
            expected,
            received: (0..args.publishers * args.messages)
                .map(|_| AtomicU32::new(0))
                .collect(),
            windows: (0..args.publishers)
                .map(|_| Semaphore::new(args.in_flight.max(1)))
                .collect(),
            completed: AtomicUsize::new(0),
            duplicates: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
        })
    }

    /// Deliveries the whole run expects.
    fn expected_deliveries(&self) -> u64 {
        (0..self.publishers)
            .flat_map(|p| (0..self.messages).map(move |s| (p, s)))
            .map(|(p, s)| u64::from(self.expected_for(p, s)))
            .sum()
    }

    fn group_of(&self, publisher: usize, seq: usize) -> usize {
        (seq + publisher) % self.groups
    }

    fn expected_for(&self, publisher: usize, seq: usize) -> u32 {
        self.expected[self.group_of(publisher, seq)]
    }

    /// Counts one delivery; frees the publisher's window when the request is complete.
    fn delivered(&self, publisher: usize, seq: usize) {
        let id = publisher * self.messages + seq;
        let Some(counter) = self.received.get(id) else {
            return;
        };
        let n = counter.fetch_add(1, Ordering::AcqRel) + 1;
        let expected = self.expected_for(publisher, seq);
        if n == expected {
            self.complete(publisher);
        } else if n > expected {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn complete(&self, publisher: usize) {
        self.windows[publisher].add_permits(1);
        self.completed.fetch_add(1, Ordering::AcqRel);
    }
}

/// Parses `"P:SEQ:TS:padding"` (a JSON string) into its stamps.
fn parse_stamp(text: &str) -> Option<(usize, usize, u64)> {
    let inner = text.strip_prefix('"')?;
    let mut parts = inner.splitn(4, ':');
    let p = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    Some((p, seq, ts))
}

/// What one subscriber saw: latencies in µs, and when its last delivery came (ns since start).
struct Seen {
    latencies: Vec<u32>,
    last_ns: u64,
}

async fn subscriber(mut ws: Ws, run: Arc<Run>, mut stop: watch::Receiver<bool>) -> Seen {
    // Counted locally and merged at the end: shared counters would be contended by every
    // delivery and slow the load generator down.
    let mut latencies = Vec::with_capacity(run.messages * run.publishers / run.groups + 16);
    let mut last_ns = 0;
    let mut reordered = 0;
    let mut last_seq: Vec<Option<usize>> = vec![None; run.publishers];
    loop {
        let frame = tokio::select! {
            biased;
            frame = ws.next() => frame,
            _ = stop.changed() => break,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            match frame {
                Some(Ok(_)) => continue,
                _ => break,
            }
        };
        let Some((p, seq, ts)) = parse_stamp(text.as_str()) else {
            continue;
        };
        let now = now_ns(run.start);
        latencies.push(((now.saturating_sub(ts)) / 1000).min(u32::MAX as u64) as u32);
        if let Some(last) = last_seq.get_mut(p) {
            if last.is_some_and(|l| seq <= l) {
                reordered += 1;
            }
            *last = Some(seq);
        }
        last_ns = now;
        run.delivered(p, seq);
    }
    run.reordered.fetch_add(reordered, Ordering::Relaxed);
    Seen { latencies, last_ns }
}

/// A connection that never reads: its queue on the server fills up.
async fn slow_subscriber(ws: Ws, mut stop: watch::Receiver<bool>) -> bool {
    let _ = stop.changed().await;
    // Now read what is left: a slow consumer should find the server's 1008 close or the end.
    let mut ws = ws;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
}

async fn publisher(
    ws: Ws,
    index: usize,
    run: Arc<Run>,
    payload: usize,
    interval: Option<Duration>,
    acks: Option<usize>,
) -> anyhow::Result<()> {
    let (mut ws, mut incoming) = ws.split();
    // With `--window-on ack`, a slot comes back with each answer to a request: its ack, or an
    // error frame (a refused request is then counted as lost instead of stalling the run).
    let acked = acks.map(|n| Arc::new(Semaphore::new(n.max(1))));
    if let Some(acked) = acked.clone() {
        tokio::spawn(async move {
            while let Some(Ok(frame)) = incoming.next().await {
                if let Message::Text(text) = frame {
                    let text = text.as_str();
                    if text.contains(r#""type":"ack""#) || text.contains(r#""type":"error""#) {
                        acked.add_permits(1);
                    }
                }
            }
        });
    }
    let mut padding = String::new();
    for seq in 0..run.messages {
        match (interval, &acked) {
            (Some(every), _) => {
                let due = run.start + every * seq as u32;
                tokio::time::sleep_until(due.into()).await;
            }
            (None, Some(acked)) => acked.acquire().await?.forget(),
            (None, None) => run.windows[index].acquire().await?.forget(),
        }
        let expected = run.expected_for(index, seq);
        let stamp = format!("{index}:{seq}:{}:", now_ns(run.start));
        padding.clear();
        padding.extend(std::iter::repeat_n(
            'x',
            payload.saturating_sub(stamp.len()),
        ));
        let id = if acked.is_some() {
            format!(r#","id":{seq}"#)
        } else {
            String::new()
        };
        let frame = format!(
            r#"{{"message":"{stamp}{padding}","tags":{{"g":{}}}{id}}}"#,
            run.group_of(index, seq)
        );
        ws.send(Message::text(frame)).await.context("publishing")?;
        if expected == 0 {
            run.complete(index);
        }
    }
    // Keep the connection open until the run ends (closing early is not part of the load).
    std::future::pending::<()>().await;
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn fanout(args: &FanoutArgs, slow_percent: f64) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    if args.groups == 0 || args.publishers == 0 {
        bail!("--groups and --publishers must be at least 1");
    }
    let slow_count = ((args.subscribers as f64) * slow_percent / 100.0).round() as usize;
    // Slow subscribers are spread over the groups: every slow-th subscriber.
    let is_slow = |i: usize| {
        slow_count > 0
            && i % (args.subscribers / slow_count).max(1) == 0
            && i / (args.subscribers / slow_count).max(1) < slow_count
    };
    let mut expected = vec![0u32; args.groups];
    let mut urls = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let g = i % args.groups;
        if !is_slow(i) {
            expected[g] += 1;
        }
        urls.push(url_with_tags(args.subscriber_url(i), &json!({ "g": g })));
    }
    let setup = Instant::now();
    let subscribers = open_all_with(urls, c.concurrency, is_slow).await?;
    let publisher_urls: Vec<String> = (0..args.publishers)
        .map(|p| url_with_tags(args.publisher_url(p), &json!({ "publisher": p })))
        .collect();
    let publishers = match args.window_on {
        WindowOn::Delivered => open_all(publisher_urls, c.concurrency).await?,
        WindowOn::Ack => {
            let mut opened = Vec::with_capacity(publisher_urls.len());
            for url in &publisher_urls {
                opened.push(open_envelope(url).await?);
            }
            opened
        }
    };
    let setup_secs = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let total = args.publishers * args.messages;
    let run = Run::new(args, expected);
    let expected_deliveries = run.expected_deliveries();
    let (stop_tx, stop) = watch::channel(false);
    let before = process_stats(c.server_pid);
    let start = Instant::now();

    let mut readers = Vec::new();
    let mut slow_readers = Vec::new();
    for (i, ws) in subscribers.into_iter().enumerate() {
        if is_slow(i) {
            slow_readers.push(tokio::spawn(slow_subscriber(ws, stop.clone())));
        } else {
            readers.push(tokio::spawn(subscriber(ws, run.clone(), stop.clone())));
        }
    }
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.publishers as f64 / r.max(0.001)));
    let mut senders = Vec::new();
    for (index, ws) in publishers.into_iter().enumerate() {
        senders.push(tokio::spawn(publisher(
            ws,
            index,
            run.clone(),
            args.payload,
            interval,
            (args.window_on == WindowOn::Ack).then_some(args.in_flight),
        )));
    }

    // Wait until every request is completely delivered, or the timeout.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while run.completed.load(Ordering::Acquire) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A short drain, so duplicates or late frames would be seen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = process_stats(c.server_pid);
    let _ = stop_tx.send(true);
    for s in &senders {
        s.abort();
    }
    let mut latencies = Vec::new();
    let mut last_ns = 0;
    for r in readers {
        let seen = r.await?;
        latencies.extend(seen.latencies);
        last_ns = last_ns.max(seen.last_ns);
    }
    let mut slow_disconnected = 0;
    for r in slow_readers {
        slow_disconnected += usize::from(r.await?);
    }
    latencies.sort_unstable();

    let deliveries = latencies.len() as u64;
    let elapsed = Duration::from_nanos(last_ns).as_secs_f64().max(1e-9);
    let unique = deliveries - run.duplicates.load(Ordering::Relaxed);
    let (cpu, rss) = match (before, after) {
        (Some((c0, _)), Some((c1, rss))) => (Some(c1 - c0), Some(rss)),
        _ => (None, None),
    };
    let _ = start;
    Ok(json!({
        "scenario": if slow_percent > 0.0 { "slow" } else { "fanout" },
        "server": c.server,
        "subscribers": args.subscribers,
        "groups": args.groups,
        "publishers": args.publishers,
        "messages_per_publisher": args.messages,
        "payload_bytes": args.payload,
        "in_flight": if args.rate.is_some() { serde_json::Value::Null } else { json!(args.in_flight) },
        "window_on": format!("{:?}", args.window_on).to_lowercase(),
        "offered_rate": args.rate,
        "slow_subscribers": slow_count,
        "slow_disconnected": slow_disconnected,
        "setup_secs": round(setup_secs),
        "elapsed_secs": round(elapsed),
        "deliveries": deliveries,
        "expected_deliveries": expected_deliveries,
        "deliveries_per_sec": (deliveries as f64 / elapsed).round(),
        "latency_p50_us": percentile(&latencies, 0.50),
        "latency_p99_us": percentile(&latencies, 0.99),
        "latency_max_us": latencies.last().copied().unwrap_or(0),
        "lost": expected_deliveries.saturating_sub(unique),
        "duplicates": run.duplicates.load(Ordering::Relaxed),
        "reordered": run.reordered.load(Ordering::Relaxed),
        "server_cpu_secs": cpu.map(round),
        "server_cpu_us_per_delivery": cpu.map(|c| round(c * 1e6 / deliveries.max(1) as f64)),
        "server_rss_kib": rss,
    }))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn idle(args: &IdleArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let before = process_stats(c.server_pid);
    let start = Instant::now();
    let urls = (0..args.connections)
        .map(|i| url_with_tags(&c.url, &json!({ "user": i, "g": i % 100 })))
        .collect();
    let connections = open_all(urls, c.concurrency).await?;
    let opened_in = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let after = process_stats(c.server_pid);
    let result = json!({
        "scenario": "idle",
        "server": c.server,
        "connections": connections.len(),
        "open_secs": round(opened_in),
        "server_rss_kib_before": before.map(|b| b.1),
        "server_rss_kib": after.map(|a| a.1),
        "server_rss_bytes_per_connection": match (before, after) {
            (Some((_, b)), Some((_, a))) => json!(((a.saturating_sub(b)) * 1024) / connections.len().max(1) as u64),
            _ => serde_json::Value::Null,
        },
    });
    drop(connections);
    Ok(result)
}

/// Times `GET /presence?tags={"room":N}&by=user` with every connection open: each answer
/// counts one room and lists its users.
async fn presence(args: &PresenceArgs) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let c = &args.common;
    let rooms = args.rooms.max(1);
    let urls = (0..args.connections)
        .map(|i| url_with_tags(&c.url, &json!({ "room": i % rooms, "user": i })))
        .collect();
    let connections = open_all(urls, c.concurrency).await?;
    let host = c
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut http = BufReader::new(TcpStream::connect(&host).await?);
    let mut latencies = Vec::with_capacity(args.requests);
    let expected = (args.connections / rooms) as u64;
    for r in 0..args.requests {
        let room = r % rooms;
        let request = format!(
            "GET /presence?tags=%7B%22room%22%3A{room}%7D&by=user HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\r\n",
            args.api_key
        );
        let started = Instant::now();
        http.get_mut().write_all(request.as_bytes()).await?;
        let mut length = 0;
        let mut status = String::new();
        http.read_line(&mut status).await?;
        loop {
            let mut line = String::new();
            http.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        http.read_exact(&mut body).await?;
        latencies.push(started.elapsed());
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        if !status.contains(" 200 ") || answer["connections"] != json!(expected) {
            bail!("room {room}: expected {expected} connections, got {status} {answer}");
        }
    }
    latencies.sort();
    let ms = |d: Duration| round(d.as_secs_f64() * 1000.0);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    drop(connections);
    Ok(json!({
        "scenario": "presence",
        "server": c.server,
        "connections": args.connections,
        "matching": expected,
        "requests": args.requests,
        "p50_ms": ms(at(0.5)),
        "p99_ms": ms(at(0.99)),
        "max_ms": ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    }))
}

/// The burst beside `connect`, on a runtime and threads of its own: in the connectors'
/// runtime its 1,000 busy receivers would queue the connectors' tasks behind theirs, and the
/// figure would measure the load generator's scheduler instead of the server.
struct BurstThread {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    /// Frames the subscribers have received so far.
    received: Arc<AtomicU64>,
}

impl BurstThread {
    /// Starts the burst and returns once it runs at its pace.
    async fn start(
        c: &Common,
        subscribers: usize,
        rate: f64,
        read_every: Duration,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let (running, started) = tokio::sync::oneshot::channel();
        let c = c.clone();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let tasks = burst_load(&c, subscribers, rate, read_every, counter, stopped).await?;
                let _ = running.send(());
                for task in tasks {
                    task.await?;
                }
                Ok::<(), anyhow::Error>(())
            })
        });
        if started.await.is_err() {
            // The burst could not start: its thread says why.
            return Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the burst's thread ended before it started"),
            });
        }
        Ok(BurstThread {
            stop,
            thread,
            received,
        })
    }

    /// Frames the subscribers have received so far.
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the burst.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::task::spawn_blocking(move || self.thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the burst's thread panicked"))?
    }
}

async fn connect_rate(args: &ConnectArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let load = if args.burst_subscribers > 0 {
        Some(
            BurstThread::start(
                c,
                args.burst_subscribers,
                args.burst_rate,
                Duration::from_millis(args.burst_read_every_ms),
            )
            .await?,
        )
    } else {
        None
    };
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let before = process_stats(c.server_pid);
    let received_before = load.as_ref().map_or(0, BurstThread::received);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connectors.max(1) {
        let (next, failures, url, n) = (
            next.clone(),
            failures.clone(),
            c.url.clone(),
            args.connections,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match open(&url_with_tags(&url, &json!({ "user": i }))).await {
                    Ok(mut ws) => {
                        let _ = ws.close(None).await;
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = process_stats(c.server_pid);
    let failed = failures.load(Ordering::Relaxed);
    // The frames received while the handshakes ran (a reader every 50 ms counts up to 50 ms
    // late, at both ends alike).
    let burst_deliveries = load.as_ref().map_or(0, BurstThread::received) - received_before;
    if let Some(load) = load {
        load.stop().await?;
    }
    Ok(json!({
        "scenario": "connect",
        "server": c.server,
        "connections": args.connections,
        "connectors": args.connectors,
        "burst_subscribers": args.burst_subscribers,
        "burst_rate": args.burst_rate,
        "burst_read_every_ms": args.burst_read_every_ms,
        "burst_deliveries_per_sec": (burst_deliveries as f64 / elapsed).round(),
        "failed": failed,
        "elapsed_secs": round(elapsed),
        "connects_per_sec": ((args.connections - failed) as f64 / elapsed).round(),
        "server_cpu_secs": match (before, after) { (Some(b), Some(a)) => json!(round(a.0 - b.0)), _ => serde_json::Value::Null },
        "server_rss_kib": after.map(|a| a.1),
    }))
}

async fn soak(args: &SoakArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let stop_at = Instant::now() + Duration::from_secs(args.secs);
    let delivered = Arc::new(AtomicU64::new(0));
    let reordered = Arc::new(AtomicU64::new(0));
    // Reading subscribers: count deliveries and check each publisher's order.
    let urls = (0..args.subscribers)
        .map(|i| url_with_tags(&c.url, &json!({ "g": i % 10 })))
        .collect();
    let mut tasks = Vec::new();
    for mut ws in open_all(urls, c.concurrency).await? {
        let (delivered, reordered) = (delivered.clone(), reordered.clone());
        tasks.push(tokio::spawn(async move {
            let mut last: Vec<Option<usize>> = vec![None; 4];
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(stop_at.into(), ws.next()).await
            {
                if let Message::Text(text) = frame {
                    if let Some((p, seq, _)) = parse_stamp(text.as_str()) {
                        if let Some(l) = last.get_mut(p) {
                            if l.is_some_and(|l| seq <= l) {
                                reordered.fetch_add(1, Ordering::Relaxed);
                            }
                            *l = Some(seq);
                        }
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Slow subscribers on every group: each stops reading for `slow_hold_secs`, so the
    // server's queue for it fills up and it must be dropped; then it reads to see whether it
    // was (the close frame or the end of the stream within 5 s), and a new one takes its place.
    let slow_dropped = Arc::new(AtomicU64::new(0));
    let slow_kept = Arc::new(AtomicU64::new(0));
    let hold = Duration::from_secs(args.slow_hold_secs);
    // Staggered over half a hold, so that some are always filling up (a steady load, not
    // waves) and all have been dropped once by the end of the warm-up.
    let stagger = hold / (2 * args.slow.max(1)) as u32;
    for i in 0..args.slow {
        let (url, dropped, kept) = (
            url_with_tags(&c.url, &json!({ "g": i % 10 })),
            slow_dropped.clone(),
            slow_kept.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(stagger * i as u32).await;
            while Instant::now() + hold < stop_at {
                let Ok(mut ws) = open_slow(&url).await else {
                    return;
                };
                tokio::time::sleep(hold).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    match tokio::time::timeout_at(deadline, ws.next()).await {
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(Some(Ok(_))) => {}
                        Err(_) => {
                            kept.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    // Churn: connections that open and close.
    let churned = Arc::new(AtomicU64::new(0));
    {
        let (url, churned, every) = (
            c.url.clone(),
            churned.clone(),
            Duration::from_secs_f64(1.0 / args.churn.max(0.1)),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut i = 0u64;
            while Instant::now() < stop_at {
                tick.tick().await;
                i += 1;
                if let Ok(mut ws) = open(&url_with_tags(&url, &json!({ "churn": i }))).await {
                    let _ = ws.close(None).await;
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Four publishers at a fixed total rate, 1 KiB payloads.
    let start = Instant::now();
    for p in 0..4usize {
        let url = url_with_tags(&c.url, &json!({ "publisher": p }));
        let every = Duration::from_secs_f64(4.0 / args.rate.max(0.1));
        tasks.push(tokio::spawn(async move {
            let Ok(mut ws) = open(&url).await else { return };
            let mut tick = tokio::time::interval(every);
            let padding = "x".repeat(1000);
            let mut seq = 0usize;
            while Instant::now() < stop_at {
                tick.tick().await;
                let frame = format!(
                    r#"{{"message":"{p}:{seq}:{}:{padding}","tags":{{"g":{}}}}}"#,
                    now_ns(start),
                    seq % 10
                );
                if ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
                seq += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    let warm = process_stats(c.server_pid);
    let mut samples = Vec::new();
    while Instant::now() + Duration::from_secs(10) < stop_at {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Some((_, rss)) = process_stats(c.server_pid) {
            samples.push(rss);
        }
    }
    let end = process_stats(c.server_pid);
    // Let the last slow subscribers find out whether they were dropped (up to 5 s).
    tokio::time::sleep_until((stop_at + Duration::from_secs(6)).into()).await;
    for t in tasks {
        t.abort();
    }
    Ok(json!({
        "scenario": "soak",
        "server": c.server,
        "secs": args.secs,
        "subscribers": args.subscribers,
        "slow": args.slow,
        "rate": args.rate,
        "churn_per_sec": args.churn,
        "deliveries": delivered.load(Ordering::Relaxed),
        "reordered": reordered.load(Ordering::Relaxed),
        "slow_hold_secs": args.slow_hold_secs,
        "slow_dropped": slow_dropped.load(Ordering::Relaxed),
        "slow_not_dropped": slow_kept.load(Ordering::Relaxed),
        "churned": churned.load(Ordering::Relaxed),
        "server_rss_kib_after_warmup": warm.map(|w| w.1),
        "server_rss_kib_samples": samples,
        "server_rss_kib_end": end.map(|e| e.1),
        "end_over_warm": match (warm, end) {
            (Some((_, w)), Some((_, e))) if w > 0 => json!(round(e as f64 / w as f64)),
            _ => serde_json::Value::Null,
        },
        "server_cpu_secs": match (warm, end) { (Some(w), Some(e)) => json!(round(e.0 - w.0)), _ => serde_json::Value::Null },
    }))
}
