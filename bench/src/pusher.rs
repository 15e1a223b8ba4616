//! Sockudo (a Pusher-protocol server) and HTTP publishing, measured like Tagcast.
//!
//! `--server-protocol pusher` runs `fanout`, `idle` and `connect` against Sockudo: a subscriber
//! connects to `/app/KEY?protocol=2`, waits for `connection_established`, and subscribes to one
//! channel with the tag filter equivalent to Tagcast's tags (`{"g": i % G}` becomes
//! `eq("g", "<i % G>")`); publishers publish over Sockudo's REST API (`POST
//! /apps/ID/events`, Pusher-signed, with `tags` in the body), one request per connection as
//! its API answers every request with `Connection: close`.
//!
//! `--publish-over http` or `http-keep-alive` makes Tagcast's publishers do the same through
//! `POST /publish` (a new connection per request, or one kept-alive connection each), so both
//! servers can be compared on the same pattern and Tagcast on its own.
//!
//! Deliveries are counted the way `fanout` counts them (`Run`): exactly once, in order per
//! publisher. An HTTP publisher sends its next request only after the answer to the previous
//! one (HTTP gives no order between concurrent requests); `--in-flight` still bounds how many
//! of its requests may be answered but not yet completely delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::{
    now_ns, open, open_all, parse_stamp, percentile, process_stats, round, subscriber,
    url_with_tags, ConnectArgs, FanoutArgs, IdleArgs, Run, Scenario, Seen, Ws,
};

/// The event name every publisher sends (Sockudo needs one; Tagcast has none).
const EVENT: &str = "m";

/// How the server is spoken to.
#[derive(Debug, Clone, Args)]
pub struct ServerProtocol {
    /// tagcast: raw frames, tags in the handshake URL. pusher: Sockudo's Pusher protocol
    /// (`/app/KEY`, one channel, a tag filter per subscriber, Pusher-signed HTTP publishing).
    #[arg(long, value_enum, default_value_t = Protocol::Tagcast)]
    pub server_protocol: Protocol,
    /// Pusher app id (`--server-protocol pusher`).
    #[arg(long, default_value = "bench")]
    pub app_id: String,
    /// Pusher app key.
    #[arg(long, default_value = "bench-key")]
    pub app_key: String,
    /// Pusher app secret, for the HMAC-SHA256 signature of each publish request.
    #[arg(long, default_value = "bench-secret")]
    pub app_secret: String,
    /// Pusher channel every subscriber joins (with its own tag filter).
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Sockudo protocol version: 2 (`sockudo:` events, what tag filtering is documented for)
    /// or 1 (`pusher:` events).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub pusher_protocol: u8,
    /// How a group reaches its subscribers: `filter` (one channel, a tag filter per
    /// subscriber: Sockudo's tag filtering, what Tagcast's tags compare with) or `channel` (a
    /// channel per group, `CHANNEL-G`, no filter: plain Pusher routing).
    #[arg(long, value_enum, default_value_t = Routing::Filter)]
    pub pusher_routing: Routing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    Filter,
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Tagcast,
    Pusher,
}

/// How fan-out publishers send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishOver {
    /// Frames on one WebSocket per publisher (Tagcast only).
    Ws,
    /// HTTP, a new connection per request (Tagcast's `POST /publish` with `Connection:
    /// close`; Sockudo's `POST /apps/ID/events`).
    Http,
    /// HTTP, one kept-alive connection per publisher (Tagcast only: Sockudo closes each).
    HttpKeepAlive,
}

impl ServerProtocol {
    fn pusher(&self) -> bool {
        self.server_protocol == Protocol::Pusher
    }

