//! Direct writes: the router writes a frame straight into a recipient's plain TCP socket.
//!
//! With one request in flight nothing batches, and waking a recipient's task to write one
//! frame costs as much as the write itself. So a frame for a recipient that is *quiet*
//! ([`Pace::quiet`]: offered nothing for [`QUIET_MICROS`], or offered frames at a steady pace
//! of one per [`STEADY_MICROS`] or slower, by a delivery whose thread was idle before it), with
//! nothing queued or being written, goes straight into its socket ([`SharedTcp::try_frame`]);
//! a busy recipient keeps batching through its queue. A delivery writes directly to at most
//! [`PER_DELIVERY`] recipients one `send` each, or [`PER_DELIVERY_BATCHED`] with io_uring, so a
//! large fan-out is written by the recipients' own tasks, on every core. [`DirectWrites`] is the clock that every offer of a server shares, and
//! the switch that turns the path off (`--direct-writes false`).
//!
//! Frames must never interleave. Every write, the task's (through tungstenite and hyper) and
//! the router's, goes through one lock, and a write is accepted whole: what the kernel does not
//! take stays in `pending` and goes out before anything else. A writer finding `pending` not
//! empty waits for the socket like any blocked write. The ordering rule and the lock order of
//! both paths are in [the parent module](super).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// How long a connection must have been offered nothing for a frame to be written into its
/// socket directly, in microseconds. A connection receiving faster than that gets its frames
/// queued, so that its writer sends them several per write, unless they come at a steady pace
/// ([`STEADY_MICROS`]). (At 2 ms a burst's gaps let direct writes through, and each one slowed
/// the publisher, widening the gaps.)
pub const QUIET_MICROS: u64 = 20_000;

/// A connection offered frames at a steady pace is quiet too when the gaps between its offers
/// average at least this (and the last one was at least half of it), in microseconds: its
/// writer has long finished each frame when the next comes, so queueing batches nothing and
/// only adds a task wake-up per frame. The average follows each gap by an eighth, so one long
/// gap in a burst does not let direct writes through. Only for a delivery whose thread was idle
/// before it ([`IDLE_MICROS`]).
pub const STEADY_MICROS: u64 = 4_000;

/// A delivery may count a steady pace as quiet ([`Now::steady`]) only when its thread finished
/// its previous delivery at least this long before, in microseconds. A thread delivering back
/// to back is in a burst: direct writes would make each delivery slower and the gaps longer,
/// which would let more direct writes through, and the burst would stop batching for good.
pub const IDLE_MICROS: u64 = 1_000;

/// Recipients of one delivery that may be written to directly, one `send` each: the index is
/// not held through them (deliveries write after releasing it), but the delivering task is,
/// and a large fan-out is faster written by the recipients' own tasks on every core.
pub const PER_DELIVERY: usize = 256;

/// Like [`PER_DELIVERY`], when the delivering thread sends its direct writes in batches (the
/// `io-uring` feature): one system call per [`PER_DELIVERY`] writes costs less than waking
/// each recipient's task to write its frame.
pub const PER_DELIVERY_BATCHED: usize = 1024;

/// The time of an offer (microseconds on the clock of [`DirectWrites`]), and whether a steady
/// pace may count as quiet for it ([`IDLE_MICROS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Microseconds on the clock every offer of a server shares.
    pub micros: u64,
    /// The delivering thread was idle before this delivery.
    pub steady: bool,
}

impl Now {
    /// An offer at `micros` where only a pause makes a connection quiet.
    pub fn at(micros: u64) -> Self {
        Now {
            micros,
            steady: false,
        }
    }
}

/// When a connection was last offered a frame with a time, and the average gap between its
/// offers: what makes it quiet.
#[derive(Debug, Default)]
pub struct Pace {
    last: AtomicU64,
    gap: AtomicU64,
}

