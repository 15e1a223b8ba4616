//! One connection: a single task that reads requests, writes what is queued for it, and
//! closes it with the right code.
//!
//! Requests are submitted to the router in the order they are read, and each takes its place
//! on the bus before the next frame is read (per-sender order); in a cluster, up to
//! [`MAX_IN_FLIGHT`] of them wait for the bus at once, and their answers (acks, errors) go
//! back in the order of the requests. What the router queues in the connection's [`Outbox`] is written as one batch
//! and flushed once. Anyone can decide a close through the connection's
//! [`Closer`]; the task then writes what was queued (unless the queue
//! overflowed), sends the close frame, reads until the peer answers, and drops the TCP
//! connection by the deadline whatever happens. One task per connection, not a reader and a
//! writer: an idle connection costs one future, not two, and no lock around a split socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tagcast::{RequestId, ServerFrame, Tags};
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::Handshake;
use crate::close::{self, Closer, POLICY_VIOLATION, SLOW_CONSUMER};
use crate::cluster::{Taken, Unavailable};
use crate::outbox::{direct, Outbox, Push};
use crate::refusal::{Reason, Refusal};
use crate::registry::Registered;
use crate::router::{Flight, Greeting, RateLimiter, Router, Step};

/// What a connection's signed-tags token grants (PROTOCOL.md §5.1): the claims of its latest
/// token. Its tags bound the connection's retag commands; its application and expiry are kept
/// by the token the server signs for it after an API retag.
pub type Grant = tagcast::TokenClaims;

/// The grant after an API retag: its tags [`moved`] as the connection's are, the same
/// application and expiry.
pub fn moved_grant(grant: &Grant, set: &Tags, unset: &[String]) -> Grant {
    Grant {
        tags: moved(grant.tags.clone(), set, unset),
        key: grant.key.clone(),
        exp: grant.exp,
    }
}

/// `tags` after an API retag (`POST /retag`): the pairs of `set` added or replaced, the names
/// of `unset` removed.
pub fn moved(mut tags: Tags, set: &Tags, unset: &[String]) -> Tags {
    for (name, value) in set.iter() {
        let _ = tags.insert(name, value.clone());
    }
    for name in unset {
        tags.remove(name);
    }
    tags
}

/// One open connection: what the router and the registry hold of it (the handle); its task is
/// [`run`].
#[derive(Debug)]
pub struct Connection {
    /// Unique for the life of the server; the identity of the connection in the index.
    pub id: u64,
    /// Whether it speaks `tagcast.v1` (envelope frames) or raw frames.
    pub envelope: bool,
    /// Its bounded outgoing queue; a full queue means a slow consumer.
    pub outbox: Outbox,
    /// Closes it (first reason wins).
    pub closer: Closer,
    /// The peer's address.
    pub peer: SocketAddr,
    /// What it showed at the handshake, kept only for auth managers whose `authorize_send`
    /// reads it (`AuthManager::keeps_handshake`).
    pub handshake: Option<Box<Handshake>>,
    /// With `--signed-tags`: what its latest token grants (its tags bound its retag commands).
    pub granted: std::sync::Mutex<Option<Box<Grant>>>,
    /// In a cluster with history: it resumed from a position this node had not reached yet,
    /// so this node's requests up to that sequence are not offered to it (0: none).
    pub skip_through: std::sync::atomic::AtomicU64,
}

impl Connection {
    /// What its latest signed-tags token grants.
    pub fn granted(&self) -> Option<Grant> {
        let granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        granted.as_deref().cloned()
    }

