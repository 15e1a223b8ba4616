//! A connection's outgoing path: its bounded queue ([`Outbox`]) and, for plain TCP, direct
//! writes into its socket ([`direct`]).
//!
//! # The ordering rule
//!
//! Every frame for a connection goes out in the order it was offered, whichever path it takes:
//! - a frame is written directly only when nothing is queued for the connection and nothing
//!   taken by its writer is still unwritten, so it cannot overtake a queued frame;
//! - a direct write is accepted whole by [`SharedTcp`](direct::SharedTcp): what the kernel does
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
//! writes take only the socket's. Neither is held across an await.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// When the last frame was offered with a time ([`push`](Outbox::push)).
    last_offer: AtomicU64,
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
            last_offer: AtomicU64::new(0),
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
    /// share), a frame for a connection quiet for [`direct::QUIET_MICROS`], with nothing queued or being
    /// written, is written into its socket instead (the order of frames is kept either way).
    pub fn push(&self, frame: Utf8Bytes, now: Option<u64>) -> Push {
        if self.closed.load(Ordering::Acquire) {
            return Push::Closed;
        }
        let quiet = now.is_some_and(|now| direct::quiet(&self.last_offer, now));
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