impl Pace {
    /// Records an offer at `now` and tells whether the connection was quiet before it:
    /// offered nothing for [`QUIET_MICROS`], or (when `now` allows it) at a steady pace of
    /// [`STEADY_MICROS`] or slower. Two offers at once may each miss the other's update of the
    /// average: it is a hint, and either answer keeps the frames in order.
    pub fn quiet(&self, now: Now) -> bool {
        let gap = now
            .micros
            .saturating_sub(self.last.swap(now.micros, Ordering::Relaxed));
        let average = self.gap.load(Ordering::Relaxed);
        let average = (average - average / 8 + gap.min(QUIET_MICROS) / 8).min(QUIET_MICROS);
        self.gap.store(average, Ordering::Relaxed);
        gap >= QUIET_MICROS || (now.steady && gap >= STEADY_MICROS / 2 && average >= STEADY_MICROS)
    }
}

/// The clock of direct writes, and their switch.
#[derive(Debug, Clone, Copy)]
pub struct DirectWrites {
    start: std::time::Instant,
    enabled: bool,
}

impl DirectWrites {
    /// A clock starting now; `enabled: false` turns direct writes off for every delivery.
    pub fn new(enabled: bool) -> Self {
        DirectWrites {
            start: std::time::Instant::now(),
            enabled,
        }
    }

    /// The time to offer frames with at `instant`: microseconds since the start plus a second,
    /// so that a connection never offered anything (last offer at 0) counts as quiet from the
    /// start. `None` when direct writes are off.
    pub fn at(&self, instant: std::time::Instant) -> Option<u64> {
        self.enabled
            .then(|| 1_000_000 + instant.saturating_duration_since(self.start).as_micros() as u64)
    }
}

/// What became of a frame offered to [`SharedTcp::try_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The kernel took all of it.
    Whole,
    /// The kernel took part of it; the rest waits in the socket, and the connection's writer
    /// must flush it.
    Part,
    /// Nothing was written (the socket is full, or something else waits to go out first).
    Not,
}

#[derive(Debug)]
struct Inner {
    tcp: TcpStream,
    /// Bytes accepted but not yet written, always ahead of anything else.
    pending: Mutex<Vec<u8>>,
}

/// A TCP stream shared by its connection's task and the router (cheap to clone).
#[derive(Debug, Clone)]
pub struct SharedTcp(Arc<Inner>);