    /// Event prefix of the protocol version (`pusher:` or `sockudo:`).
    fn prefix(&self) -> &'static str {
        if self.pusher_protocol == 2 {
            "sockudo:"
        } else {
            "pusher:"
        }
    }

    /// The channel group `g` is published on and subscribed to.
    fn channel(&self, g: usize) -> String {
        match self.pusher_routing {
            Routing::Filter => self.channel.clone(),
            Routing::Channel => format!("{}-{g}", self.channel),
        }
    }

    /// The label of the protocol in results.
    fn label(&self) -> String {
        match self.pusher_routing {
            Routing::Filter => format!("pusher-v{}", self.pusher_protocol),
            Routing::Channel => format!("pusher-v{}-channels", self.pusher_protocol),
        }
    }

    fn socket_url(&self, base: &str) -> String {
        format!(
            "{}/app/{}?protocol={}",
            base.trim_end_matches('/'),
            self.app_key,
            self.pusher_protocol
        )
    }
}

/// Whether this module runs the scenario (instead of the Tagcast WebSocket code in main.rs).
pub fn handles(scenario: &Scenario) -> bool {
    match scenario {
        Scenario::Fanout(a) => a.common.protocol.pusher() || a.publish_over != PublishOver::Ws,
        Scenario::Slow(a) => {
            a.fanout.common.protocol.pusher() || a.fanout.publish_over != PublishOver::Ws
        }
        Scenario::Idle(a) => a.common.protocol.pusher(),
        Scenario::Connect(a) => a.common.protocol.pusher(),
        Scenario::Presence(a) => a.common.protocol.pusher(),
        Scenario::Soak(a) => a.common.protocol.pusher(),
    }
}

pub async fn run(scenario: &Scenario) -> anyhow::Result<serde_json::Value> {
    match scenario {
        Scenario::Fanout(a) => fanout(a).await,
        Scenario::Idle(a) => idle(a).await,
        Scenario::Connect(a) => connect_rate(a).await,
        _ => bail!(
            "only fanout, idle and connect run with --server-protocol pusher or --publish-over http"
        ),
    }
}

/// `host:port` of a `ws://` URL.
fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .context("a ws:// URL")?;
    Ok(rest.split(['/', '?']).next().unwrap_or(rest).to_owned())
}

/// The `event` of a Pusher frame.
fn next_event(text: &str) -> Option<&str> {
    let start = text.find(r#""event":""#)? + 9;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Reads frames until one whose event ends with `suffix` (its text), or fails on an error
/// event, the end of the stream, or after 10 s.
async fn expect_event(ws: &mut Ws, suffix: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("waiting for {suffix}"))?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let event = next_event(text.as_str()).unwrap_or_default();
                if event.ends_with(suffix) {
                    return Ok(text.as_str().to_owned());
                }
                if event.ends_with("error") {
                    bail!("waiting for {suffix}: {}", text.as_str());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).with_context(|| format!("waiting for {suffix}")),
            None => bail!("the connection closed while waiting for {suffix}"),
        }
    }
}

/// Connects to Sockudo and waits for `connection_established`; with a group, subscribes (to
/// the channel with the filter `eq("g", group)`, or to the group's channel) and waits for
/// `subscription_succeeded`.
async fn open_pusher(p: &ServerProtocol, base: &str, group: Option<usize>) -> anyhow::Result<Ws> {
    let mut ws = open(&p.socket_url(base)).await?;
    expect_event(&mut ws, "connection_established").await?;
    if let Some(g) = group {
        let mut data = json!({ "channel": p.channel(g) });
        if p.pusher_routing == Routing::Filter {
            data["filter"] = json!({ "key": "g", "cmp": "eq", "val": g.to_string() });
        }
        let subscribe = json!({ "event": format!("{}subscribe", p.prefix()), "data": data });
        ws.send(Message::text(subscribe.to_string())).await?;
        expect_event(&mut ws, "subscription_succeeded").await?;
    }
    Ok(ws)
}

