//! A connection's outgoing path: its bounded queue ([`Outbox`]) and, for plain TCP, direct
//! writes into its socket ([`direct`]).
//!
//! # The ordering rule
//!
//! Every frame for a connection goes out in the order it was offered, whichever path it takes:
//! - a frame is written directly only when nothing is queued for the connection and nothing
//!   taken by its writer is still unwritten, so it cannot overtake a queued frame;
//! - a direct write is accepted whole by [`SharedTcp`]: what the kernel does
//!   not take waits inside the socket and goes out before any later write, the writer's
//!   included, so two frames never interleave;
//! - before its close frame, the connection stops direct writes ([`Outbox::stop_direct`]), so
//!   the close frame is the last thing written.
//!
//! # The lock order
//!
//! The registry's index lock is never held while an outbox is offered a frame: a delivery
//! collects its recipients under the index lock, releases it, then offers (see
//! [`Registry::deliver`](crate::registry::Registry::deliver)). Inside an outbox, its state lock is
//! taken first and the socket's `pending` lock second (by a direct write); the writer's
//! writes take only the socket's. Neither is held across an await. A batch of direct writes
//! (the `io-uring` feature: [`Outbox::claim`], [`write_claimed`]) holds the state and
//! `pending` locks of many outboxes at once, so it takes each with `try_lock` only and never
//! waits for a lock: an outbox whose lock is busy gets its frame queued instead.
//!
//! # The queue
//!
//! tokio's bounded channel allocates a block of 32 slots per connection up front (about
//! 1.5 KiB): most of an idle connection's memory. This queue is a `VecDeque` behind a
//! `std::sync::Mutex` and an `AtomicWaker`, and allocates nothing while the connection is idle;
//! its writer takes everything queued in one short lock.
//!
//! The bound counts what the writer has taken but not yet written, too: a peer that stops
//! reading holds at most `capacity` frames in the server, not a full queue plus a full batch.

pub mod direct;
#[cfg(all(feature = "io-uring", target_os = "linux"))]
#[allow(unsafe_code)]
mod uring;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use self::direct::{Sent, SharedTcp};

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; the writer is woken.
    Queued,
    /// Written straight into the socket: the queue was empty and the writer idle.
    Written,
    /// The queue holds `capacity` frames already.
    Full,
    /// The writer is gone.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    /// The plain TCP socket, while frames may be written to it directly.
    direct: Option<SharedTcp>,
    /// The socket, while the connection's task writes its greeting (position, replay): no
    /// frame may go around it until [`Outbox::release`].
    parked: Option<SharedTcp>,
}

/// A bounded multi-producer, single-consumer queue of text frames.
#[derive(Debug)]
pub struct Outbox {
    /// When frames were offered with a time ([`push`](Outbox::push)).
    pace: direct::Pace,
    state: Mutex<State>,
    capacity: usize,
    /// Frames the writer took and has not finished writing.
    in_writer: AtomicUsize,
    /// A direct write left bytes in the socket: the writer must flush them.
    flush: AtomicBool,
    writer: AtomicWaker,
    closed: AtomicBool,
}

impl Outbox {
    /// An empty queue of at most `capacity` frames (nothing allocated yet); with `direct`,
    /// frames for an idle writer go straight into that socket.
    pub fn new(capacity: usize, direct: Option<SharedTcp>) -> Self {
        Self::with_state(
            capacity,
            State {
                frames: VecDeque::new(),
                direct,
                parked: None,
            },
        )
    }

    /// Like [`new`](Outbox::new), but every frame is queued until [`release`](Outbox::release):
    /// the connection's task writes its greeting first.
    pub fn held(capacity: usize, direct: Option<SharedTcp>) -> Self {
        Self::with_state(
            capacity,
            State {
                frames: VecDeque::new(),
                direct: None,
                parked: direct,
            },
        )
    }

    /// The greeting is written: frames may go straight into the socket from now on.
    pub fn release(&self) {
        let mut state = self.lock();
        if let Some(socket) = state.parked.take() {
            state.direct = Some(socket);
        }
    }

