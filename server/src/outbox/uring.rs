//! One delivery's direct writes in one system call, through io_uring (the `io-uring` feature):
//! the only unsafe code in the server.
//!
//! Each worker thread keeps a ring of its own, made on first use. If this kernel has no
//! io_uring (or a sandbox refuses it) the ring is never made and every delivery writes one
//! `send` per recipient as without the feature.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

/// Submission entries per ring: [`PER_DELIVERY`](super::direct::PER_DELIVERY) fits in one
/// `io_uring_enter`.
const DEPTH: u32 = super::direct::PER_DELIVERY as u32;

thread_local! {
    /// This thread's ring; `None` inside once it could not be made.
    static RING: RefCell<Option<Option<Ring>>> = const { RefCell::new(None) };
}

struct Ring {
    ring: IoUring,
    entries: Vec<squeue::Entry>,
}

/// One write of a batch: `frame` into the socket `fd`.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The socket, kept open by the caller until [`send_all`] returns.
    pub fd: RawFd,
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
/// returned, in order: the bytes the kernel took, or a negative errno. `None` when this thread
/// has no ring: the caller writes them itself.
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

impl Ring {
    fn try_new() -> Option<Self> {
        static WARNED: std::sync::Once = std::sync::Once::new();
        Ring::new()
            .map_err(|e| {
                // Each worker thread tries once; a refusal is the same on all (a seccomp
                // profile such as Docker's default one, an old kernel): said once.
                WARNED.call_once(|| {
                    tracing::warn!(
                        "io_uring is not available ({e}): direct writes take one send per recipient"
                    )
                })
            })
            .ok()
    }

    fn new() -> io::Result<Self> {
        // SUBMIT_ALL: one entry failing at submission does not hold back the others.
        let ring = IoUring::builder().setup_submit_all().build(DEPTH)?;
        Ok(Ring {
            ring,
            entries: Vec::with_capacity(DEPTH as usize),
        })
    }

    /// Submits `chunk` (at most [`DEPTH`] writes, the first numbered `start`) and reaps every
    /// completion into `results`.
    fn send_chunk(&mut self, start: usize, chunk: &[Write<'_>], results: &mut [i32]) {
        self.entries.clear();
        self.entries
            .extend(chunk.iter().enumerate().map(|(i, write)| {
                let len = u32::try_from(write.frame.len()).unwrap_or(u32::MAX);
                opcode::Send::new(types::Fd(write.fd), write.frame.as_ptr(), len)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data((start + i) as u64)
            }));
        // SAFETY: every entry points at a frame and a socket that the caller keeps alive for
        // the whole of `send_all`, and this returns only once the kernel has posted a
        // completion for every entry pushed here (or aborts the process), so neither is
        // released while the kernel may still use it. The submission queue is empty before the
        // push (the previous chunk was reaped) and a chunk fits its depth.
        let pushed = unsafe { self.ring.submission().push_multiple(&self.entries) };
        if pushed.is_err() {
            // Cannot happen (see above); nothing was pushed, so nothing is in flight.
            results[start..start + chunk.len()].fill(-libc::EAGAIN);
            return;
        }
        let mut reaped = 0;
        while reaped < chunk.len() {
            match self.ring.submit_and_wait(chunk.len() - reaped) {
                Ok(_) => {}
                // Interrupted, or the kernel short of room for completions: reap and retry.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                Err(e) => {
                    // Entries may still be in flight with pointers into the callers' frames:
                    // returning would let them be freed under the kernel.
                    tracing::error!("io_uring_enter failed with writes in flight: {e}");
                    std::process::abort();
                }
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
