//! Close codes and reasons (PROTOCOL.md §4, §8), and the one-shot switch that closes a connection.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Normal closure (answer to a client's close).
pub const NORMAL: u16 = 1000;
/// The server is shutting down (SIGINT/SIGTERM).
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A malformed or invalid request in raw mode, a binary frame, or invalid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// An unauthorized send in raw mode, a rate limit, or a slow consumer.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message over `--max-message-bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Closed by the server API (`POST /disconnect`).
pub const DISCONNECTED: u16 = 4001;
/// The node lost track of the cluster's history: resume to learn what was missed.
pub const SERVICE_RESTART: u16 = 1012;
/// The reason of a [`SERVICE_RESTART`] close.
pub const SERVICE_RESTART_REASON: &str = "service restart";
/// The server cannot serve right now (cluster bus down).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// The reason of a slow-consumer close.
pub const SLOW_CONSUMER: &str = "slow consumer";
/// How long a closing connection may take to write its close frame and hear the answer before
/// its TCP connection is dropped (PROTOCOL.md §8 allows 5 s).
pub const CLOSE_GRACE: Duration = Duration::from_secs(4);
/// A close reason is at most 123 bytes (RFC 6455 §5.5).
pub const MAX_REASON_BYTES: usize = 123;

/// Why a connection is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// The close frame to send, or `None` when the peer is gone or already closed.
    pub frame: Option<(u16, String)>,
    /// When the TCP connection is dropped at the latest.
    pub deadline: Instant,
}

/// A one-shot switch: the first `close` wins, later ones are ignored; the connection's task
/// wakes up, sends the frame, and the connection ends before the deadline.
///
/// One task waits on it (the connection's), so an `AtomicWaker` is enough: polling it is an
/// atomic swap, where a `Notify` would take a lock on every wake-up of the task.
#[derive(Debug, Default)]
pub struct Closer {
    closing: OnceLock<Closing>,
    waiter: AtomicWaker,
}

impl Closer {
    /// Asks the connection to close with `code` and `reason` (cut to 123 bytes). Returns whether
    /// this call decided the close.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        self.set(Some((code, truncate_reason(reason).to_owned())))
    }

    /// Ends the connection without a close frame (the peer closed or the socket failed).
    pub fn close_silently(&self) -> bool {
        self.set(None)
    }

    fn set(&self, frame: Option<(u16, String)>) -> bool {
        let first = self
            .closing
            .set(Closing {
                frame,
                deadline: Instant::now() + CLOSE_GRACE,
            })
            .is_ok();
        if first {
            self.waiter.wake();
        }
        first
    }

    /// The close decided so far.
    pub fn closing(&self) -> Option<&Closing> {
        self.closing.get()
    }

    /// Ready once a close is decided; registers the waiting task otherwise.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<&Closing> {
        if let Some(c) = self.closing.get() {
            return Poll::Ready(c);
        }
        self.waiter.register(cx.waker());
        match self.closing.get() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }

    /// Waits until a close is decided (one waiting task at a time).
    pub async fn wait(&self) -> &Closing {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await
    }
}

/// Cuts a reason to at most 123 bytes on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
    }

    #[tokio::test]
    async fn first_close_wins_and_wakes_waiters() {
        let closer = std::sync::Arc::new(Closer::default());
        let c = closer.clone();
        let waiter = tokio::spawn(async move { c.wait().await.frame.clone() });
        tokio::task::yield_now().await;
        assert!(closer.close(1008, SLOW_CONSUMER));
        assert!(!closer.close(1001, "later"));
        assert_eq!(
            waiter.await.unwrap(),
            Some((1008, SLOW_CONSUMER.to_owned()))
        );
    }
}
