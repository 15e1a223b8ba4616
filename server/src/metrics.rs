//! Prometheus metrics (`GET /metrics`), with every labelled series resolved once at start so
//! the hot path only touches atomics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::refusal::Reason;

type Labels = Vec<(&'static str, &'static str)>;

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket frame.
    WebSocket,
    /// `POST /publish`.
    Http,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (set from the registry at each scrape).
    pub connections: Gauge,
    received_ws: Counter,
    received_http: Counter,
    rejected: [Counter; 5],
    /// Messages queued for a recipient.
    pub deliveries: Counter,
    /// Recipients closed because their queue was full.
    pub slow_consumers: Counter,
    handshakes_400: Counter,
    handshakes_401: Counter,
    handshakes_503: Counter,
    /// Bytes of WebSocket messages and HTTP bodies received.
    pub bytes_in: Counter,
    /// Bytes of messages queued for connections (counted per request, not per write).
    pub bytes_out: Counter,
    /// Time from a request's arrival to its last enqueue, in seconds.
    pub routing_latency: Histogram,
    /// 1 while the Redis bus is connected (always 1 without `--redis`).
    pub bus_up: Gauge,
    /// Reconnections to Redis after it went away.
    pub bus_reconnects: Counter,
    /// Connections whose tags the server API or a client changed.
    pub retags: Counter,
    /// Deliveries raw connections missed while the node was cut off from the cluster (caught
    /// up for envelope connections only).
    pub bus_missed: Counter,
    /// Envelope connections closed with 1012 because the cluster's history no longer covered
    /// what they missed while the node was cut off (or Redis lost it).
    pub history_gap_closes: Counter,
    api: Family<Labels, Counter>,
    /// Requests kept in the history (set at each scrape).
    pub history_requests: Gauge,
    /// Bytes of the frames kept in the history (set at each scrape).
    pub history_bytes: Gauge,
    /// When the process started (Unix seconds).
    started: f64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `tagcast_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tagcast");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );

        let received = Family::<Labels, Counter>::default();
        registry.register(
            "requests_received",
            "Requests received, by transport",
            received.clone(),
        );
        let received_ws = received.get_or_create_owned(&vec![("transport", "websocket")]);
        let received_http = received.get_or_create_owned(&vec![("transport", "http")]);

        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            "requests_rejected",
            "Requests refused, by reason",
            rejected.clone(),
        );
        let rejected = Reason::ALL
            .map(|reason| rejected.get_or_create_owned(&vec![("reason", reason.label())]));

        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Messages queued for a recipient",
            deliveries.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Recipients closed with 1008 because their outgoing queue overflowed",
            slow_consumers.clone(),
        );

        let handshakes = Family::<Labels, Counter>::default();
        registry.register(
            "handshake_rejections",
            "WebSocket handshakes refused, by HTTP status",
            handshakes.clone(),
        );
        let handshakes_400 = handshakes.get_or_create_owned(&vec![("status", "400")]);
        let handshakes_401 = handshakes.get_or_create_owned(&vec![("status", "401")]);
        let handshakes_503 = handshakes.get_or_create_owned(&vec![("status", "503")]);

        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Bytes of WebSocket messages and HTTP bodies received",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "sent_bytes",
            "Bytes of messages queued for WebSocket connections",
            bytes_out.clone(),
        );
        // 10 µs to about 5 s.
        let routing_latency = Histogram::new(exponential_buckets(0.000_01, 2.5, 15));
        registry.register(
            "routing_latency_seconds",
            "Time from a request's arrival to the end of its enqueueing",
            routing_latency.clone(),
        );

        let bus_up = Gauge::default();
        bus_up.set(1);
        registry.register(
            "bus_up",
            "1 while the cluster bus (Redis) is connected; always 1 for a lone node",
            bus_up.clone(),
        );
        let bus_reconnects = Counter::default();
        registry.register(
            "bus_reconnects",
            "Reconnections to Redis after it went away",
            bus_reconnects.clone(),
        );

        let retags = Counter::default();
        registry.register(
            "retags",
            "Connections whose tags were changed (POST /retag, retag commands)",
            retags.clone(),
        );
        let bus_missed = Counter::default();
        registry.register(
            "bus_missed_deliveries",
            "Deliveries raw connections missed while the node was cut off from the cluster",
            bus_missed.clone(),
        );
        let history_gap_closes = Counter::default();
        registry.register(
            "history_gap_closes",
            "Envelope connections closed with 1012 because the cluster's history no longer \
             covered what they missed",
            history_gap_closes.clone(),
        );
        let api = Family::<Labels, Counter>::default();
        registry.register(
            "api_requests",
            "Server API requests, by endpoint and HTTP status",
            api.clone(),
        );
        let history_requests = Gauge::default();
        registry.register(
            "history_requests",
            "Routed requests kept for resume (--history)",
            history_requests.clone(),
        );
        let history_bytes = Gauge::default();
        registry.register(
            "history_bytes",
            "Bytes of the message frames kept for resume (--history-bytes)",
            history_bytes.clone(),
        );

        let build_info = Family::<Labels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; its version label tells which Tagcast serves",
            build_info.clone(),
        );
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);

        Metrics {
            registry,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            retags,
            bus_missed,
            history_gap_closes,
            api,
            history_requests,
            history_bytes,
            bus_up,
            bus_reconnects,
            connections,
            received_ws,
            received_http,
            rejected,
            deliveries,
            slow_consumers,
            handshakes_400,
            handshakes_401,
            handshakes_503,
            bytes_in,
            bytes_out,
            routing_latency,
        }
    }

    /// Counts what one delivery queued: a few additions per request, none per recipient.
    pub fn record(&self, delivery: &crate::registry::Delivery) {
        self.deliveries.inc_by(delivery.delivered);
        self.bytes_out.inc_by(delivery.bytes);
        if delivery.slow_consumers > 0 {
            self.slow_consumers.inc_by(delivery.slow_consumers);
        }
    }

    /// Counts a received request.
    pub fn received(&self, transport: Transport) {
        match transport {
            Transport::WebSocket => self.received_ws.inc(),
            Transport::Http => self.received_http.inc(),
        };
    }

    /// Counts a refused request.
    pub fn rejected(&self, why: Reason) {
        self.rejected[why.index()].inc();
    }

    /// Counts a server API request by endpoint (`/presence`, ...) and HTTP status.
    pub fn api_request(&self, endpoint: &'static str, status: u16) {
        let status: &'static str = match status {
            200 => "200",
            400 => "400",
            401 => "401",
            403 => "403",
            _ => "other",
        };
        self.api
            .get_or_create(&vec![("endpoint", endpoint), ("status", status)])
            .inc();
    }

    /// Counts a refused handshake by its status.
    pub fn handshake_rejected(&self, status: u16) {
        match status {
            400 => self.handshakes_400.inc(),
            401 => self.handshakes_401.inc(),
            _ => self.handshakes_503.inc(),
        };
    }

    /// The Prometheus text exposition of every metric, the process's own first.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        // The process metrics every Prometheus user expects, without the `tagcast_` prefix;
        // the OpenMetrics `# EOF` line stays last.
        let end = out.rfind("# EOF").unwrap_or(out.len());
        let mut process = String::new();
        process_metrics(&mut process, self.started);
        out.insert_str(end, &process);
        out
    }
}

/// `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds` and
/// `process_start_time_seconds`, read from `/proc/self` (Linux; nothing elsewhere).
fn process_metrics(out: &mut String, started: f64) {
    use std::fmt::Write;
    fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    gauge(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds",
        started,
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            gauge(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes",
                kib * 1024.0,
            );
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (in parentheses, which may hold spaces): utime and
        // stime are the 12th and 13th, in clock ticks of 1/100 s.
        let ticks = stat.rfind(')').and_then(|end| {
            let fields: Vec<&str> = stat[end + 2..].split(' ').collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        });
        if let Some(ticks) = ticks {
            // The counter's OpenMetrics name carries the `_total` suffix.
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total {}",
                ticks / 100.0
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors",
            fds.count() as f64,
        );
    }
}
