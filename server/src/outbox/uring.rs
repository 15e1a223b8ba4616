//! A delivery's direct writes in one system call per [`DEPTH`], through io_uring (the
//! `io-uring` feature, Linux): the only unsafe code in the server.
//!
//! Each thread that delivers keeps a ring of its own, made on first use and checked then: the
//! kernel must know `IORING_OP_SEND` (Linux 5.6) and let this process call `io_uring_enter`
//! (a seccomp profile such as Docker's default one refuses both system calls). Without a
//! ring, [`send_all`] answers `None` and the caller writes one `send` per recipient.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// Submission entries per ring: [`PER_DELIVERY`](super::direct::PER_DELIVERY) fits in one
/// `io_uring_enter`.
const DEPTH: u32 = super::direct::PER_DELIVERY as u32;

/// How many times `io_uring_enter` may be interrupted or busy in a row before the process
/// gives up (it cannot return while the kernel may still read the frames).
const MAX_RETRIES: u32 = 100_000;

thread_local! {
    /// This thread's ring; `Some(None)` once it could not be made.
    static RING: RefCell<Option<Option<Ring>>> = const { RefCell::new(None) };
}

struct Ring {
    ring: IoUring,
    entries: Vec<squeue::Entry>,
}

/// One write of a batch: `frame` into the socket `fd`.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The socket, open for as long as the batch borrows it.
    pub fd: BorrowedFd<'a>,
    /// What to send.
    pub frame: &'a [u8],
}

/// Whether this thread has a ring (made now if it has none yet).
pub fn available() -> bool {
    RING.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(Ring::try_new)
            .is_some()
    })
}

/// Sends each write without waiting for room (`MSG_DONTWAIT`: a full socket answers
/// `EAGAIN`), one `io_uring_enter` per [`DEPTH`] writes, and puts in `results` what each
/// returned, in order: the bytes the kernel took, or a negative errno. `None`, sending
/// nothing, when this thread has no ring.
pub fn send_all(writes: &[Write<'_>], results: &mut Vec<i32>) -> Option<()> {
    RING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ring = cell.get_or_insert_with(Ring::try_new).as_mut()?;
        results.clear();
        results.resize(writes.len(), 0);
        for (start, chunk) in (0..)
            .step_by(DEPTH as usize)
            .zip(writes.chunks(DEPTH as usize))
        {
            ring.send_chunk(start, chunk, results);
        }
        Some(())
    })
}

/// Makes this thread go without a ring, as where io_uring is refused.
#[cfg(test)]
pub fn refuse_on_this_thread() {
    RING.with(|cell| *cell.borrow_mut() = Some(None));
}

impl Ring {
    fn try_new() -> Option<Self> {
        static WARNED: std::sync::Once = std::sync::Once::new();
        Ring::new()
            .map_err(|e| {
                // Each thread tries once; a refusal is the same on all: said once.
                WARNED.call_once(|| {
                    tracing::warn!(
                        "io_uring is not available ({e}): direct writes take one send per recipient"
                    )
                })
            })
            .ok()
    }

    fn new() -> io::Result<Self> {
        let ring = IoUring::new(DEPTH)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Send::CODE) {
            return Err(io::Error::other(
                "this kernel has no IORING_OP_SEND (Linux 5.6)",
            ));
        }
        let mut ring = Ring {
            ring,
            entries: Vec::with_capacity(DEPTH as usize),
        };
        // One empty round trip: a sandbox that lets the ring be made may still refuse
        // io_uring_enter, and that must show here, not with writes in flight.
        let nop = opcode::Nop::new().build();
        // SAFETY: a NOP points at no memory.
        unsafe { ring.ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("a new ring has no room for one entry"))?;
        ring.ring.submit_and_wait(1)?;
        ring.ring.completion().for_each(drop);
        Ok(ring)
    }

    /// Submits `chunk` (at most [`DEPTH`] writes, the first numbered `start`) and reaps every
    /// completion into `results`.
    fn send_chunk(&mut self, start: usize, chunk: &[Write<'_>], results: &mut [i32]) {
        self.entries.clear();
        self.entries
            .extend(chunk.iter().enumerate().map(|(i, write)| {
                let len = u32::try_from(write.frame.len()).unwrap_or(u32::MAX);
                opcode::Send::new(types::Fd(write.fd.as_raw_fd()), write.frame.as_ptr(), len)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data((start + i) as u64)
            }));
        // SAFETY: every entry points at a frame and a socket that `chunk` borrows for the
        // whole of this call, and this returns only once the kernel has posted a completion
        // for every entry pushed here (or aborts the process), so neither is released while
        // the kernel may still use it. The submission queue is empty before the push (the
        // previous chunk was reaped) and a chunk fits its depth.
        let pushed = unsafe { self.ring.submission().push_multiple(&self.entries) };
        if pushed.is_err() {
            // Cannot happen (see above); nothing was pushed, so nothing is in flight.
            results[start..start + chunk.len()].fill(-libc::EAGAIN);
            return;
        }
        let (mut reaped, mut retries) = (0, 0);
        while reaped < chunk.len() {
            // Entries the kernel did not take in one call stay queued for the next.
            match self.ring.submit_and_wait(chunk.len() - reaped) {
                Ok(_) => retries = 0,
                // Interrupted, or the kernel short of room: reap and retry.
                Err(e)
                    if retries < MAX_RETRIES
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                        ) =>
                {
                    retries += 1;
                }
                Err(e) => abort_in_flight(&e),
            }
            for completion in self.ring.completion() {
                reaped += 1;
                if let Some(slot) = results.get_mut(completion.user_data() as usize) {
                    *slot = completion.result();
                }
            }
        }
    }
}

/// Entries may still be in flight with pointers into the callers' frames: returning would let
/// them be freed under the kernel, and so might unwinding. Says why on stderr without anything
/// that can panic, then aborts.
fn abort_in_flight(error: &io::Error) -> ! {
    use std::io::Write as _;
    let _ = writeln!(
        io::stderr(),
        "tagcast: io_uring_enter failed with writes in flight, aborting: {error}"
    );
    std::process::abort()
}
