//! A connection's bounded outgoing queue: it allocates nothing while the connection is idle,
//! and its writer takes everything queued in one short lock.
//!
//! tokio's bounded channel allocates a block of 32 slots per connection up front (about
//! 1.5 KiB): most of an idle connection's memory. This queue is a `VecDeque` behind a
//! `std::sync::Mutex` (never held across an await or I/O) and an `AtomicWaker`.
//!
//! The bound counts what the writer has taken but not yet written, too: a peer that stops
//! reading holds at most `capacity` frames in the server, not a full queue plus a full batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; the writer is woken.
    Queued,
    /// The queue holds `capacity` frames already.
    Full,
    /// The writer is gone.
    Closed,
}

/// A bounded multi-producer, single-consumer queue of text frames.
#[derive(Debug)]
pub struct Outbox {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    /// Frames the writer took and has not finished writing.
    in_writer: AtomicUsize,
    writer: AtomicWaker,
    closed: AtomicBool,
}

impl Outbox {
    /// An empty queue of at most `capacity` frames (nothing allocated yet).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            frames: Mutex::new(VecDeque::new()),
            capacity,
            in_writer: AtomicUsize::new(0),
            writer: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Utf8Bytes>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Utf8Bytes) -> Push {
        if self.closed.load(Ordering::Acquire) {
            return Push::Closed;
        }
        {
            let mut frames = self.lock();
            if frames.len() + self.in_writer.load(Ordering::Acquire) >= self.capacity {
                return Push::Full;
            }
            frames.push_back(frame);
        }
        self.writer.wake();
        Push::Queued
    }

    /// Moves every queued frame to the back of `into`; returns whether there was any. They
    /// still count against the bound until [`written`](Outbox::written).
    pub fn take(&self, into: &mut VecDeque<Utf8Bytes>) -> bool {
        let mut frames = self.lock();
        if frames.is_empty() {
            return false;
        }
        if into.is_empty() {
            // O(1): the writer's spent buffer becomes the queue's.
            std::mem::swap(&mut *frames, into);
        } else {
            into.extend(frames.drain(..));
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
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push("a".into()), Push::Queued);
        assert_eq!(outbox.push("b".into()), Push::Queued);
        assert_eq!(outbox.push("c".into()), Push::Full);
        let mut got = VecDeque::new();
        assert!(outbox.take(&mut got));
        assert_eq!(got, ["a", "b"].map(Utf8Bytes::from));
        assert!(!outbox.take(&mut got));
        // Taken but not written: still counted.
        assert_eq!(outbox.push("c".into()), Push::Full);
        got.clear();
        outbox.written();
        assert_eq!(outbox.push("c".into()), Push::Queued);
        outbox.close();
        assert_eq!(outbox.push("d".into()), Push::Closed);
    }
}
