//! A request's way through the server: parse, authorize, put on the bus, deliver.
//!
//! [`Router`] takes a request from a connection or from `POST /publish`; [`Fanout::deliver`]
//! hands a routed request to this node's matching connections and counts it, for the router and
//! for the cluster's subscriber alike. Each frame is encoded once per request and shared by
//! every recipient.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tagcast::envelope::{encode_message_frame, FrameToken};
use tagcast::request::{parse_request, parse_value};
use tagcast::{Error, MessageParser, ParseOptions, RequestId, ServerFrame, Tags, WebSocketRequest};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{ApplicationsAuthManager, AuthManager, Handshake};
use crate::close::{SERVICE_RESTART, SERVICE_RESTART_REASON};
use crate::cluster::{BoxFuture, Bus, Submitted, Taken, Unavailable};
use crate::connection::{moved_grant, Connection, Grant, Offered};
use crate::history::{History, Limits, Sequencer};
use crate::metrics::{Metrics, Transport};
use crate::refusal::{Reason, Refusal};
use crate::registry::{Delivery, Registry};

fn bad_request(e: &Error) -> Refusal {
    Refusal::new(Reason::BadRequest, e.to_string())
}

/// A token bucket: `rate` requests per second with a burst of `rate` (`--rate-limit`).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        }
    }

    /// Takes one token; `false` when the connection is over its rate.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
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

/// Delivers routed requests to this node's connections and counts what it delivered; with
/// history on, positions and keeps them, and opens connections under the same sequencer.
#[derive(Debug)]
pub struct Fanout {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    history: Option<History>,
    /// With `--signed-tags`: the applications whose secrets sign the token an API retag sends.
    tokens: Option<Arc<ApplicationsAuthManager>>,
}

/// The answer of [`Fanout::retag`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retagged {
    /// Connections whose tags changed.
    pub retagged: u64,
    /// Matching connections left unchanged because their new tags would break the rules.
    pub refused: u64,
}

/// Where the cluster put a request in its history (a cluster with history, PROTOCOL.md §10,
/// §11): what [`Fanout::deliver_positioned`] needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Positioned<'a> {
    /// The epoch of the cluster's history.
    pub epoch: &'a str,
    /// The request's sequence in it.
    pub sequence: u64,
    /// When it was routed, as this node's clock sees it (the history's TTL counts from it).
    pub at: Instant,
    /// Whether it is caught up after the node was cut off from the cluster: only envelope
    /// connections get it; what raw connections miss is counted.
    pub catch_up: bool,
}

/// What a connection writes before anything else (envelope mode, history on): its `position`
/// frame, then with `since` the replay and a `resumed` frame.
pub type Greeting = Vec<Utf8Bytes>;

