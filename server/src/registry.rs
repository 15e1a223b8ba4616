//! Open connections, indexed by their tags, with handles to their outgoing queues.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use tagcast::{Tags, TagsTree};

use crate::auth::Handshake;
use crate::close::{Closer, GOING_AWAY, POLICY_VIOLATION, SLOW_CONSUMER};
use crate::outbox::{Outbox, Push};

/// What the router needs of one open connection.
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
    pub peer: std::net::SocketAddr,
    /// What it showed at the handshake, kept only for auth managers whose `authorize_send`
    /// reads it (`AuthManager::keeps_handshake`).
    pub handshake: Option<Box<Handshake>>,
}

impl Connection {
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
    pub fn offer(&self, frame: Utf8Bytes, now: Option<u64>) -> Offered {
        if self.closer.closing().is_some() {
            return Offered::Dropped;
        }
        match self.outbox.push(frame, now) {
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

/// A connection as a key of the tag index: identity is the connection id.
#[derive(Debug, Clone)]
struct Key(Arc<Connection>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for Key {}
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}

/// The open connections.
///
/// The index sits behind a `std::sync::RwLock`, not a tokio lock: nothing awaits while holding
/// it; delivering only queues frames or writes them without waiting.
#[derive(Debug, Default)]
pub struct Registry {
    index: RwLock<TagsTree<Key>>,
    next_id: AtomicU64,
    /// Open WebSocket connections plus handshakes that reserved a slot (`--max-connections`).
    slots: AtomicUsize,
    /// Set at shutdown: connections that finish their handshake afterwards close at once.
    shutting_down: AtomicBool,
}

/// Recipients of one delivery whose frame may be written into their socket by the router.
const DIRECT_WRITES_PER_DELIVERY: usize = 256;

/// The clock of [`Outbox::push`]: microseconds since the first call, plus a second, so that a
/// connection never offered anything (last offer at 0) counts as quiet from the start.
fn micros_since_start() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    1_000_000 + elapsed.as_micros() as u64
}

/// The outcome of [`Registry::deliver`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections the message was queued for.
    pub delivered: u64,
    /// Connections this delivery closed because their queue was full.
    pub slow_consumers: u64,
    /// Bytes queued, all recipients together.
    pub bytes: u64,
}

/// A connection in the index, removed from it (and its slot released) when dropped, however
/// the connection's task ends.
#[derive(Debug)]
pub struct Registered {
    /// The connection.
    pub conn: Arc<Connection>,
    /// The index it is in.
    pub registry: Arc<Registry>,
    /// Its `--max-connections` slot.
    pub _slot: Slot,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.unregister(&self.conn);
        tracing::debug!(connection = self.conn.id, "connection closed");
    }
}

/// A reserved connection slot, released when dropped (also when an upgrade never completes).
#[derive(Debug)]
pub struct Slot(Arc<Registry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registry {
    /// Reserves a slot for a new connection unless `max` are taken.
    pub fn reserve(self: &Arc<Self>, max: Option<usize>) -> Option<Slot> {
        let max = max.unwrap_or(usize::MAX);
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection to the index. Returns `false` (and adds nothing) during shutdown.
    pub fn register(&self, connection: Arc<Connection>, tags: Tags) -> bool {
        let mut index = self.write();
        if self.shutting_down.load(Ordering::Acquire) {
            return false;
        }
        index.add(Key(connection), tags);
        true
    }

    /// Removes a connection from the index.
    pub fn unregister(&self, connection: &Arc<Connection>) {
        self.write().delete(&Key(connection.clone()));
    }

    /// How many connections are in the index.
    pub fn len(&self) -> usize {
        self.read().count()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offers a delivery to every connection whose tags contain `tags`: raw connections get
    /// `raw`, envelope connections the frame `envelope` builds (at most once). Returns how many
    /// queued it and how many this closed as slow consumers.
    pub fn deliver(
        &self,
        tags: &Tags,
        raw: &Utf8Bytes,
        envelope: impl FnOnce() -> Utf8Bytes,
    ) -> Delivery {
        let mut envelope = Some(envelope);
        let mut envelope_frame: Option<Utf8Bytes> = None;
        let mut delivery = Delivery::default();
        // Direct writes for the first recipients only: a large fan-out is written by the
        // recipients' own tasks, on every core, and the index is not held through thousands
        // of system calls.
        let now = micros_since_start();
        let mut direct = DIRECT_WRITES_PER_DELIVERY;
        self.read().for_each_match(tags, |Key(conn)| {
            let frame = if conn.envelope {
                envelope_frame
                    .get_or_insert_with(|| (envelope.take().expect("built once"))())
                    .clone()
            } else {
                raw.clone()
            };
            let len = frame.len() as u64;
            let now = (direct > 0).then_some(now);
            direct = direct.saturating_sub(1);
            match conn.offer(frame, now) {
                Offered::Queued => {
                    delivery.delivered += 1;
                    delivery.bytes += len;
                }
                Offered::SlowConsumer => delivery.slow_consumers += 1,
                Offered::Dropped => {}
            }
        });
        delivery
    }

    /// Closes every connection with 1001 and refuses new ones: the start of a shutdown.
    pub fn close_all(&self) {
        let index = self.write();
        self.shutting_down.store(true, Ordering::Release);
        index.for_each_match(&Tags::new(), |Key(conn)| {
            conn.closer.close(GOING_AWAY, "server shutting down");
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TagsTree<Key>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TagsTree<Key>> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}