    fn with_state(capacity: usize, state: State) -> Self {
        Outbox {
            pace: direct::Pace::default(),
            state: Mutex::new(state),
            capacity,
            in_writer: AtomicUsize::new(0),
            flush: AtomicBool::new(false),
            writer: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting. With `now` (microseconds on any clock that all pushes
    /// share), a frame for a quiet connection ([`direct::Pace::quiet`]), with nothing queued or
    /// being written, is written into its socket instead (the order of frames is kept either
    /// way).
    pub fn push(&self, frame: Utf8Bytes, now: Option<direct::Now>) -> Push {
        if self.closed.load(Ordering::Acquire) {
            return Push::Closed;
        }
        let quiet = now.is_some_and(|now| self.pace.quiet(now));
        {
            let mut state = self.lock();
            let queued = state.frames.len() + self.in_writer.load(Ordering::Acquire);
            if queued == 0 && quiet {
                if let Some(socket) = &state.direct {
                    match socket.try_frame(frame.as_bytes()) {
                        Sent::Whole => return Push::Written,
                        Sent::Part => {
                            drop(state);
                            self.flush.store(true, Ordering::Release);
                            self.writer.wake();
                            return Push::Written;
                        }
                        Sent::Not => {}
                    }
                }
            }
            if queued >= self.capacity {
                return Push::Full;
            }
            state.frames.push_back(frame);
        }
        self.writer.wake();
        Push::Queued
    }

    /// Moves every queued frame to the back of `into`; returns whether there was any, or a
    /// direct write left bytes to flush. They still count against the bound until
    /// [`written`](Outbox::written).
    pub fn take(&self, into: &mut VecDeque<Utf8Bytes>) -> bool {
        let flush = self.flush.swap(false, Ordering::AcqRel);
        let mut state = self.lock();
        if state.frames.is_empty() {
            return flush;
        }
        if into.is_empty() {
            // O(1): the writer's spent buffer becomes the queue's.
            std::mem::swap(&mut state.frames, into);
        } else {
            into.extend(state.frames.drain(..));
        }
        self.in_writer.store(into.len(), Ordering::Release);
        true
    }

    /// The writer has written everything it took.
    pub fn written(&self) {
        self.in_writer.store(0, Ordering::Release);
    }

    /// Like [`take`](Outbox::take), registering the writer to be woken when it finds nothing.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut VecDeque<Utf8Bytes>) -> Poll<()> {
        if self.take(into) {
            return Poll::Ready(());
        }
        self.writer.register(cx.waker());
        // A push between the first look and the registration must not be missed.
        if self.take(into) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// With `now`, when this connection is quiet, nothing is queued or being written, it may
    /// be written to directly and its state is free: its state locked for [`write_claimed`],
    /// which writes a batch of them with one system call. Never waits for a lock (a batch holds
    /// many). Records the offer either way, like [`push`](Outbox::push).
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    pub fn claim(&self, now: direct::Now) -> Option<Claim<'_>> {
        if self.closed.load(Ordering::Acquire) || !self.pace.quiet(now) {
            return None;
        }
        let state = self.state.try_lock().ok()?;
        if !state.frames.is_empty() || self.in_writer.load(Ordering::Acquire) != 0 {
            return None;
        }
        let socket = state.direct.clone()?;
        Some(Claim {
            outbox: self,
            state,
            socket,
        })
    }

    /// No more direct writes: the connection is closing, and its close frame must be last.
    pub fn stop_direct(&self) {
        let mut state = self.lock();
        state.direct = None;
        state.parked = None;
    }

    /// The writer is gone: later pushes answer `Closed` and what is queued is dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.lock());
        drop(dropped);
    }
}

/// An outbox claimed for a batch of direct writes ([`Outbox::claim`]).
#[cfg(all(feature = "io-uring", target_os = "linux"))]
#[derive(Debug)]
pub struct Claim<'a> {
    outbox: &'a Outbox,
    state: std::sync::MutexGuard<'a, State>,
    socket: SharedTcp,
}

/// Whether this thread sends batches of direct writes with one system call (made ready now if
/// it can be): without, [`Outbox::push`] writes one `send` per recipient.
#[cfg(all(feature = "io-uring", target_os = "linux"))]
pub fn batch_available() -> bool {
    uring::available()
}