/// Opens one subscribed connection per group, `concurrency` at a time, in order.
async fn open_all_pusher(
    p: &ServerProtocol,
    base: &str,
    groups: Vec<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(groups.len());
    for g in groups {
        let permit = semaphore.clone().acquire_owned().await?;
        let (p, base) = (p.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let ws = open_pusher(&p, &base, Some(g)).await;
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

/// Like `subscriber` in main.rs, for Pusher frames: the stamp is the event's `data` string.
/// Answers the protocol's `ping` with `pong`.
async fn pusher_subscriber(
    mut ws: Ws,
    run: Arc<Run>,
    prefix: &'static str,
    mut stop: watch::Receiver<bool>,
) -> Seen {
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
        let text = text.as_str();
        // `"data":"P:SEQ:TS:padding"`: parse_stamp takes the string from its opening quote.
        let Some((p, seq, ts)) = text
            .find(r#""data":""#)
            .and_then(|at| parse_stamp(&text[at + 7..]))
        else {
            if next_event(text).is_some_and(|e| e.ends_with("ping")) {
                let pong = format!(r#"{{"event":"{prefix}pong","data":{{}}}}"#);
                let _ = ws.send(Message::text(pong)).await;
            }
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

/// Where and how an HTTP publisher publishes.
struct HttpTarget {
    authority: String,
    pusher: Option<ServerProtocol>,
    keep_alive: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HttpTarget {
    /// The whole HTTP request publishing `stamp` (padded) to group `g`.
    fn request(&self, message: &str, g: usize) -> String {
        let host = &self.authority;
        match &self.pusher {
            None => {
                let body = format!(r#"{{"message":"{message}","tags":{{"g":{g}}}}}"#);
                let connection = if self.keep_alive {
                    ""
                } else {
                    "Connection: close\r\n"
                };
                format!(
                    "POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{connection}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            Some(p) => {
                // Pusher's REST API signature: HMAC-SHA256 (hex) of "POST\nPATH\nQUERY" with
                // the query's parameters sorted, body_md5 the MD5 (hex) of the body.
                let channel = p.channel(g);
                let body = match p.pusher_routing {
                    Routing::Filter => format!(
                        r#"{{"name":"{EVENT}","channel":"{channel}","data":"{message}","tags":{{"g":"{g}"}}}}"#
                    ),
                    Routing::Channel => {
                        format!(r#"{{"name":"{EVENT}","channel":"{channel}","data":"{message}"}}"#)
                    }
                };
                let path = format!("/apps/{}/events", p.app_id);
                let timestamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let query = format!(
                    "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={:x}",
                    p.app_key,
                    md5::compute(body.as_bytes())
                );
                let mut mac = Hmac::<Sha256>::new_from_slice(p.app_secret.as_bytes())
                    .expect("HMAC takes a key of any length");
                mac.update(format!("POST\n{path}\n{query}").as_bytes());
                let signature = hex(&mac.finalize().into_bytes());
                format!(
                    "POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        }
    }
}

/// Reads one HTTP response: its status code, the body, and whether the connection stays open.
async fn read_response(http: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, String, bool)> {
    let mut status = String::new();
    if http.read_line(&mut status).await? == 0 {
        bail!("the server closed the connection without an answer");
    }
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("a bad status line: {status:?}"))?;
    let mut length = 0;
    let mut open = true;
    loop {
        let mut line = String::new();
        http.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let line = line.to_ascii_lowercase();
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("connection:") {
            open = !v.contains("close");
        }
    }
    let mut body = vec![0; length];
    http.read_exact(&mut body).await?;
    Ok((code, String::from_utf8_lossy(&body).into_owned(), open))
}

/// Like `publisher` in main.rs, over HTTP: each request waits for the previous answer.
async fn http_publisher(
    target: Arc<HttpTarget>,
    index: usize,
    run: Arc<Run>,
    payload: usize,
    interval: Option<Duration>,
) -> anyhow::Result<()> {
    let mut padding = String::new();
    let mut connection: Option<BufReader<TcpStream>> = None;
    for seq in 0..run.messages {
        match interval {
            Some(every) => {
                let due = run.start + every * seq as u32;
                tokio::time::sleep_until(due.into()).await;
            }
            None => run.windows[index].acquire().await?.forget(),
        }
        let expected = run.expected_for(index, seq);
        let stamp = format!("{index}:{seq}:{}:", now_ns(run.start));
        padding.clear();
        padding.extend(std::iter::repeat_n(
            'x',
            payload.saturating_sub(stamp.len()),
        ));
        let request = target.request(&format!("{stamp}{padding}"), run.group_of(index, seq));
        let http = match &mut connection {
            Some(http) => http,
            None => {
                let stream = TcpStream::connect(&target.authority)
                    .await
                    .with_context(|| format!("connecting to {}", target.authority))?;
                stream.set_nodelay(true)?;
                connection.insert(BufReader::new(stream))
            }
        };
        http.get_mut().write_all(request.as_bytes()).await?;
        let (code, body, open) = read_response(http).await.context("publishing")?;
        if code != 200 {
            bail!("publishing: {code} {body}");
        }
        if !open {
            // Wait for the server's close, as a client told `Connection: close` does: the
            // server closes first (its side keeps TIME_WAIT, not the load generator's ports).
            let mut rest = Vec::new();
            http.read_to_end(&mut rest).await?;
        }
        if !(open && target.keep_alive) {
            connection = None;
        }
        if expected == 0 {
            run.complete(index);
        }
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn fanout(args: &FanoutArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let p = &c.protocol;
    if args.groups == 0 || args.publishers == 0 {
        bail!("--groups and --publishers must be at least 1");
    }
    match (p.server_protocol, args.publish_over) {
        (Protocol::Pusher, PublishOver::Ws) => {
            bail!("Sockudo's publishers use HTTP here (--publish-over http)")
        }
        (Protocol::Pusher, PublishOver::HttpKeepAlive) => {
            bail!("Sockudo's REST API answers every request with Connection: close (--publish-over http)")
        }
        _ => {}
    }
    let mut expected = vec![0u32; args.groups];
    for i in 0..args.subscribers {
        expected[i % args.groups] += 1;
    }
    let setup = Instant::now();
    let subscribers = if p.pusher() {
        let groups = (0..args.subscribers).map(|i| i % args.groups).collect();
        open_all_pusher(p, &c.url, groups, c.concurrency).await?
    } else {
        let urls = (0..args.subscribers)
            .map(|i| url_with_tags(args.subscriber_url(i), &json!({ "g": i % args.groups })))
            .collect();
        open_all(urls, c.concurrency).await?
    };
    let setup_secs = setup.elapsed().as_secs_f64();
    let target = Arc::new(HttpTarget {
        authority: authority(args.publisher_url(0))?,
        pusher: p.pusher().then(|| p.clone()),
        keep_alive: args.publish_over == PublishOver::HttpKeepAlive,
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let total = args.publishers * args.messages;
    let run = Run::new(args, expected);
    let expected_deliveries = run.expected_deliveries();
    let (stop_tx, stop) = watch::channel(false);
    let before = process_stats(c.server_pid);

    let mut readers = Vec::new();
    for ws in subscribers {
        readers.push(if p.pusher() {
            tokio::spawn(pusher_subscriber(ws, run.clone(), p.prefix(), stop.clone()))
        } else {
            tokio::spawn(subscriber(ws, run.clone(), stop.clone()))
        });
    }
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.publishers as f64 / r.max(0.001)));
    let senders: Vec<_> = (0..args.publishers)
        .map(|index| {
            tokio::spawn(http_publisher(
                target.clone(),
                index,
                run.clone(),
                args.payload,
                interval,
            ))
        })
        .collect();

    // Wait until every request is completely delivered, a publisher fails, or the timeout.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while run.completed.load(Ordering::Acquire) < total && Instant::now() < deadline {
        if senders.iter().any(|s| s.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A short drain, so duplicates or late frames would be seen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = process_stats(c.server_pid);
    let _ = stop_tx.send(true);
    for s in senders {
        if s.is_finished() {
            s.await??;
        } else {
            s.abort();
        }
    }
    let mut latencies = Vec::new();
    let mut last_ns = 0;
    for r in readers {
        let seen = r.await?;
        latencies.extend(seen.latencies);
        last_ns = last_ns.max(seen.last_ns);
    }
    latencies.sort_unstable();

    let deliveries = latencies.len() as u64;
    let elapsed = Duration::from_nanos(last_ns).as_secs_f64().max(1e-9);
    let unique = deliveries - run.duplicates.load(Ordering::Relaxed);
    let (cpu, rss) = match (before, after) {
        (Some((c0, _)), Some((c1, rss))) => (Some(c1 - c0), Some(rss)),
        _ => (None, None),
    };
    Ok(json!({
        "scenario": "fanout",
        "server": c.server,
        "server_protocol": if p.pusher() { p.label() } else { "tagcast".to_owned() },
        "publish_over": match args.publish_over {
            PublishOver::Ws => "ws",
            PublishOver::Http => "http",
            PublishOver::HttpKeepAlive => "http-keep-alive",
        },
        "subscribers": args.subscribers,
        "groups": args.groups,
        "publishers": args.publishers,
        "messages_per_publisher": args.messages,
        "payload_bytes": args.payload,
        "in_flight": if args.rate.is_some() { serde_json::Value::Null } else { json!(args.in_flight) },
        "offered_rate": args.rate,
        "setup_secs": round(setup_secs),
        "elapsed_secs": round(elapsed),
        "deliveries": deliveries,
        "expected_deliveries": expected_deliveries,
        "deliveries_per_sec": (deliveries as f64 / elapsed).round(),
        "requests_per_sec": round(run.completed.load(Ordering::Acquire) as f64 / elapsed),
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

/// Idle connections to Sockudo, each subscribed to the channel with a filter on its group
/// (`i % 100`, like the tags of `idle` for Tagcast).
async fn idle(args: &IdleArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let before = process_stats(c.server_pid);
    let start = Instant::now();
    let groups = (0..args.connections).map(|i| i % 100).collect();
    let connections = open_all_pusher(&c.protocol, &c.url, groups, c.concurrency).await?;
    let opened_in = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let after = process_stats(c.server_pid);
    let result = json!({
        "scenario": "idle",
        "server": c.server,
        "server_protocol": c.protocol.label(),
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

/// Handshakes per second with Sockudo: each connector opens a connection, waits for
/// `connection_established` (what a Pusher client waits for before anything), and closes it.
async fn connect_rate(args: &ConnectArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    if args.burst_subscribers > 0 {
        bail!("--burst-subscribers runs against Tagcast only");
    }
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let before = process_stats(c.server_pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connectors.max(1) {
        let (next, failures, p, url, n) = (
            next.clone(),
            failures.clone(),
            c.protocol.clone(),
            c.url.clone(),
            args.connections,
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match open_pusher(&p, &url, None).await {
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
    Ok(json!({
        "scenario": "connect",
        "server": c.server,
        "server_protocol": c.protocol.label(),
        "connections": args.connections,
        "connectors": args.connectors,
        "failed": failed,
        "elapsed_secs": round(elapsed),
        "connects_per_sec": ((args.connections - failed) as f64 / elapsed).round(),
        "server_cpu_secs": match (before, after) { (Some(b), Some(a)) => json!(round(a.0 - b.0)), _ => serde_json::Value::Null },
        "server_rss_kib": after.map(|a| a.1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_pusher() {
        // The example of Pusher's REST API documentation (auth_version 1.0, HMAC-SHA256).
        let mut mac = Hmac::<Sha256>::new_from_slice(b"7ad3773142a6692b25b8").unwrap();
        mac.update(b"POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        assert_eq!(
            format!(
                "{:x}",
                md5::compute(
                    br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#
                )
            ),
            "ec365a775a4cd0599faeb73354201b6f"
        );
    }

    #[test]
    fn finds_the_stamp_and_the_event() {
        let frame = r#"{"event":"m","channel":"bench","data":"2:17:12345:xxxx","serial":3}"#;
        assert_eq!(next_event(frame), Some("m"));
        let at = frame.find(r#""data":""#).unwrap();
        assert_eq!(parse_stamp(&frame[at + 7..]), Some((2, 17, 12345)));
        assert_eq!(
            authority("ws://127.0.0.1:8080/x").unwrap(),
            "127.0.0.1:8080"
        );
    }
}