    /// Records what a newer token grants.
    pub fn set_granted(&self, grant: Grant) {
        *self.granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(grant));
    }

    /// Moves what its token grants as an API retag moves its tags ([`moved_grant`]), in one
    /// step under the lock: `(before, after)`, or `None` without a token.
    pub fn move_granted(&self, set: &Tags, unset: &[String]) -> Option<(Grant, Grant)> {
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        let grant = granted.as_deref_mut()?;
        let before = grant.clone();
        *grant = moved_grant(&before, set, unset);
        Some((before, grant.clone()))
    }

    /// The handshake `authorize_send` sees: the kept one, or the peer address alone.
    pub fn handshake(&self) -> std::borrow::Cow<'_, Handshake> {
        match &self.handshake {
            Some(h) => std::borrow::Cow::Borrowed(h),
            None => std::borrow::Cow::Owned(Handshake {
                peer: self.peer,
                query: Vec::new(),
                headers: Default::default(),
            }),
        }
    }

    /// Queues a frame without waiting (or writes it, see [`Outbox::push`] for `now`). A full
    /// queue closes the connection as a slow consumer.
    pub fn offer(&self, frame: Utf8Bytes, now: Option<direct::Now>) -> Offered {
        if self.closer.closing().is_some() {
            return Offered::Dropped;
        }
        self.offered(self.outbox.push(frame, now))
    }

    /// What a push into this connection's outbox means for the delivery: a full queue closes
    /// it as a slow consumer.
    pub fn offered(&self, push: Push) -> Offered {
        match push {
            Push::Queued | Push::Written => Offered::Queued,
            Push::Full => {
                if self.closer.close(POLICY_VIOLATION, SLOW_CONSUMER) {
                    tracing::info!(connection = self.id, "slow consumer: queue full, closing");
                    Offered::SlowConsumer
                } else {
                    Offered::Dropped
                }
            }
            Push::Closed => Offered::Dropped,
        }
    }
}

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// In the connection's queue, or already written into its socket.
    Queued,
    /// The queue was full: this offer closed the connection as a slow consumer.
    SlowConsumer,
    /// The connection is closing or gone.
    Dropped,
}

/// What each connection's task needs to know, from the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// `--rate-limit`: requests per second per connection.
    pub rate_limit: Option<u32>,
    /// `--ping-interval`.
    pub ping_interval: Option<Duration>,
    /// `--idle-timeout`.
    pub idle_timeout: Option<Duration>,
}

impl Settings {
    /// How often the keepalive timer fires: the shorter of the two, or never.
    fn keepalive_step(&self) -> Option<Duration> {
        match (self.ping_interval, self.idle_timeout) {
            (Some(p), Some(i)) => Some(p.min(i)),
            (p, i) => p.or(i),
        }
    }
}

/// What woke the connection up.
enum Event<T> {
    /// A close was decided.
    Closing,
    /// Time to ping a silent peer, or to give up on it.
    Keepalive,
    /// Frames were taken from the outbox.
    Write,
    /// The peer sent something (or the socket ended).
    Read(Option<T>),
    /// The bus answered the oldest request in flight.
    Landed(Result<Taken, Unavailable>),
}

/// Most requests of one connection waiting for the bus (a cluster) before it stops reading.
pub const MAX_IN_FLIGHT: usize = 64;

/// An answer owed to the sender, in the order of its requests.
enum Owed {
    /// Known already (a refusal, a command, a request the bus answered at once).
    Ready(Option<RequestId>, Result<Option<u64>, Refusal>),
    /// Waiting for the bus.
    Flying(Option<RequestId>, Flight),
}