impl Fanout {
    /// Delivers into `registry`, counting in `metrics`, keeping a history within `history`
    /// (`None` or 0 requests: off).
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, history: Option<Limits>) -> Self {
        let history = history.filter(|l| l.requests > 0).map(History::new);
        Fanout {
            registry,
            metrics,
            history,
            tokens: None,
        }
    }

    /// With `--signed-tags`: an API retag sends each connection that has a token a new one for
    /// its new tags, signed with its application's secret (PROTOCOL.md §13).
    pub fn with_tokens(mut self, tokens: Option<Arc<ApplicationsAuthManager>>) -> Self {
        self.tokens = tokens;
        self
    }

    /// This node's connections.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The kept history, if it is on.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Registers an admitted connection and returns its greeting. Under the sequencer, so that
    /// every request routed after its cursor (or after `since`) reaches it exactly once: in the
    /// replay, or live once the greeting is written. Returns `None` (and registers nothing)
    /// during shutdown.
    pub fn open(
        &self,
        conn: &Arc<Connection>,
        tags: Tags,
        since: Option<&str>,
    ) -> Option<Greeting> {
        let envelope = conn.envelope;
        let Some(history) = self.history.as_ref().filter(|_| envelope) else {
            let greeting = since.map(|_| {
                let resumed = ServerFrame::Resumed {
                    recovered: false,
                    missed: 0,
                };
                vec![Utf8Bytes::from(resumed.to_json())]
            });
            return self
                .registry
                .register(conn.clone(), tags)
                .then(|| greeting.unwrap_or_default());
        };
        let mut sequencer = history.lock();
        let replay = since.map(|since| sequencer.replay(since, &tags));
        if let Some(replay) = &replay {
            // Set before it can be a recipient: under the sequencer, like every delivery.
            conn.skip_through
                .store(replay.skip_through, std::sync::atomic::Ordering::Relaxed);
        }
        if !self.registry.register(conn.clone(), tags) {
            return None;
        }
        let position = ServerFrame::Position {
            pos: sequencer.last_position(),
        };
        drop(sequencer);
        let mut greeting = vec![Utf8Bytes::from(position.to_json())];
        if let Some(replay) = replay {
            let missed = replay.frames.len() as u64;
            greeting.extend(replay.frames);
            let resumed = ServerFrame::Resumed {
                recovered: replay.recovered,
                missed,
            };
            greeting.push(Utf8Bytes::from(resumed.to_json()));
        }
        Some(greeting)
    }

    /// The metrics it counts in (the bus reports its state there too).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Changes the tags of every connection whose tags contain `tags`: the pairs of `set` added
    /// or replaced, the names of `unset` removed. A result over `max_tags` leaves that connection
    /// as it was. Each retagged envelope connection gets a `tags` frame; requests routed after
    /// this returns are matched against the new tags.
    pub fn retag(&self, tags: &Tags, set: &Tags, unset: &[String], max_tags: usize) -> Retagged {
        // With signed tags, each envelope connection's frame carries a token for its moved
        // grant. The tokens are signed before the sequencer is taken (a signature each would
        // hold every delivery back), for the grants as they are now; one that changes
        // meanwhile is signed again under it.
        let signed: HashMap<u64, (Grant, String)> = match self.tokens {
            None => HashMap::new(),
            Some(_) => self
                .registry
                .matching(tags)
                .into_iter()
                .filter(|(conn, _)| conn.envelope)
                .filter_map(|(conn, _)| {
                    let before = conn.granted()?;
                    let token = self.sign(&moved_grant(&before, set, unset))?;
                    Some((conn.id, (before, token)))
                })
                .collect(),
        };
        let mut sequencer = self.history.as_ref().map(History::lock);
        let pos = sequencer.as_ref().map(|s| s.last_position());
        let mut retagged = Retagged::default();
        let mut frames = Vec::new();
        for (conn, own) in self.registry.matching(tags) {
            let new = crate::connection::moved(own, set, unset);
            if new.check_count(max_tags).is_err() {
                retagged.refused += 1;
                continue;
            }
            if !self.registry.retag(&conn, new.clone()) {
                continue; // closed meanwhile
            }
            retagged.retagged += 1;
            // Its token must allow its new tags, or its next handshake would be refused
            // (`subset`): what it grants moves as its tags did, and is signed anew.
            let moved = conn.move_granted(set, unset);
            if conn.envelope {
                let token = moved
                    .and_then(|(before, after)| match signed.get(&conn.id) {
                        Some((signed_from, token)) if *signed_from == before => Some(token.clone()),
                        _ => self.sign(&after),
                    })
                    .map(FrameToken);
                let frame = ServerFrame::Tags {
                    id: None,
                    tags: new,
                    pos: pos.clone(),
                    token,
                };
                frames.push((conn, Utf8Bytes::from(frame.to_json())));
            }
        }
        // Offered in turn with deliveries, so a connection gets the frame between the requests
        // matched against its old tags and those matched against the new ones.
        let _turn = sequencer.take().map(Sequencer::offer_turn);
        for (conn, frame) in frames {
            if conn.offer(frame, None) == Offered::SlowConsumer {
                self.metrics.slow_consumers.inc();
            }
        }
        self.metrics.retags.inc_by(retagged.retagged);
        retagged
    }

    /// A token for `grant`, signed with its application's secret (`None` without signed tags).
    fn sign(&self, grant: &Grant) -> Option<String> {
        let secret = self.tokens.as_ref()?.secret_of(&grant.key)?;
        Some(tagcast::sign_tags_until(
            &grant.key,
            secret,
            &grant.tags,
            grant.exp,
        ))
    }

    /// Replaces the tags of one connection (its own `retag` command; `granted`: what the token
    /// it came with grants) and answers it with a `tags` frame carrying `id`, in turn with
    /// deliveries. `false` when it closed meanwhile.
    pub fn retag_one(
        &self,
        conn: &Arc<Connection>,
        tags: Tags,
        granted: Option<Grant>,
        id: Option<RequestId>,
    ) -> bool {
        let sequencer = self.history.as_ref().map(History::lock);
        let pos = sequencer.as_ref().map(|s| s.last_position());
        if !self.registry.retag(conn, tags.clone()) {
            return false;
        }
        // Under the sequencer, as an API retag moves it: the two never interleave.
        if let Some(granted) = granted {
            conn.set_granted(granted);
        }
        let _turn = sequencer.map(Sequencer::offer_turn);
        let frame = ServerFrame::Tags {
            id,
            tags,
            pos,
            token: None,
        };
        if conn.offer(Utf8Bytes::from(frame.to_json()), None) == Offered::SlowConsumer {
            self.metrics.slow_consumers.inc();
        }
        self.metrics.retags.inc();
        true
    }

    /// Delivers a request the cluster positioned to every matching connection of this node, in
    /// the cluster's order, and keeps it at its position. `None` when it came before (it was
    /// already delivered: a catch-up overlapping the live stream). A hole before it, or another
    /// epoch, closes the envelope connections with 1012 first (they resume and learn what was
    /// lost). With history off, this is [`deliver`](Fanout::deliver).
    pub fn deliver_positioned(
        &self,
        at: Positioned<'_>,
        tags: &Tags,
        tags_json: &str,
        payload_json: String,
    ) -> Option<Delivery> {
        let Some(history) = &self.history else {
            return Some(self.deliver(tags, tags_json, payload_json));
        };
        let mut sequencer = history.lock();
        if sequencer.epoch() == at.epoch && at.sequence <= sequencer.last() {
            return None;
        }
        if sequencer.epoch() != at.epoch || at.sequence > sequencer.last() + 1 {
            self.lost_history(&mut sequencer, at.epoch, at.sequence - 1);
        }
        let raw = Utf8Bytes::from(payload_json);
        let pos = sequencer.position(at.sequence);
        let frame = Utf8Bytes::from(encode_message_frame(&raw, tags_json, Some(&pos)));
        sequencer.keep_at(at.sequence, at.at, tags.clone(), frame.clone());
        let mut recipients = self.registry.recipients(tags);
        // Connections that resumed here from a node ahead of this one have this request.
        if sequencer.skips(at.sequence) {
            recipients.retain_after(at.sequence);
        }
        if at.catch_up {
            self.metrics.bus_missed.inc_by(recipients.retain_envelope());
        }
        let _turn = sequencer.offer_turn();
        let delivery = recipients.offer(&raw, || frame);
        self.metrics.record(&delivery);
        Some(delivery)
    }

    /// Where the cluster's history stands when this node has caught up with it (epoch, last
    /// sequence): if this node's copy does not end there, it missed what it cannot replay, and
    /// its envelope connections are closed with 1012.
    pub fn synced(&self, epoch: &str, last: u64) {
        if let Some(history) = &self.history {
            let mut sequencer = history.lock();
            if sequencer.epoch() != epoch || sequencer.last() != last {
                self.lost_history(&mut sequencer, epoch, last);
            }
        }
    }

    /// This node's copy of the history no longer follows the cluster's: its envelope
    /// connections, whose positions it can no longer vouch for, close with 1012 so that they
    /// resume (and learn `recovered: false`), and the copy starts again after `last`.
    fn lost_history(&self, sequencer: &mut Sequencer<'_>, epoch: &str, last: u64) {
        let closed = self
            .registry
            .close_envelope(SERVICE_RESTART, SERVICE_RESTART_REASON);
        if closed > 0 {
            tracing::warn!(
                closed,
                "this node missed requests the cluster's history no longer holds: envelope \
                 connections closed with 1012 so that they resume"
            );
            self.metrics.history_gap_closes.inc_by(closed);
        }
        sequencer.restart(epoch, last);
    }

    /// Delivers one routed request (its tags, and its payload as JSON text) to every matching
    /// connection of this node: raw connections get the payload, envelope connections a
    /// `message` frame built once.
    pub fn deliver(&self, tags: &Tags, tags_json: &str, payload_json: String) -> Delivery {
        let Some(history) = &self.history else {
            return self.deliver_unkept(tags, tags_json, payload_json);
        };
        let raw = Utf8Bytes::from(payload_json);
        // Positioned, kept and offered under the sequencer: every connection receives
        // positions in increasing order.
        let mut sequencer = history.lock();
        let pos = sequencer.next_position();
        let frame = Utf8Bytes::from(encode_message_frame(&raw, tags_json, Some(&pos)));
        sequencer.keep(tags.clone(), frame.clone());
        let recipients = self.registry.recipients(tags);
        let _turn = sequencer.offer_turn();
        let delivery = recipients.offer(&raw, || frame);
        self.metrics.record(&delivery);
        delivery
    }

    /// Delivers a request without a position and without keeping it (history off; or a
    /// request from a cluster node without history, which a node with history cannot place).
    pub fn deliver_unkept(&self, tags: &Tags, tags_json: &str, payload_json: String) -> Delivery {
        let raw = Utf8Bytes::from(payload_json);
        let delivery = self.registry.deliver(tags, &raw, || {
            Utf8Bytes::from(encode_message_frame(&raw, tags_json, None))
        });
        self.metrics.record(&delivery);
        delivery
    }
}

