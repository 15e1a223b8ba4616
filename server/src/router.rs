//! Request -> parse -> authorize -> recipients -> enqueue, encoding each frame once.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::time::Instant;
use tagcast::envelope::encode_message_frame;

use tagcast::request::{parse_request, parse_value};
use tagcast::{Error, ErrorCode, MessageParser, ParseOptions, RequestId, WebSocketRequest};

use crate::auth::{AuthManager, Handshake};
use crate::cluster::RedisBus;
use crate::metrics::{Metrics, Rejection, Transport};
use crate::registry::Registry;

/// A refused request: the code for envelope mode and a text naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The envelope error code.
    pub code: ErrorCode,
    /// The text for the sender (never holds a secret).
    pub text: String,
}

impl Refusal {
    fn bad_request(e: &Error) -> Self {
        Refusal {
            code: ErrorCode::BadRequest,
            text: e.to_string(),
        }
    }
}

/// Routes requests to the registry's connections.
pub struct Router {
    /// Where the recipients are.
    pub registry: Arc<Registry>,
    /// What `message` may be.
    pub parser: Arc<dyn MessageParser>,
    /// Who may send.
    pub auth: Arc<dyn AuthManager>,
    /// `--max-tags`.
    pub max_tags: usize,
    /// Counters and the routing latency.
    pub metrics: Arc<Metrics>,
    /// The Redis bus of a cluster; `None` for a lone node.
    pub bus: Option<Arc<RedisBus>>,
    /// `--rate-limit`: requests per second per connection.
    pub rate_limit: Option<u32>,
    /// `--ping-interval`.
    pub ping_interval: Option<std::time::Duration>,
    /// `--idle-timeout`.
    pub idle_timeout: Option<std::time::Duration>,
}

/// A token bucket: `rate` requests per second with a burst of `rate` (`--rate-limit`).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: std::time::Instant::now(),
        }
    }

    /// Takes one token; `false` when the connection is over its rate.
    pub fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("max_tags", &self.max_tags)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Handles one request frame from a connection: returns its id (when it has one) and the
    /// delivered count or the refusal. Routing is complete when this returns, so the next frame
    /// of the same sender is routed after this one everywhere.
    pub async fn route_text(
        &self,
        text: &str,
        envelope: bool,
        handshake: &Handshake,
    ) -> (Option<RequestId>, Result<u64, Refusal>) {
        let started = Instant::now();
        self.metrics.received(Transport::WebSocket);
        let (id, parsed) = parse_request(text, &self.options(envelope));
        let result = self.finish(parsed, handshake, started).await;
        (if envelope { id } else { None }, result)
    }

    /// Handles one request of `POST /publish` (already parsed as JSON; `id` allowed).
    pub async fn route_value(
        &self,
        value: Value,
        handshake: &Handshake,
    ) -> (Option<RequestId>, Result<u64, Refusal>) {
        let started = Instant::now();
        self.metrics.received(Transport::Http);
        let (id, parsed) = parse_value(value, &self.options(true));
        (id, self.finish(parsed, handshake, started).await)
    }

    fn options(&self, allow_id: bool) -> ParseOptions {
        ParseOptions {
            allow_id,
            max_tags: self.max_tags,
        }
    }

    async fn finish(
        &self,
        parsed: Result<WebSocketRequest, Error>,
        handshake: &Handshake,
        started: Instant,
    ) -> Result<u64, Refusal> {
        let result = match parsed {
            Ok(request) => self.route(request, handshake).await,
            Err(e) => Err(Refusal::bad_request(&e)),
        };
        match &result {
            Ok(_) => self
                .metrics
                .routing_latency
                .observe(started.elapsed().as_secs_f64()),
            Err(refusal) => self.metrics.rejected(Rejection::from(refusal.code)),
        }
        result
    }

    /// Authorizes, parses the message, publishes it to the other nodes of a cluster and
    /// delivers it to this node's connections.
    pub async fn route(
        &self,
        request: WebSocketRequest,
        handshake: &Handshake,
    ) -> Result<u64, Refusal> {
        if let Err(denied) = self.auth.authorize_send(handshake, &request) {
            return Err(Refusal {
                code: ErrorCode::Unauthorized,
                text: denied.0,
            });
        }
        let (message, tags, _metadata) = request.into_parts();
        let message = self
            .parser
            .parse(message)
            .map_err(|e| Refusal::bad_request(&e))?;
        let raw = Utf8Bytes::from(encode(&message));
        let tags_json = tags.to_json();
        if let Some(bus) = &self.bus {
            // Published before the local delivery: a request the cluster cannot carry is
            // refused whole, never half delivered.
            // Boxed: the Redis future is large, and every connection's reader future would
            // otherwise reserve room for it even while idle.
            if let Err(e) = Box::pin(bus.publish(&tags_json, &raw)).await {
                tracing::debug!(reason = %e.0, "refusing a request: {e}");
                return Err(Refusal {
                    code: ErrorCode::Unavailable,
                    text: e.to_string(),
                });
            }
        }
        let delivery = self.registry.deliver(&tags, &raw, || {
            Utf8Bytes::from(encode_message_frame(&raw, &tags_json))
        });
        self.metrics.record(&delivery);
        tracing::debug!(delivered = delivery.delivered, tags = %tags_json, "routed");
        Ok(delivery.delivered)
    }
}

/// The message as JSON text, its buffer trimmed to its length: the frame is shared by every
/// recipient's queue for as long as the slowest one holds it, and serde_json's growth would
/// otherwise leave up to half of it unused.
fn encode(message: &Value) -> String {
    let mut text = serde_json::to_string(message).expect("a JSON value always serializes");
    text.shrink_to_fit();
    text
}