/// Runs a registered connection until it ends. Generic over the socket so the rules can be
/// driven without a network.
pub async fn run<S, E>(
    mut socket: S,
    registered: Registered,
    router: Arc<Router>,
    settings: Settings,
    greeting: Greeting,
) where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let conn = &registered.conn;
    // One waiter for the whole loop: registering a new one per frame would cost more than
    // the frame itself.
    let closed = conn.closer.wait();
    tokio::pin!(closed);
    // Frames taken from the outbox; swapped with it, so neither reallocates in steady state.
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    let mut limiter = settings.rate_limit.map(RateLimiter::new);
    // Keepalive: one timer, moved only when it fires (not on every frame).
    let mut last_heard = tokio::time::Instant::now();
    let keepalive_step = settings.keepalive_step();
    let keepalive = tokio::time::sleep(keepalive_step.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(keepalive);
    if !greeting.is_empty() {
        // Before anything else (frames routed meanwhile wait in the queue): the position, the
        // replay of a resume and its `resumed` frame.
        let mut greeting = VecDeque::from(greeting);
        let written = tokio::select! {
            biased;
            _ = &mut closed => Ok(()),
            written = write_all(&mut socket, &mut greeting) => written,
        };
        if written.is_err() {
            conn.closer.close_silently();
        }
    }
    conn.outbox.release();
    // Requests waiting for the bus and the answers queued behind them, oldest first.
    let mut owed: VecDeque<Owed> = VecDeque::new();
    // Set by a refusal in raw mode: the close it decides comes once the answers before it
    // are given, and nothing after it is read.
    let mut refused = false;
    loop {
        let flying = matches!(owed.front(), Some(Owed::Flying(..)));
        let event = tokio::select! {
            biased;
            _ = &mut closed => Event::Closing,
            () = &mut keepalive, if keepalive_step.is_some() => Event::Keepalive,
            landed = std::future::poll_fn(|cx| match owed.front_mut() {
                Some(Owed::Flying(_, flight)) => flight.poll_bus(cx),
                _ => std::task::Poll::Pending,
            }), if flying => Event::Landed(landed),
            () = std::future::poll_fn(|cx| conn.outbox.poll_take(cx, &mut batch)) => Event::Write,
            next = socket.next(), if owed.len() < MAX_IN_FLIGHT && !refused => Event::Read(next),
        };
        if matches!(event, Event::Read(Some(Ok(_)))) {
            last_heard = tokio::time::Instant::now();
        }
        match event {
            Event::Closing => break,
            Event::Landed(landed) => {
                if let Some(Owed::Flying(id, flight)) = owed.pop_front() {
                    let result = router.land(flight, landed).map(Some);
                    answer(conn, &router, id, result);
                }
                // The answers queued behind it are due now, up to the next request in flight.
                while let Some(Owed::Ready(..)) = owed.front() {
                    if let Some(Owed::Ready(id, result)) = owed.pop_front() {
                        answer(conn, &router, id, result);
                    }
                }
            }
            Event::Keepalive => {
                let silent = last_heard.elapsed();
                if settings.idle_timeout.is_some_and(|limit| silent >= limit) {
                    tracing::debug!(
                        connection = conn.id,
                        "idle timeout: the peer stopped answering"
                    );
                    conn.closer.close(close::GOING_AWAY, "idle timeout");
                    continue;
                }
                if settings.ping_interval.is_some_and(|every| silent >= every) {
                    let pinged = tokio::select! {
                        biased;
                        _ = &mut closed => break,
                        pinged = socket.send(Message::Ping(Default::default())) => pinged,
                    };
                    if pinged.is_err() {
                        conn.closer.close_silently();
                        break;
                    }
                }
                let step = keepalive_step.unwrap_or_default();
                keepalive.as_mut().reset(tokio::time::Instant::now() + step);
            }
            Event::Write => {
                // A peer that stops reading blocks the write: a close decided meanwhile (slow
                // consumer, shutdown) must still end the connection by its deadline.
                let written = tokio::select! {
                    biased;
                    _ = &mut closed => break,
                    written = write_all(&mut socket, &mut batch) => written,
                };
                if written.is_err() {
                    conn.closer.close_silently();
                    break;
                }
                conn.outbox.written();
            }
            Event::Read(None) => {
                conn.closer.close_silently();
                break;
            }
            Event::Read(Some(Err(e))) => {
                let (code, reason) = classify(&e);
                tracing::debug!(connection = conn.id, code, reason, "read error");
                if code == close::MESSAGE_TOO_BIG {
                    router.metrics.rejected(Reason::TooBig);
                }
                if code == 0 {
                    conn.closer.close_silently();
                } else {
                    conn.closer.close(code, reason);
                }
            }
            Event::Read(Some(Ok(message))) => match message {
                Message::Text(text) => {
                    router.metrics.bytes_in.inc_by(text.len() as u64);
                    let owe = match router.submit_text(&text, conn, limiter.as_mut()) {
                        Step::Done(id, result) if owed.is_empty() => {
                            answer(conn, &router, id, result);
                            None
                        }
                        Step::Done(id, result) => Some(Owed::Ready(id, result)),
                        Step::Flying(id, flight) => Some(Owed::Flying(id, flight)),
                    };
                    if let Some(owe) = owe {
                        refused |= !conn.envelope && matches!(owe, Owed::Ready(_, Err(_)));
                        owed.push_back(owe);
                    }
                }
                Message::Binary(data) => {
                    router.metrics.bytes_in.inc_by(data.len() as u64);
                    let refusal = router.refuse_binary(limiter.as_mut());
                    refuse(conn, &router, None, refusal);
                }
                Message::Ping(_) | Message::Pong(_) => {}
                // The peer closes: tungstenite answers it as we read on to the end.
                Message::Close(_) | Message::Frame(_) => {
                    conn.closer.close_silently();
                }
            },
        }
    }
    Box::pin(finish(socket, conn, batch)).await;
    conn.outbox.close();
}

/// Writes and flushes a batch.
async fn write_all<S, E>(socket: &mut S, batch: &mut VecDeque<Utf8Bytes>) -> Result<(), E>
where
    S: Sink<Message, Error = E> + Unpin,
{
    while let Some(frame) = batch.pop_front() {
        socket.feed(Message::Text(frame)).await?;
    }
    socket.flush().await
}