/// Routes requests.
pub struct Router {
    /// What `message` may be.
    pub parser: Arc<dyn MessageParser>,
    /// Who may send.
    pub auth: Arc<dyn AuthManager>,
    /// `--max-tags`.
    pub max_tags: usize,
    /// Counters and the routing latency.
    pub metrics: Arc<Metrics>,
    /// The bus to the other nodes of a cluster.
    pub bus: Arc<dyn Bus>,
    /// This node's connections.
    pub fanout: Arc<Fanout>,
    /// With `--signed-tags`: the applications whose secrets sign tokens (retag commands).
    pub tokens: Option<Arc<ApplicationsAuthManager>>,
    /// The budget of refusal log lines (handshakes and requests).
    pub refusals: crate::logs::LogLimiter,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("max_tags", &self.max_tags)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// The answer to one request: its id (when it has one) and how many connections of this node
/// it was delivered to, or why it was refused.
pub type Routed = (Option<RequestId>, Result<u64, Refusal>);

impl Router {
    /// Handles one text frame from a connection, over `limiter`'s rate if it has one: a
    /// request, or in envelope mode a command (a frame with a `type`, PROTOCOL.md §13). Returns
    /// the id (envelope mode only) and how many connections of this node the request reached,
    /// `None` for a command that answered itself, or the refusal. Routing is complete when this
    /// returns; see [`submit_text`](Router::submit_text) for a sender that keeps several
    /// requests on the bus.
    pub async fn route_text(
        &self,
        text: &str,
        conn: &Arc<Connection>,
        limiter: Option<&mut RateLimiter>,
    ) -> (Option<RequestId>, Result<Option<u64>, Refusal>) {
        match self.submit_text(text, conn, limiter) {
            Step::Done(id, result) => (id, result),
            Step::Flying(id, mut flight) => {
                let landed = std::future::poll_fn(|cx| flight.poll_bus(cx)).await;
                (id, self.land(flight, landed).map(Some))
            }
        }
    }