/// Makes this thread go without io_uring, as where it is refused.
#[cfg(all(test, feature = "io-uring", target_os = "linux"))]
pub fn refuse_batches_on_this_thread() {
    uring::refuse_on_this_thread();
}

/// Writes each claimed outbox its frame (the queued form, and the same frame encoded with its
/// header), all with one `io_uring_enter` per [`direct::PER_DELIVERY`] (the `io-uring`
/// feature), and releases them. The same rules hold as for one direct write: a socket whose `pending` lock is busy or not
/// empty, or that takes nothing, gets its frame queued; one that takes part keeps the rest in
/// `pending` and its writer flushes it. On a thread without a ring, each is one `send`.
#[cfg(all(feature = "io-uring", target_os = "linux"))]
pub fn write_claimed(claims: Vec<(Claim<'_>, &Utf8Bytes, &[u8])>) -> Vec<Push> {
    // The sockets apart, so that their `pending` locks can be held while the states change.
    let (claims, sockets): (Vec<_>, Vec<SharedTcp>) = claims
        .into_iter()
        .map(|(claim, frame, encoded)| {
            let Claim {
                outbox,
                state,
                socket,
            } = claim;
            ((outbox, state, frame, encoded), socket)
        })
        .collect();
    let mut pending: Vec<_> = sockets
        .iter()
        .map(|socket| socket.try_pending().filter(|p| p.is_empty()))
        .collect();
    let writes: Vec<uring::Write<'_>> = pending
        .iter()
        .zip(&sockets)
        .zip(&claims)
        .filter(|((pending, _), _)| pending.is_some())
        .map(|((_, socket), (_, _, _, encoded))| uring::Write {
            fd: socket.fd(),
            frame: encoded,
        })
        .collect();
    let mut results = Vec::new();
    let batched = uring::send_all(&writes, &mut results).is_some();
    drop(writes);
    let mut results = results.into_iter();
    let mut pushed = Vec::with_capacity(claims.len());
    let mut wake = Vec::new();
    for ((outbox, mut state, frame, encoded), (pending, socket)) in
        claims.into_iter().zip(pending.iter_mut().zip(&sockets))
    {
        let taken = match pending {
            Some(pending) => {
                let taken = match batched {
                    true => usize::try_from(results.next().unwrap_or(-1)).unwrap_or(0),
                    false => socket.try_write_locked(encoded),
                };
                if taken > 0 && taken < encoded.len() {
                    pending.extend_from_slice(&encoded[taken..]);
                    outbox.flush.store(true, Ordering::Release);
                    wake.push(outbox);
                }
                taken
            }
            None => 0,
        };
        if taken > 0 {
            pushed.push(Push::Written);
        } else if outbox.capacity == 0 {
            pushed.push(Push::Full);
        } else {
            state.frames.push_back(frame.clone());
            wake.push(outbox);
            pushed.push(Push::Queued);
        }
    }
    drop(pending);
    for outbox in wake {
        outbox.writer.wake();
    }
    pushed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_drained_in_order() {
        let outbox = Outbox::new(2, None);
        assert_eq!(outbox.push("a".into(), None), Push::Queued);
        assert_eq!(outbox.push("b".into(), None), Push::Queued);
        assert_eq!(outbox.push("c".into(), None), Push::Full);
        let mut got = VecDeque::new();
        assert!(outbox.take(&mut got));
        assert_eq!(got, ["a", "b"].map(Utf8Bytes::from));
        assert!(!outbox.take(&mut got));
        // Taken but not written: still counted.
        assert_eq!(outbox.push("c".into(), None), Push::Full);
        got.clear();
        outbox.written();
        assert_eq!(outbox.push("c".into(), None), Push::Queued);
        outbox.close();
        assert_eq!(outbox.push("d".into(), None), Push::Closed);
    }
}

#[cfg(all(test, feature = "io-uring", target_os = "linux"))]
mod batch_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A plain TCP outbox and the peer's end of its socket.
    async fn pair(listener: &TcpListener) -> (Outbox, SharedTcp, TcpStream) {
        small_pair(listener, None).await
    }

    /// Like [`pair`], with at most `buffers` bytes in the kernel's buffers on both ends.
    async fn small_pair(
        listener: &TcpListener,
        buffers: Option<usize>,
    ) -> (Outbox, SharedTcp, TcpStream) {
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, peer) = tokio::join!(listener.accept(), peer);
        let (tcp, peer) = (accepted.unwrap().0, peer.unwrap());
        if let Some(size) = buffers {
            socket2::SockRef::from(&tcp)
                .set_send_buffer_size(size)
                .unwrap();
            socket2::SockRef::from(&peer)
                .set_recv_buffer_size(size)
                .unwrap();
        }
        let socket = SharedTcp::new(tcp);
        (Outbox::new(4, Some(socket.clone())), socket, peer)
    }

    async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        peer.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_batch_writes_each_claimed_socket_its_frame_and_queues_behind_a_busy_one() {
        batch_of_three().await;
    }

    #[tokio::test]
    async fn without_a_ring_a_batch_writes_one_send_each_by_the_same_rules() {
        uring::refuse_on_this_thread();
        assert!(!batch_available());
        batch_of_three().await;
    }

    /// Two quiet sockets and one with a frame queued, through one batch.
    async fn batch_of_three() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, _a_socket, mut a_peer) = pair(&listener).await;
        let (b, _b_socket, mut b_peer) = pair(&listener).await;
        let (busy, _, _busy_peer) = pair(&listener).await;
        // Something queued: no claim, so nothing can overtake it.
        assert_eq!(busy.push("first".into(), None), Push::Queued);
        let (raw, envelope) = (Utf8Bytes::from("hi"), Utf8Bytes::from(r#"{"m":1}"#));
        let encoded = [&raw, &envelope].map(|f| direct::encode_frame(f.as_bytes()));
        let now = direct::Now::at(1_000_000);
        assert!(busy.claim(now).is_none());
        let claims = vec![
            (a.claim(now).unwrap(), &raw, &encoded[0][..]),
            (b.claim(now).unwrap(), &envelope, &encoded[1][..]),
        ];
        assert_eq!(write_claimed(claims), [Push::Written, Push::Written]);
        assert_eq!(read_exactly(&mut a_peer, 4).await, b"\x81\x02hi");
        assert_eq!(read_exactly(&mut b_peer, 9).await, b"\x81\x07{\"m\":1}");
        // Offered again at once, a connection is not quiet: its frames queue and batch.
        assert!(a.claim(direct::Now::at(1_000_001)).is_none());
        let mut taken = VecDeque::new();
        assert!(!a.take(&mut taken));
        // A socket whose bytes are still pending gets its frame queued behind them.
        let (c, c_socket, _c_peer) = pair(&listener).await;
        let held = c_socket.try_pending().unwrap();
        let claims = vec![(c.claim(now).unwrap(), &raw, &encoded[0][..])];
        assert_eq!(write_claimed(claims), [Push::Queued]);
        drop(held);
        assert!(c.take(&mut taken));
        assert_eq!(taken, [raw]);
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_waits_in_front_of_later_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (outbox, mut socket, mut peer) = small_pair(&listener, Some(32 << 10)).await;
        // 1 MiB into a peer that reads nothing yet: the kernel's small buffers take a part.
        let big = Utf8Bytes::from("x".repeat(1 << 20));
        let encoded = direct::encode_frame(big.as_bytes());
        let now = direct::Now::at(1_000_000);
        let claims = vec![(outbox.claim(now).unwrap(), &big, &encoded[..])];
        let pushed = write_claimed(claims);
        assert_eq!(pushed, [Push::Written]);
        // The kernel took part of it: the writer is told to flush the rest, before its own.
        let mut taken = VecDeque::new();
        assert!(outbox.take(&mut taken), "the writer must flush");
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        socket.write_all(b"<after>").await.unwrap();
        socket.shutdown().await.unwrap();
        drop((socket, outbox));
        let all = reader.await.unwrap();
        let header = [0x81, 127, 0, 0, 0, 0, 0, 0x10, 0, 0];
        assert_eq!(all.len(), header.len() + big.len() + 7);
        assert_eq!(&all[..10], header);
        assert!(all[10..10 + big.len()].iter().all(|&b| b == b'x'));
        assert_eq!(&all[10 + big.len()..], b"<after>");
    }
}
