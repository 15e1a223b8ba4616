//! Parts for unit tests of the routing code: a router over a fake bus, connections without a
//! network, and a socket made of channels that a test can stop reading from.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::{Sink, Stream};
use tagcast::{StringParser, Tags};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::api::Question;
use crate::auth::AuthManager;
use crate::close::Closer;
use crate::cluster::{Asked, BoxFuture, Bus, BusError, Submitted, Taken, Unavailable};
use crate::connection::Connection;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::{Registered, Registry};
use crate::router::{Fanout, Router};

/// A bus that records what is published, and can be down.
#[derive(Debug, Default)]
pub struct FakeBus {
    /// Whether publishing fails.
    pub down: std::sync::atomic::AtomicBool,
    /// What was published: (tags JSON, payload JSON).
    pub published: Mutex<Vec<(String, String)>>,
}

impl Bus for FakeBus {
    fn start(self: Arc<Self>, _: Arc<Fanout>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn submit(&self, tags_json: &str, payload_json: &str) -> Submitted {
        Submitted::Now(if self.is_up() {
            let mut published = self.published.lock().unwrap();
            published.push((tags_json.to_owned(), payload_json.to_owned()));
            Ok(Taken::Deliver)
        } else {
            Err(Unavailable("the fake bus is down".into()))
        })
    }

    fn ask<'a>(&'a self, _: &'a Question) -> BoxFuture<'a, Asked> {
        Box::pin(async { Asked::default() })
    }

    fn is_up(&self) -> bool {
        !self.down.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A router over `registry`, string messages, `auth` and `bus`.
pub fn router(registry: &Arc<Registry>, auth: Arc<dyn AuthManager>, bus: Arc<dyn Bus>) -> Router {
    let metrics = Arc::new(Metrics::new());
    Router {
        parser: Arc::new(StringParser),
        auth,
        max_tags: 64,
        metrics: metrics.clone(),
        bus,
        fanout: Arc::new(Fanout::new(registry.clone(), metrics, None)),
        tokens: None,
        refusals: Default::default(),
    }
}

/// A connection registered with `tags` and a queue of `queue` frames, with no socket.
pub fn connection(
    registry: &Arc<Registry>,
    tags: Tags,
    envelope: bool,
    queue: usize,
) -> Registered {
    let conn = Arc::new(Connection {
        id: registry.next_id(),
        envelope,
        outbox: Outbox::new(queue, None),
        closer: Closer::default(),
        peer: ([127, 0, 0, 1], 9).into(),
        handshake: None,
        granted: Default::default(),
        skip_through: Default::default(),
    });
    let slot = registry.reserve(None).expect("no limit");
    assert!(registry.register(conn.clone(), tags));
    Registered {
        conn,
        registry: registry.clone(),
        _slot: slot,
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Frames the peer sends, then `None` for the end of the stream.
    incoming: VecDeque<Option<Message>>,
    reader: Option<Waker>,
    /// Frames the server wrote.
    written: Vec<Message>,
    /// How many more frames the peer accepts before the socket blocks.
    room: usize,
    writer: Option<Waker>,
}

/// The server's end of a socket whose other end is a [`Peer`].
#[derive(Debug)]
pub struct ChannelSocket(Arc<Mutex<Shared>>);

/// The client's end of a [`ChannelSocket`].
#[derive(Debug, Clone)]
pub struct Peer(Arc<Mutex<Shared>>);

/// A socket pair whose peer accepts `room` frames before it stops reading.
pub fn socket_pair(room: usize) -> (ChannelSocket, Peer) {
    let shared = Arc::new(Mutex::new(Shared {
        room,
        ..Shared::default()
    }));
    (ChannelSocket(shared.clone()), Peer(shared))
}

impl Peer {
    /// Sends a text frame to the server.
    pub fn send_text(&self, text: &str) {
        let mut shared = self.0.lock().unwrap();
        shared.incoming.push_back(Some(Message::text(text)));
        if let Some(w) = shared.reader.take() {
            w.wake();
        }
    }

    /// Ends the stream from the peer's side (as a peer answering a close would).
    pub fn end(&self) {
        let mut shared = self.0.lock().unwrap();
        shared.incoming.push_back(None);
        if let Some(w) = shared.reader.take() {
            w.wake();
        }
    }

    /// Lets the peer accept `more` frames.
    pub fn read_more(&self, more: usize) {
        let mut shared = self.0.lock().unwrap();
        shared.room += more;
        if let Some(w) = shared.writer.take() {
            w.wake();
        }
    }

    /// Every frame the server wrote so far.
    pub fn written(&self) -> Vec<Message> {
        self.0.lock().unwrap().written.clone()
    }

    /// Waits (without a fixed sleep) until the server wrote `n` frames, and returns them.
    pub async fn wait_written(&self, n: usize) -> Vec<Message> {
        for _ in 0..10_000 {
            let written = self.written();
            if written.len() >= n {
                return written;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("the server wrote {:?}, not {n} frames", self.written());
    }
}

impl Stream for ChannelSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut shared = self.0.lock().unwrap();
        match shared.incoming.pop_front() {
            Some(Some(message)) => Poll::Ready(Some(Ok(message))),
            Some(None) => {
                // Ended for good, as a closed TCP stream.
                shared.incoming.push_front(None);
                Poll::Ready(None)
            }
            None => {
                shared.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Sink<Message> for ChannelSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut shared = self.0.lock().unwrap();
        if shared.room > 0 {
            Poll::Ready(Ok(()))
        } else {
            shared.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        let mut shared = self.0.lock().unwrap();
        shared.room -= 1;
        shared.written.push(item);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}