    /// Handles one text frame like [`route_text`](Router::route_text), without waiting for the
    /// bus: a request the bus takes later (a cluster) comes back as [`Step::Flying`], already
    /// in its place in the cluster's order, so the sender may read its next frame; it is
    /// finished by [`land`](Router::land), in the order the requests were submitted.
    pub fn submit_text(
        &self,
        text: &str,
        conn: &Arc<Connection>,
        limiter: Option<&mut RateLimiter>,
    ) -> Step {
        let started = Instant::now();
        let envelope = conn.envelope;
        self.metrics.received(Transport::WebSocket);
        if let Err(refusal) = self.check_rate(limiter) {
            // The request is dropped unread; its id (if any) still goes back with the error.
            let id = envelope.then(|| parse_request(text, &self.options(true)).0);
            return Step::Done(id.flatten(), Err(refusal));
        }
        // Commands are rare: only a frame that mentions "type" is looked at as one.
        if envelope && text.contains("\"type\"") {
            if let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) {
                if frame.contains_key("type") {
                    let id = frame.get("id").and_then(RequestId::from_value);
                    return match self.command(frame, conn) {
                        Ok(()) => Step::Done(id, Ok(None)),
                        Err(refusal) => {
                            self.metrics.rejected(refusal.reason);
                            Step::Done(id, Err(refusal))
                        }
                    };
                }
                let (id, parsed) = parse_value(Value::Object(frame), &self.options(true));
                return self.launch(id, parsed, &conn.handshake(), false, started);
            }
        }
        let (id, parsed) = parse_request(text, &self.options(envelope));
        let id = if envelope { id } else { None };
        self.launch(id, parsed, &conn.handshake(), false, started)
    }

