//! The floor under scenario 3 (BENCHMARKS.md): the least a server can do per delivery on this
//! machine. It takes the same load as `tagcast serve` in raw mode, but only the part the load
//! generator uses: subscribers are indexed by their `g` tag, and each request from a publisher
//! is written, as one pre-encoded frame, into each subscriber's socket with exactly one `write`
//! system call, with no queue, no task wake-up and no framework between. What Tagcast spends
//! per delivery above this is its own cost; the rest is the kernel's.
//!
//! `tagcast-floor [--host 127.0.0.1] [--port 0] [--io-uring]` prints `listening on HOST:PORT`
//! to stderr. With `--io-uring` (built with the `io-uring` feature) a delivery's writes are all
//! submitted with one `io_uring_enter` instead of one `write` each: whether batching the system
//! calls moves the floor (issue 16).

use std::collections::HashMap;
#[cfg(feature = "io-uring")]
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Subscriber = Arc<WebSocketStream<TcpStream>>;

#[derive(Default)]
struct Floor {
    /// Subscribers by the value of their `g` tag.
    groups: Mutex<HashMap<i64, Vec<Subscriber>>>,
    /// Writes that did not take the whole frame at once (a full socket): not retried.
    short_writes: AtomicU64,
    /// `--io-uring`: the ring a delivery's writes go through.
    #[cfg(feature = "io-uring")]
    ring: Option<Mutex<uring::Batch>>,
}

/// The `g` tag of a handshake's `?tags={...}`, if it has one.
fn group_of(request: &Request) -> Option<i64> {
    let query = request.uri().query()?;
    let tags = url_decode(query.split('&').find_map(|p| p.strip_prefix("tags="))?);
    let tags: serde_json::Value = serde_json::from_str(&tags).ok()?;
    tags.get("g")?.as_i64()
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An unmasked text frame (server to client) around `payload`.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65_536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

async fn connection(floor: Arc<Floor>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut group = None;
    // tungstenite's callback type returns its (large) error response by value.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        group = group_of(request);
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    if let Some(g) = group {
        // A subscriber: never read again; frames go straight into its socket.
        let mut groups = floor.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.entry(g).or_default().push(Arc::new(ws));
        return;
    }
    // A publisher: each request is written to its group, one write per subscriber.
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(request) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        let Some(g) = request["tags"]["g"].as_i64() else {
            continue;
        };
        let payload = serde_json::to_vec(&request["message"]).unwrap_or_default();
        let frame = text_frame(&payload);
        let recipients = floor
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&g)
            .cloned()
            .unwrap_or_default();
        #[cfg(feature = "io-uring")]
        if let Some(ring) = &floor.ring {
            let sockets: Vec<_> = recipients.iter().map(|s| s.get_ref().as_fd()).collect();
            let short = ring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send_all(&sockets, &frame);
            floor.short_writes.fetch_add(short, Ordering::Relaxed);
            continue;
        }
        for subscriber in recipients {
            match subscriber.get_ref().try_write(&frame) {
                Ok(n) if n == frame.len() => {}
                _ => {
                    floor.short_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut host = "127.0.0.1".to_owned();
    let mut port = 0u16;
    let mut io_uring = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next().unwrap_or_else(|| usage()),
            "--port" => port = args.next().unwrap_or_else(|| usage()).parse().unwrap_or(0),
            "--io-uring" => io_uring = true,
            _ => usage(),
        }
    }
    #[cfg(not(feature = "io-uring"))]
    if io_uring {
        eprintln!("tagcast-floor: --io-uring needs a build with `--features io-uring`");
        std::process::exit(2);
    }
    let floor = Floor {
        #[cfg(feature = "io-uring")]
        ring: if io_uring {
            Some(Mutex::new(uring::Batch::new(1024)?))
        } else {
            None
        },
        ..Floor::default()
    };
    let listener = TcpListener::bind((host.as_str(), port)).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let floor = Arc::new(floor);
    let shown = floor.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!(
            "short writes: {}",
            shown.short_writes.load(Ordering::Relaxed)
        );
        std::process::exit(0);
    });
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(connection(floor.clone(), tcp));
    }
}

fn usage() -> ! {
    eprintln!("usage: tagcast-floor [--host HOST] [--port PORT] [--io-uring]");
    std::process::exit(2);
}

/// One frame into many sockets with one `io_uring_enter`: the only unsafe code in this crate.
#[cfg(feature = "io-uring")]
#[allow(unsafe_code)]
mod uring {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use io_uring::{opcode, squeue, types, IoUring};

    /// A ring and the submission entries of the delivery being written.
    pub struct Batch {
        ring: IoUring,
        entries: Vec<squeue::Entry>,
    }

    impl Batch {
        /// A ring of `depth` submission entries: a delivery to more sockets goes in chunks.
        pub fn new(depth: u32) -> io::Result<Self> {
            // SUBMIT_ALL: one entry that fails at submission does not hold back the others.
            let ring = IoUring::builder().setup_submit_all().build(depth)?;
            let entries = Vec::with_capacity(ring.params().sq_entries() as usize);
            Ok(Self { ring, entries })
        }

        /// Sends `frame` to each socket, one `IORING_OP_SEND` each and one `io_uring_enter` per
        /// chunk of the ring's depth, and returns how many sends did not take it whole. Like the
        /// plain floor's `write`, a send never waits for room (`MSG_DONTWAIT`): a full socket
        /// completes with `EAGAIN` and counts as short.
        pub fn send_all(&mut self, sockets: &[BorrowedFd<'_>], frame: &[u8]) -> u64 {
            let len = u32::try_from(frame.len()).expect("a frame under 4 GiB");
            let depth = self.ring.params().sq_entries() as usize;
            let mut short = 0;
            for chunk in sockets.chunks(depth) {
                self.entries.clear();
                self.entries.extend(chunk.iter().map(|socket| {
                    opcode::Send::new(types::Fd(socket.as_raw_fd()), frame.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                }));
                // SAFETY: each entry points at `frame` and at a socket that `sockets` borrows,
                // both alive for this whole call, and `reap` returns only once the kernel has
                // posted a completion for every entry pushed here (or aborts the process), so
                // neither is released while the kernel may still use it. The queue is empty
                // before the push (the previous chunk was reaped) and a chunk fits its depth.
                unsafe { self.ring.submission().push_multiple(&self.entries) }
                    .expect("an empty submission queue takes a chunk of its depth");
                short += self.reap(chunk.len(), frame.len());
            }
            short
        }

        /// Submits what was pushed and waits until `pushed` completions are reaped; returns how
        /// many did not send `whole` bytes.
        fn reap(&mut self, pushed: usize, whole: usize) -> u64 {
            let (mut reaped, mut short) = (0, 0);
            while reaped < pushed {
                match self.ring.submit_and_wait(pushed - reaped) {
                    Ok(_) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                    Err(e) => {
                        // Entries may still be in flight with pointers into the caller's frame:
                        // returning would let it be freed under the kernel.
                        eprintln!("tagcast-floor: io_uring_enter failed: {e}");
                        std::process::abort();
                    }
                }
                for completion in self.ring.completion() {
                    reaped += 1;
                    if usize::try_from(completion.result()).ok() != Some(whole) {
                        short += 1;
                    }
                }
            }
            short
        }
    }
}