/// The closing handshake, bounded by the close's deadline: what was queued before the close
/// still goes out (nothing lost at shutdown) unless the queue overflowed, then the close frame,
/// then reading until the peer answers.
async fn finish<S, E>(mut socket: S, conn: &Connection, mut batch: VecDeque<Utf8Bytes>)
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
{
    let Some(closing) = conn.closer.closing() else {
        return;
    };
    // The close frame must be the last: nothing may be written around the task any more.
    conn.outbox.stop_direct();
    let deadline = tokio::time::Instant::from_std(closing.deadline);
    if let Some((code, reason)) = &closing.frame {
        let frame = Message::Close(Some(CloseFrame {
            code: (*code).into(),
            reason: Utf8Bytes::from(reason.as_str()),
        }));
        let sent = timeout_at(deadline, async {
            if reason != close::SLOW_CONSUMER {
                conn.outbox.take(&mut batch);
                while let Some(frame) = batch.pop_front() {
                    socket.feed(Message::Text(frame)).await?;
                }
            }
            socket.send(frame).await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
    // Until the peer's close reply (then the server drops TCP first, RFC 6455 §7.1.1), or its end.
    while let Ok(Some(Ok(message))) = timeout_at(deadline, socket.next()).await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}

/// Answers a request: an ack (envelope mode, with an id), an error, or a close in raw mode.
fn answer(
    conn: &Connection,
    router: &Router,
    id: Option<RequestId>,
    result: Result<Option<u64>, Refusal>,
) {
    match result {
        Ok(None) => {} // a command that answered itself
        Ok(Some(delivered)) => {
            if let (true, Some(id)) = (conn.envelope, id) {
                let ack = ServerFrame::Ack { id, delivered };
                reply(conn, router, ack);
            }
        }
        Err(refusal) => refuse(conn, router, id, refusal),
    }
}

/// Queues a frame for the sender itself (ack or error), counting a slow consumer it causes.
fn reply(conn: &Connection, router: &Router, frame: ServerFrame) {
    let frame = Utf8Bytes::from(frame.to_json());
    let len = frame.len() as u64;
    match conn.offer(frame, None) {
        Offered::Queued => {
            router.metrics.bytes_out.inc_by(len);
        }
        Offered::SlowConsumer => {
            router.metrics.slow_consumers.inc();
        }
        Offered::Dropped => {}
    }
}

/// Answers a refused request: an error frame in envelope mode, a close in raw mode.
fn refuse(conn: &Connection, router: &Router, id: Option<tagcast::RequestId>, refusal: Refusal) {
    if router.refusals.allow() {
        tracing::info!(connection = conn.id, peer = %conn.peer, reason = refusal.reason.label(), error = %refusal.text, "request refused");
    }
    if conn.envelope {
        let frame = ServerFrame::Error {
            id,
            code: refusal.reason.error_code(),
            error: refusal.text,
        };
        reply(conn, router, frame);
    } else {
        conn.closer
            .close(refusal.reason.close_code(), &refusal.text);
    }
}

/// The close code and reason for a read error; code 0 means the socket is gone (no frame).
fn classify<E: std::error::Error + Send + Sync + 'static>(e: &E) -> (u16, &'static str) {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    // axum wraps tungstenite's error; look through the chain for it.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<WsError>() {
            return match ws {
                WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                    (close::MESSAGE_TOO_BIG, "message too big")
                }
                WsError::Capacity(_) => (close::MESSAGE_TOO_BIG, "frame too big"),
                WsError::Utf8(_) => (close::INVALID_PAYLOAD, "invalid UTF-8 in a text frame"),
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Io(_) => (0, "connection lost"),
                WsError::Protocol(_) => (close::PROTOCOL_ERROR, "protocol error"),
                _ => (0, "connection lost"),
            };
        }
        source = err.source();
    }
    (0, "connection lost")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AllowAll;
    use crate::cluster::local::LocalBus;
    use crate::registry::Registry;
    use crate::testing::{connection, router, socket_pair};
    use tagcast::{ErrorCode, RequestId, Tags};

    fn frames(written: &[Message]) -> Vec<String> {
        written
            .iter()
            .map(|m| match m {
                Message::Text(t) => t.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn queued_frames_and_replies_keep_their_order() {
        let registry = Arc::new(Registry::default());
        let router = Arc::new(router(&registry, Arc::new(AllowAll), Arc::new(LocalBus)));
        let registered = connection(&registry, Tags::new().with("room", 1), true, 16);
        let conn = registered.conn.clone();
        let (socket, peer) = socket_pair(usize::MAX);
        let task = tokio::spawn(run(
            socket,
            registered,
            router.clone(),
            Settings::default(),
            Vec::new(),
        ));
        for i in 0..3 {
            conn.offer(Utf8Bytes::from(format!("\"queued {i}\"")), None);
        }
        peer.send_text(r#"{"id":7,"message":"hi","tags":{"room":1}}"#);
        let written = frames(&peer.wait_written(5).await);
        assert_eq!(
            written[..3],
            ["\"queued 0\"", "\"queued 1\"", "\"queued 2\""]
        );
        // The request reaches its own sender (its tags match) before its ack.
        assert_eq!(
            ServerFrame::parse(&written[3]).unwrap(),
            ServerFrame::Message {
                message: "hi".into(),
                tags: Tags::new().with("room", 1),
                pos: None,
            }
        );
        assert_eq!(
            ServerFrame::parse(&written[4]).unwrap(),
            ServerFrame::Ack {
                id: RequestId::Integer(7),
                delivered: 1
            }
        );
        conn.closer.close(close::GOING_AWAY, "bye");
        peer.end();
        task.await.unwrap();
        let last = peer.written().pop().unwrap();
        assert!(
            matches!(&last, Message::Close(Some(f)) if u16::from(f.code) == 1001 && f.reason == "bye"),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn a_slow_consumer_is_closed_with_1008_and_its_queue_dropped() {
        let registry = Arc::new(Registry::default());
        let router = Arc::new(router(&registry, Arc::new(AllowAll), Arc::new(LocalBus)));
        let registered = connection(&registry, Tags::new(), false, 2);
        let conn = registered.conn.clone();
        // The peer reads nothing.
        let (socket, peer) = socket_pair(0);
        let task = tokio::spawn(run(
            socket,
            registered,
            router,
            Settings::default(),
            Vec::new(),
        ));
        let mut offered = Vec::new();
        for i in 0..4 {
            offered.push(conn.offer(Utf8Bytes::from(format!("{i}")), None));
            tokio::task::yield_now().await;
        }
        assert!(offered.contains(&Offered::SlowConsumer), "{offered:?}");
        let closing = conn.closer.closing().unwrap();
        assert_eq!(closing.frame, Some((1008, SLOW_CONSUMER.to_owned())));
        // Once the peer reads again, the close frame is all it gets: the backlog is dropped.
        peer.read_more(100);
        peer.end();
        task.await.unwrap();
        let written = peer.written();
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(
            matches!(&written[0], Message::Close(Some(f)) if u16::from(f.code) == 1008 && f.reason == SLOW_CONSUMER),
            "{written:?}"
        );
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn a_rate_limit_refusal_carries_the_request_id() {
        let registry = Arc::new(Registry::default());
        let router = Arc::new(router(&registry, Arc::new(AllowAll), Arc::new(LocalBus)));
        let registered = connection(&registry, Tags::new().with("nobody", 1), true, 64);
        let (socket, peer) = socket_pair(usize::MAX);
        let settings = Settings {
            rate_limit: Some(1),
            ..Settings::default()
        };
        let task = tokio::spawn(run(socket, registered, router, settings, Vec::new()));
        for id in 1..=5 {
            peer.send_text(&format!(r#"{{"id":{id},"message":"m","tags":{{"x":1}}}}"#));
        }
        let written = frames(&peer.wait_written(5).await);
        let mut ids = Vec::new();
        let mut refused = 0;
        for frame in &written {
            match ServerFrame::parse(frame).unwrap() {
                ServerFrame::Ack { id, delivered: 0 } => ids.push(id),
                ServerFrame::Error {
                    id: Some(id),
                    code: ErrorCode::RateLimited,
                    ..
                } => {
                    refused += 1;
                    ids.push(id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The burst of 1 lets the first through; the others are refused, each with its own id.
        assert_eq!(ids, (1..=5).map(RequestId::Integer).collect::<Vec<_>>());
        assert!(matches!(
            ServerFrame::parse(&written[0]).unwrap(),
            ServerFrame::Ack { .. }
        ));
        assert!(refused >= 1, "{written:?}");
        peer.end();
        task.await.unwrap();
    }
}