    /// A command frame (PROTOCOL.md §13); today `retag`.
    fn command(
        &self,
        mut frame: serde_json::Map<String, Value>,
        conn: &Arc<Connection>,
    ) -> Result<(), Refusal> {
        let bad = |text: String| Refusal::new(Reason::BadRequest, text);
        match frame.get("type") {
            Some(Value::String(kind)) if kind == "retag" => {}
            Some(Value::String(kind)) => {
                return Err(bad(format!(
                "unknown frame type '{kind}': the only command is 'retag'; a request has no 'type'"
            )))
            }
            _ => return Err(bad("'type' must be a string naming a command".into())),
        }
        if let Some(unknown) = frame
            .keys()
            .find(|k| !["type", "id", "tags", "token"].contains(&k.as_str()))
        {
            return Err(bad(format!(
                "unknown property '{unknown}' in a retag command (allowed: type, id, tags, token)"
            )));
        }
        let tags = match frame.remove("tags") {
            None => return Err(bad("a retag command needs 'tags'".into())),
            Some(v) => Tags::from_value_bounded(&v, self.max_tags)
                .map_err(|e| bad(format!("invalid 'tags': {e}")))?,
        };
        let granted = if let Some(applications) = &self.tokens {
            let granted = match frame.get("token") {
                Some(Value::String(token)) => {
                    let now = crate::handshake::unix_now();
                    let claims =
                        tagcast::token::verify(token, now, |key| applications.secret_of(key))
                            .map_err(|e| Refusal::new(Reason::Unauthorized, e.to_string()))?;
                    Some(claims)
                }
                Some(_) => return Err(bad("'token' must be a string".into())),
                None => None,
            };
            let allowed = match &granted {
                Some(grant) => grant.tags.contains_all(&tags),
                None => conn.granted().is_some_and(|g| g.tags.contains_all(&tags)),
            };
            if !allowed {
                return Err(Refusal::new(
                    Reason::Unauthorized,
                    tagcast::TokenError::Subset.to_string(),
                ));
            }
            granted
        } else {
            None
        };
        self.fanout.retag_one(
            conn,
            tags,
            granted,
            frame.get("id").and_then(RequestId::from_value),
        );
        Ok(())
    }

    /// The refusal of a binary frame (PROTOCOL.md §3), or of the rate limit if it is over it.
    pub fn refuse_binary(&self, limiter: Option<&mut RateLimiter>) -> Refusal {
        self.metrics.received(Transport::WebSocket);
        match self.check_rate(limiter) {
            Err(refusal) => refusal,
            Ok(()) => {
                self.metrics.rejected(Reason::BadRequest);
                Refusal::new(
                    Reason::BadRequest,
                    "binary frames are not accepted: send a JSON text frame",
                )
            }
        }
    }

    /// The one place where a connection's rate limit refuses a request (counted).
    fn check_rate(&self, limiter: Option<&mut RateLimiter>) -> Result<(), Refusal> {
        if limiter.is_some_and(|limiter| !limiter.allow()) {
            self.metrics.rejected(Reason::RateLimited);
            return Err(Refusal::new(Reason::RateLimited, "rate limited"));
        }
        Ok(())
    }

    /// Handles one request of `POST /publish` (already parsed as JSON; `id` allowed);
    /// `trusted` (the server API's key came with it) skips the send authorization.
    pub async fn route_value(&self, value: Value, handshake: &Handshake, trusted: bool) -> Routed {
        let started = Instant::now();
        self.metrics.received(Transport::Http);
        let (id, parsed) = parse_value(value, &self.options(true));
        match self.launch(id, parsed, handshake, trusted, started) {
            Step::Done(id, result) => (id, result.map(|d| d.unwrap_or(0))),
            Step::Flying(id, mut flight) => {
                let landed = std::future::poll_fn(|cx| flight.poll_bus(cx)).await;
                (id, self.land(flight, landed))
            }
        }
    }

