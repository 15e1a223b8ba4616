//! Open connections, indexed by their tags, with handles to their outgoing queues.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tagcast::{Tags, TagsTree};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::close::GOING_AWAY;
use crate::connection::{Connection, Offered};
use crate::outbox::direct::{self, DirectWrites};

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
#[derive(Debug)]
pub struct Registry {
    index: RwLock<TagsTree<Key>>,
    /// The clock of direct writes, and their switch.
    direct: DirectWrites,
    next_id: AtomicU64,
    /// Open WebSocket connections plus handshakes that reserved a slot (`--max-connections`).
    slots: AtomicUsize,
    /// Set at shutdown: connections that finish their handshake afterwards close at once.
    shutting_down: AtomicBool,
}

thread_local! {
    /// The recipients of the delivery under way on this thread, collected under the index lock
    /// and offered after it: the buffer is kept, so a delivery allocates nothing in steady state.
    static RECIPIENTS: RefCell<Vec<Arc<Connection>>> = const { RefCell::new(Vec::new()) };
    /// When this thread's last delivery ended: a delivery that follows another at once is part
    /// of a burst ([`direct::IDLE_MICROS`]).
    static LAST_DELIVERY_END: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
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

/// The answer of [`Registry::presence`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Matching connections.
    pub connections: u64,
    /// With `by`: matching connections per value of that tag.
    pub values: std::collections::BTreeMap<String, u64>,
    /// Whether values were left out past the limit.
    pub truncated: bool,
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

impl Default for Registry {
    fn default() -> Self {
        Registry::new(true)
    }
}

impl Registry {
    /// An empty registry; `direct_writes: false` queues every frame (`--direct-writes false`).
    pub fn new(direct_writes: bool) -> Self {
        Registry {
            index: RwLock::default(),
            direct: DirectWrites::new(direct_writes),
            next_id: AtomicU64::default(),
            slots: AtomicUsize::default(),
            shutting_down: AtomicBool::default(),
        }
    }

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
        self.recipients(tags).offer(raw, envelope)
    }

    /// The connections whose tags contain `tags`, collected under the index's read lock, which
    /// is released when this returns: offering may write into sockets or wake tasks (system
    /// calls), and a large fan-out must not stall the opens and closes that wait for the write
    /// lock.
    pub fn recipients(&self, tags: &Tags) -> Recipients {
        let mut list = RECIPIENTS.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
        self.read()
            .for_each_match(tags, |Key(conn)| list.push(conn.clone()));
        let at = std::time::Instant::now();
        let now = self.direct.at(at).map(|micros| direct::Now {
            micros,
            steady: LAST_DELIVERY_END.get().is_none_or(|end| {
                at.saturating_duration_since(end)
                    >= std::time::Duration::from_micros(direct::IDLE_MICROS)
            }),
        });
        Recipients { list, now }
    }

    /// How many connections have tags containing `tags`, and with `by`, how many of those per
    /// value of the tag `by` (integers as their decimal text), at most `max_values` values.
    pub fn presence(&self, tags: &Tags, by: Option<&str>, max_values: usize) -> Presence {
        let index = self.read();
        let mut presence = Presence::default();
        index.for_each_match(tags, |key| {
            presence.connections += 1;
            let Some(name) = by else {
                return;
            };
            let Some(value) = index.tags_of(key).and_then(|own| own.get(name)) else {
                return;
            };
            let value = value.canonical();
            let known = presence.values.len();
            match presence.values.get_mut(value.as_ref()) {
                Some(n) => *n += 1,
                None if known < max_values => {
                    presence.values.insert(value.into_owned(), 1);
                }
                None => presence.truncated = true,
            }
        });
        presence
    }

    /// The open connections whose tags contain `tags`, with their tags.
    pub fn matching(&self, tags: &Tags) -> Vec<(Arc<Connection>, Tags)> {
        let index = self.read();
        let mut found = Vec::new();
        index.for_each_match(tags, |key| {
            let own = index.tags_of(key).cloned().unwrap_or_default();
            found.push((key.0.clone(), own));
        });
        found
    }

    /// Replaces the tags of `conn` (if it is still open).
    pub fn retag(&self, conn: &Arc<Connection>, tags: Tags) -> bool {
        let mut index = self.write();
        let key = Key(conn.clone());
        if index.delete(&key).is_none() {
            return false;
        }
        index.add(key, tags);
        true
    }

    /// Closes every envelope connection with `code` and `reason`; returns how many.
    pub fn close_envelope(&self, code: u16, reason: &str) -> u64 {
        let mut closed = 0;
        self.read().for_each_match(&Tags::new(), |Key(conn)| {
            if conn.envelope && conn.closer.close(code, reason) {
                closed += 1;
            }
        });
        closed
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

/// The recipients of one delivery, to offer its frame to.
#[derive(Debug)]
pub struct Recipients {
    list: Vec<Arc<Connection>>,
    now: Option<direct::Now>,
}

impl Recipients {
    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Leaves out the raw connections (a request caught up after the node was cut off: a raw
    /// connection cannot tell it from a new one); returns how many it left out.
    pub fn retain_envelope(&mut self) -> u64 {
        let before = self.list.len();
        self.list.retain(|conn| conn.envelope);
        (before - self.list.len()) as u64
    }

    /// Leaves out the connections that already have the cluster's request `sequence` (they
    /// resumed from a position this node had not reached: [`Connection::skip_through`]).
    pub fn retain_after(&mut self, sequence: u64) {
        self.list
            .retain(|conn| conn.skip_through.load(Ordering::Relaxed) < sequence);
    }

    /// Offers the frame to each recipient (see [`Registry::deliver`]); the first
    /// [`direct::PER_DELIVERY`] may get it written into their socket, or the first
    /// [`direct::PER_DELIVERY_BATCHED`] on a thread that sends batches (io_uring).
    pub fn offer(self, raw: &Utf8Bytes, envelope: impl FnOnce() -> Utf8Bytes) -> Delivery {
        // The envelope frame is built once, for the first envelope recipient, if any.
        let envelope = std::cell::Cell::new(Some(envelope));
        let envelope_frame = std::cell::OnceCell::new();
        let frame_for = |conn: &Connection| match conn.envelope {
            true => envelope_frame.get_or_init(|| (envelope.take().expect("built once"))()),
            false => raw,
        };
        let mut delivery = Delivery::default();
        #[allow(unused_mut)]
        let mut first_queued = 0;
        #[cfg(all(feature = "io-uring", target_os = "linux"))]
        if let Some(now) = self.now {
            first_queued = self.write_batch(now, &frame_for, &mut delivery);
        }
        for (i, conn) in self.list.iter().enumerate().skip(first_queued) {
            let frame = frame_for(conn);
            let now = self.now.filter(|_| i < direct::PER_DELIVERY);
            delivery.count(conn.offer(frame.clone(), now), frame.len());
        }
        if self.now.is_some() {
            LAST_DELIVERY_END.set(Some(std::time::Instant::now()));
        }
        delivery
    }

    /// The first [`direct::PER_DELIVERY_BATCHED`] recipients, those that may be written to
    /// directly with one system call per [`direct::PER_DELIVERY`] (the `io-uring` feature);
    /// returns how many recipients it took care of (0 on a thread without io_uring: they are
    /// offered one by one, each direct write one `send`).
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    fn write_batch<'f>(
        &self,
        now: direct::Now,
        frame_for: &impl Fn(&Connection) -> &'f Utf8Bytes,
        delivery: &mut Delivery,
    ) -> usize {
        if !crate::outbox::batch_available() {
            return 0;
        }
        let head = &self.list[..self.list.len().min(direct::PER_DELIVERY_BATCHED)];
        // Each frame kind (raw, envelope) encoded once for the whole delivery, and only if
        // someone gets it directly: a burst to busy recipients claims none.
        let encoded: [std::cell::OnceCell<Vec<u8>>; 2] = Default::default();
        // One batch of PER_DELIVERY at a time: a batch holds the locks of its recipients
        // until the kernel has answered every write of it.
        for chunk in head.chunks(direct::PER_DELIVERY) {
            Self::write_chunk(now, chunk, frame_for, &encoded, delivery);
        }
        head.len()
    }

    /// Claims the quiet recipients of `chunk` (at most [`direct::PER_DELIVERY`]), writes their
    /// frames with one `io_uring_enter`, and offers the others their frame to queue.
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    fn write_chunk<'f>(
        now: direct::Now,
        chunk: &[Arc<Connection>],
        frame_for: &impl Fn(&Connection) -> &'f Utf8Bytes,
        encoded: &[std::cell::OnceCell<Vec<u8>>; 2],
        delivery: &mut Delivery,
    ) {
        let mut claims = Vec::with_capacity(chunk.len());
        let mut claimed = Vec::with_capacity(chunk.len());
        for conn in chunk {
            let claim = match conn.closer.closing() {
                Some(_) => None,
                None => conn.outbox.claim(now),
            };
            claimed.push(claim.is_some());
            if let Some(claim) = claim {
                claims.push((claim, conn.envelope, frame_for(conn)));
            }
        }
        let claims: Vec<_> = claims
            .into_iter()
            .map(|(claim, is_envelope, frame)| {
                let encoded = encoded[usize::from(is_envelope)]
                    .get_or_init(|| direct::encode_frame(frame.as_bytes()));
                (claim, frame, &encoded[..])
            })
            .collect();
        let mut pushed = crate::outbox::write_claimed(claims).into_iter();
        for (conn, claimed) in chunk.iter().zip(claimed) {
            let frame = frame_for(conn);
            let offered = match claimed {
                true => conn.offered(pushed.next().expect("one push per claim")),
                // Its offer is recorded: not quiet, or busy; queued without a second look.
                false => conn.offer(frame.clone(), None),
            };
            delivery.count(offered, frame.len());
        }
    }
}

impl Delivery {
    fn count(&mut self, offered: Offered, len: usize) {
        match offered {
            Offered::Queued => {
                self.delivered += 1;
                self.bytes += len as u64;
            }
            Offered::SlowConsumer => self.slow_consumers += 1,
            Offered::Dropped => {}
        }
    }
}

impl Drop for Recipients {
    fn drop(&mut self) {
        // The buffer goes back to its thread: a delivery allocates nothing in steady state.
        let mut list = std::mem::take(&mut self.list);
        list.clear();
        RECIPIENTS.with(|cell| *cell.borrow_mut() = list);
    }
}

#[cfg(all(test, feature = "io-uring", target_os = "linux"))]
mod tests {
    use super::*;
    use crate::close::Closer;
    use crate::outbox::direct::SharedTcp;
    use crate::outbox::Outbox;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Delivers to `n` quiet plain-TCP connections (connection 2 in envelope mode) that have no
    /// task to write their queue; returns, for each, whether its peer got the frame written
    /// directly (read from its socket) or it was queued instead (found in its outbox).
    async fn deliver_to_quiet_connections(n: u64) -> Vec<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let registry = Registry::new(true);
        let mut peers = Vec::new();
        let mut conns = Vec::new();
        for id in 0..n {
            let peer = TcpStream::connect(listener.local_addr().unwrap());
            let (accepted, peer) = tokio::join!(listener.accept(), peer);
            let (tcp, addr) = accepted.unwrap();
            let conn = Arc::new(Connection {
                id,
                envelope: id == 2,
                outbox: Outbox::new(4, Some(SharedTcp::new(tcp))),
                closer: Closer::default(),
                peer: addr,
                handshake: None,
                granted: std::sync::Mutex::new(None),
                skip_through: Default::default(),
            });
            assert!(registry.register(conn.clone(), Tags::new().with("g", 0)));
            peers.push(peer.unwrap());
            conns.push(conn);
        }
        let delivery = registry.deliver(&Tags::new().with("g", 0), &"hi".into(), || {
            r#"{"m":1}"#.into()
        });
        assert_eq!(delivery.delivered, n);
        let mut direct = Vec::new();
        for (i, (peer, conn)) in peers.iter_mut().zip(&conns).enumerate() {
            let mut queued = std::collections::VecDeque::new();
            if conn.outbox.take(&mut queued) {
                assert_eq!(queued.len(), 1, "connection {i}");
                direct.push(false);
                continue;
            }
            let expected: &[u8] = if i == 2 {
                b"\x81\x07{\"m\":1}"
            } else {
                b"\x81\x02hi"
            };
            let mut got = vec![0; expected.len()];
            let read = tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got));
            read.await
                .unwrap_or_else(|_| panic!("connection {i}: neither queued nor written"))
                .unwrap();
            assert_eq!(got, expected, "connection {i}");
            direct.push(true);
        }
        direct
    }

    /// How many were written directly (the index lists recipients in its own order).
    fn direct_count(written: &[bool]) -> usize {
        written.iter().filter(|direct| **direct).count()
    }

    /// One test, so that its sockets (two per connection) stay under a default limit of 1,024
    /// open files: the other half runs after the first half's are closed.
    #[tokio::test]
    async fn a_delivery_writes_its_quiet_recipients_directly_in_batches_or_one_by_one() {
        assert!(
            crate::outbox::batch_available(),
            "io_uring is refused on this machine (see the warning above)"
        );
        assert_eq!(deliver_to_quiet_connections(3).await, [true; 3]);
        // More than one io_uring_enter's worth (the batch cap is higher still).
        let n = direct::PER_DELIVERY + 10;
        let written = deliver_to_quiet_connections(n as u64).await;
        assert_eq!(direct_count(&written), n);

        // Without io_uring: one send each, for at most PER_DELIVERY; the others queued.
        crate::outbox::refuse_batches_on_this_thread();
        assert_eq!(deliver_to_quiet_connections(3).await, [true; 3]);
        let written = deliver_to_quiet_connections(n as u64).await;
        assert_eq!(direct_count(&written), direct::PER_DELIVERY);
    }
}