impl SharedTcp {
    /// Shares `tcp`.
    pub fn new(tcp: TcpStream) -> Self {
        SharedTcp(Arc::new(Inner {
            tcp,
            pending: Mutex::new(Vec::new()),
        }))
    }

    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes waiting to go out, if no one else is writing: a batch of direct writes never
    /// waits for a lock while it holds others.
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    pub(super) fn try_pending(&self) -> Option<MutexGuard<'_, Vec<u8>>> {
        self.0.pending.try_lock().ok()
    }

    /// The socket's file descriptor, for a batch of writes.
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0.tcp)
    }

    /// Writes `bytes` without waiting, the caller holding the `pending` lock (empty); returns
    /// how many the kernel took (0 when it took none or the socket failed).
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    pub(super) fn try_write_locked(&self, bytes: &[u8]) -> usize {
        self.0.tcp.try_write(bytes).unwrap_or(0)
    }

    /// Writes one unmasked WebSocket text frame of `payload` without waiting, if nothing else
    /// waits to go out.
    pub fn try_frame(&self, payload: &[u8]) -> Sent {
        let mut pending = self.pending();
        if !pending.is_empty() {
            return Sent::Not;
        }
        let mut header = [0u8; 10];
        let header = frame_header(payload.len(), &mut header);
        let total = header.len() + payload.len();
        match self
            .0
            .tcp
            .try_write_vectored(&[IoSlice::new(header), IoSlice::new(payload)])
        {
            Ok(n) if n == total => Sent::Whole,
            Ok(0) | Err(_) => Sent::Not,
            Ok(n) => {
                if n < header.len() {
                    pending.extend_from_slice(&header[n..]);
                    pending.extend_from_slice(payload);
                } else {
                    pending.extend_from_slice(&payload[n - header.len()..]);
                }
                Sent::Part
            }
        }
    }

    /// Writes what is pending; ready when nothing is.
    fn poll_drain(&self, pending: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !pending.is_empty() {
            match self.0.tcp.try_write(pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.0.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // A burst's leftover buffer is not kept by an idle connection.
        *pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

/// `payload` as one unmasked text frame, header included.
#[cfg(all(feature = "io-uring", target_os = "linux"))]
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 10];
    let header = frame_header(payload.len(), &mut header);
    let mut frame = Vec::with_capacity(header.len() + payload.len());
    frame.extend_from_slice(header);
    frame.extend_from_slice(payload);
    frame
}

/// The header of an unmasked, final text frame of `len` bytes, as tungstenite formats it.
fn frame_header(len: usize, out: &mut [u8; 10]) -> &[u8] {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut rest = &mut out[..];
    header
        .format(len as u64, &mut rest)
        .expect("10 bytes hold any unmasked header");
    let written = 10 - rest.len();
    &out[..written]
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.tcp.poll_read_ready(cx))?;
            match self.0.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut pending = self.pending();
        ready!(self.poll_drain(&mut pending, cx))?;
        loop {
            match self.0.tcp.try_write(buf) {
                Ok(n) => {
                    // Accepted whole: the rest goes out before any other write.
                    pending.extend_from_slice(&buf[n..]);
                    return Poll::Ready(Ok(buf.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.0.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = self.pending();
        self.poll_drain(&mut pending, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = self.pending();
        ready!(self.poll_drain(&mut pending, cx))?;
        Poll::Ready(socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn frame_headers_by_length() {
        let mut out = [0u8; 10];
        assert_eq!(frame_header(5, &mut out), [0x81, 5]);
        assert_eq!(frame_header(126, &mut out), [0x81, 126, 0, 126]);
        assert_eq!(
            frame_header(70_000, &mut out),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    /// An offer at `micros` by a thread that was idle before it.
    fn idle(micros: u64) -> Now {
        Now {
            micros,
            steady: true,
        }
    }

    /// Offers at `gaps` (µs) apart after `start`, by idle threads when `steady`; whether each
    /// found the connection quiet.
    fn offered(pace: &Pace, start: u64, gaps: &[u64], steady: bool) -> Vec<bool> {
        let mut micros = start;
        gaps.iter()
            .map(|gap| {
                micros += gap;
                pace.quiet(Now { micros, steady })
            })
            .collect()
    }

    #[test]
    fn a_connection_is_quiet_after_a_pause_or_at_a_steady_slow_pace() {
        // Never offered anything: quiet at once; a burst right after it is not.
        let pace = Pace::default();
        assert!(pace.quiet(idle(1_000_000)));
        assert_eq!(offered(&pace, 1_000_000, &[1_000; 20], true), [false; 20]);
        // One long gap in the burst does not let a direct write through...
        let burst = offered(&pace, 1_020_000, &[6_000, 1_000], true);
        assert_eq!(burst, [false, false]);
        // ...a pause of QUIET_MICROS does, whatever came before.
        assert_eq!(offered(&pace, 1_027_000, &[QUIET_MICROS], false), [true]);

        // One frame every 10 ms: its writer finished long ago, direct from the second gap on.
        let pace = Pace::default();
        assert!(pace.quiet(idle(1_000_000)));
        let steady = offered(&pace, 1_000_000, &[10_000; 6], true);
        assert_eq!(steady, [false, true, true, true, true, true]);
        // The same pace from a thread that delivers back to back (a burst that direct
        // writes would slow down): queued.
        let busy = offered(&pace, 1_060_000, &[10_000; 3], false);
        assert_eq!(busy, [false; 3]);

        // Frames 3 ms apart keep queueing (their writer may still batch them).
        let pace = Pace::default();
        assert!(pace.quiet(idle(1_000_000)));
        assert_eq!(offered(&pace, 1_000_000, &[3_000; 20], true), [false; 20]);
    }

    #[tokio::test]
    async fn direct_frames_and_stream_writes_keep_their_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut all = Vec::new();
            tcp.read_to_end(&mut all).await.unwrap();
            all
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut shared = SharedTcp::new(tcp);
        let direct = shared.clone();
        shared.write_all(b"<stream>").await.unwrap();
        assert_eq!(direct.try_frame(b"hi"), Sent::Whole);
        shared.write_all(b"<end>").await.unwrap();
        shared.shutdown().await.unwrap();
        drop((shared, direct));
        let all = client.await.unwrap();
        assert_eq!(all, b"<stream>\x81\x02hi<end>");
    }
}