    fn options(&self, allow_id: bool) -> ParseOptions {
        ParseOptions {
            allow_id,
            max_tags: self.max_tags,
        }
    }

    /// Authorizes a parsed request (unless `trusted`), parses its message and puts it on the
    /// bus; delivers it here when the bus answers at once.
    fn launch(
        &self,
        id: Option<RequestId>,
        parsed: Result<WebSocketRequest, Error>,
        handshake: &Handshake,
        trusted: bool,
        started: Instant,
    ) -> Step {
        let request = match parsed {
            Err(e) => return self.refused(id, bad_request(&e)),
            Ok(request) => request,
        };
        if !trusted {
            if let Err(denied) = self.auth.authorize_send(handshake, &request) {
                return self.refused(id, Refusal::new(Reason::Unauthorized, denied.0));
            }
        }
        let (message, tags, _metadata) = request.into_parts();
        let message = match self.parser.parse(message) {
            Ok(m) => m,
            Err(e) => return self.refused(id, bad_request(&e)),
        };
        let payload = encode(&message);
        let tags_json = tags.to_json();
        // On the bus before the local delivery: a request the cluster cannot carry is refused
        // whole, never half delivered. In a cluster with history the bus delivers it here too,
        // in the cluster's order.
        let mut flight = Flight {
            tags,
            bus: None,
            tags_json,
            payload,
            started,
        };
        match self.bus.submit(&flight.tags_json, &flight.payload) {
            Submitted::Now(landed) => {
                let result = self.land(flight, landed);
                Step::Done(id, result.map(Some))
            }
            Submitted::Later(bus) => {
                flight.bus = Some(bus);
                Step::Flying(id, flight)
            }
        }
    }

    fn refused(&self, id: Option<RequestId>, refusal: Refusal) -> Step {
        self.metrics.rejected(refusal.reason);
        Step::Done(id, Err(refusal))
    }

    /// Finishes a request once the bus has answered: delivers it to this node's connections
    /// (unless the bus did, in the cluster's order) and counts it; or refuses it as
    /// `unavailable`.
    pub fn land(&self, flight: Flight, landed: Result<Taken, Unavailable>) -> Result<u64, Refusal> {
        let delivery = match landed {
            Err(e) => {
                tracing::debug!(reason = %e.0, "refusing a request: {e}");
                let refusal = Refusal::new(Reason::Unavailable, e.to_string());
                self.metrics.rejected(refusal.reason);
                return Err(refusal);
            }
            Ok(Taken::Delivered(delivery)) => delivery,
            Ok(Taken::Deliver) => {
                self.fanout
                    .deliver(&flight.tags, &flight.tags_json, flight.payload)
            }
        };
        tracing::debug!(delivered = delivery.delivered, tags = %flight.tags_json, "routed");
        self.metrics
            .routing_latency
            .observe(flight.started.elapsed().as_secs_f64());
        Ok(delivery.delivered)
    }

    /// Authorizes, parses the message, puts it on the bus and delivers it to this node's
    /// connections.
    pub async fn route(
        &self,
        request: WebSocketRequest,
        handshake: &Handshake,
    ) -> Result<u64, Refusal> {
        match self.launch(None, Ok(request), handshake, false, Instant::now()) {
            Step::Done(_, result) => result.map(|d| d.unwrap_or(0)),
            Step::Flying(_, mut flight) => {
                let landed = std::future::poll_fn(|cx| flight.poll_bus(cx)).await;
                self.land(flight, landed)
            }
        }
    }
}

/// What became of one frame handed to [`Router::submit_text`].
pub enum Step {
    /// Finished: the id (envelope mode) and how many connections of this node the request
    /// reached, `None` for a command that answered itself, or the refusal.
    Done(Option<RequestId>, Result<Option<u64>, Refusal>),
    /// On the bus: finish it with [`Router::land`] once [`Flight::poll_bus`] is ready.
    Flying(Option<RequestId>, Flight),
}

/// A request the bus has taken and has not answered yet.
pub struct Flight {
    tags: Tags,
    tags_json: String,
    payload: String,
    started: Instant,
    bus: Option<BoxFuture<'static, Result<Taken, Unavailable>>>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("tags", &self.tags_json)
            .finish_non_exhaustive()
    }
}

impl Flight {
    /// Polls the bus's answer.
    pub fn poll_bus(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Taken, Unavailable>> {
        match &mut self.bus {
            Some(bus) => bus.as_mut().poll(cx),
            None => std::task::Poll::Ready(Err(Unavailable("no bus answer to wait for".into()))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AllowAll, Denied};
    use crate::testing::{connection, router, FakeBus};
    use std::collections::VecDeque;

    /// Authorizes a send only when its metadata says `"ok": true`.
    struct OkInMetadata;

    impl AuthManager for OkInMetadata {
        fn authorize_open(&self, _: &Handshake) -> Result<(), Denied> {
            Ok(())
        }
        fn authorize_send(&self, _: &Handshake, request: &WebSocketRequest) -> Result<(), Denied> {
            match request.metadata().get("ok") {
                Some(Value::Bool(true)) => Ok(()),
                _ => Err(Denied("no ok in metadata".into())),
            }
        }
    }

    fn handshake() -> Handshake {
        Handshake {
            peer: ([127, 0, 0, 1], 9).into(),
            query: Vec::new(),
            headers: Default::default(),
        }
    }

    fn taken(registered: &crate::registry::Registered) -> Vec<String> {
        let mut frames = VecDeque::new();
        registered.conn.outbox.take(&mut frames);
        frames.iter().map(|f| f.to_string()).collect()
    }

    #[tokio::test]
    async fn a_routed_request_goes_on_the_bus_then_to_matching_connections() {
        let registry = Arc::new(Registry::default());
        let bus = Arc::new(FakeBus::default());
        let router = router(&registry, Arc::new(OkInMetadata), bus.clone());
        let fr = connection(&registry, Tags::new().with("language", "FR"), false, 8);
        let en = connection(&registry, Tags::new().with("language", "EN"), true, 8);
        let request = WebSocketRequest::new("Bonjour")
            .with_tags(Tags::new().with("language", "FR"))
            .with_meta("ok", true);
        assert_eq!(router.route(request, &handshake()).await, Ok(1));
        assert_eq!(
            *bus.published.lock().unwrap(),
            [(r#"{"language":"FR"}"#.to_owned(), r#""Bonjour""#.to_owned())]
        );
        assert_eq!(taken(&fr), [r#""Bonjour""#]);
        assert!(taken(&en).is_empty());
    }

    #[tokio::test]
    async fn refused_requests_reach_neither_the_bus_nor_anyone() {
        let registry = Arc::new(Registry::default());
        let bus = Arc::new(FakeBus::default());
        let router = router(&registry, Arc::new(OkInMetadata), bus.clone());
        let everyone = connection(&registry, Tags::new(), false, 8);

        let unauthorized = router
            .route(WebSocketRequest::new("hi"), &handshake())
            .await
            .unwrap_err();
        assert_eq!(unauthorized.reason, Reason::Unauthorized);
        assert_eq!(unauthorized.text, "no ok in metadata");

        let not_a_string = router
            .route(WebSocketRequest::new(5).with_meta("ok", true), &handshake())
            .await
            .unwrap_err();
        assert_eq!(not_a_string.reason, Reason::BadRequest);

        bus.down.store(true, std::sync::atomic::Ordering::Release);
        let unavailable = router
            .route(
                WebSocketRequest::new("hi").with_meta("ok", true),
                &handshake(),
            )
            .await
            .unwrap_err();
        assert_eq!(unavailable.reason, Reason::Unavailable);

        assert!(bus.published.lock().unwrap().is_empty());
        assert!(taken(&everyone).is_empty());
    }

    #[tokio::test]
    async fn raw_frames_keep_no_id_and_envelope_frames_do() {
        let registry = Arc::new(Registry::default());
        let router = router(&registry, Arc::new(AllowAll), Arc::new(FakeBus::default()));
        let envelope = connection(&registry, Tags::new().with("x", 1), true, 8);
        let raw = connection(&registry, Tags::new().with("x", 1), false, 8);
        let text = r#"{"id":"a","message":"hi"}"#;
        let (id, result) = router.route_text(text, &envelope.conn, None).await;
        assert_eq!(
            (id, result),
            (Some(RequestId::String("a".into())), Ok(Some(2)))
        );
        // Raw mode knows no `id`: the request is invalid, and no id comes back.
        let (id, result) = router.route_text(text, &raw.conn, None).await;
        assert_eq!(id, None);
        assert_eq!(result.unwrap_err().reason, Reason::BadRequest);
        let mut limiter = RateLimiter::new(1);
        assert!(router.check_rate(Some(&mut limiter)).is_ok());
        assert_eq!(
            router.refuse_binary(Some(&mut limiter)).reason,
            Reason::RateLimited
        );
        assert_eq!(router.refuse_binary(None).reason, Reason::BadRequest);
    }

    #[tokio::test]
    async fn a_retag_command_answers_with_the_new_tags_and_unknown_types_are_named() {
        let registry = Arc::new(Registry::default());
        let router = router(&registry, Arc::new(AllowAll), Arc::new(FakeBus::default()));
        let conn = connection(&registry, Tags::new().with("room", 1), true, 8);
        let (id, result) = router
            .route_text(
                r#"{"type":"retag","id":3,"tags":{"room":2}}"#,
                &conn.conn,
                None,
            )
            .await;
        assert_eq!((id, result), (Some(RequestId::Integer(3)), Ok(None)));
        let frames = taken(&conn);
        assert_eq!(frames, [r#"{"type":"tags","id":3,"tags":{"room":2}}"#]);
        assert_eq!(
            registry
                .presence(&Tags::new().with("room", 2), None, 0)
                .connections,
            1
        );
        let (id, result) = router
            .route_text(r#"{"type":"subscribe","id":4}"#, &conn.conn, None)
            .await;
        assert_eq!(id, Some(RequestId::Integer(4)));
        let refusal = result.unwrap_err();
        assert_eq!(refusal.reason, Reason::BadRequest);
        assert!(refusal.text.contains("'subscribe'"), "{}", refusal.text);
        // A request whose message mentions "type" is still a request.
        let text = r#"{"id":5,"message":"the \"type\" of it","tags":{"room":2}}"#;
        let (_, result) = router.route_text(text, &conn.conn, None).await;
        assert_eq!(result, Ok(Some(1)));
    }
}

#[cfg(test)]
mod cluster_resume_tests {
    use super::*;
    use crate::close::Closer;
    use crate::outbox::Outbox;
    use std::collections::VecDeque;

    fn envelope_connection(registry: &Registry) -> Arc<Connection> {
        Arc::new(Connection {
            id: registry.next_id(),
            envelope: true,
            outbox: Outbox::new(16, None),
            closer: Closer::default(),
            peer: ([127, 0, 0, 1], 9).into(),
            handshake: None,
            granted: Default::default(),
            skip_through: Default::default(),
        })
    }

    fn deliver(fanout: &Fanout, sequence: u64) {
        let at = Positioned {
            epoch: "c",
            sequence,
            at: Instant::now(),
            catch_up: false,
        };
        let payload = format!("\"m{sequence}\"");
        assert!(fanout
            .deliver_positioned(at, &Tags::new(), "{}", payload)
            .is_some());
    }

    /// A client that read up to c.3 on a node ahead resumes on this one, still at c.1: nothing
    /// is replayed, nothing is missed, and c.2 and c.3 reach it once, from the other node only.
    #[test]
    fn a_resume_from_a_node_ahead_gets_each_request_once() {
        let registry = Arc::new(Registry::default());
        let limits = crate::history::Limits {
            requests: 100,
            bytes: 1 << 20,
            ttl: std::time::Duration::from_secs(60),
        };
        let fanout = Fanout::new(registry.clone(), Arc::default(), Some(limits));
        fanout.synced("c", 0);
        deliver(&fanout, 1);
        let conn = envelope_connection(&registry);
        let greeting = fanout.open(&conn, Tags::new(), Some("c.3")).unwrap();
        let greeting: Vec<String> = greeting.iter().map(|f| f.to_string()).collect();
        assert_eq!(greeting.len(), 2, "{greeting:?}");
        assert!(greeting[1].contains(r#""recovered":true"#), "{greeting:?}");
        assert!(greeting[1].contains(r#""missed":0"#), "{greeting:?}");
        for sequence in 2..=4 {
            deliver(&fanout, sequence);
        }
        let mut frames = VecDeque::new();
        conn.outbox.take(&mut frames);
        let frames: Vec<String> = frames.iter().map(|f| f.to_string()).collect();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(
            frames[0].contains("m4") && frames[0].contains("c.4"),
            "{frames:?}"
        );
    }
}
