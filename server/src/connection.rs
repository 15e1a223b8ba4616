//! One connection: reader loop, writer loop, bounded queue, close codes.
//!
//! The reader routes each request completely before reading the next frame (per-sender order).
//! The writer drains what is queued, writes it as one batch and flushes once. Either side can
//! decide a close through the connection's [`Closer`](crate::close::Closer); the writer then sends
//! the close frame, the reader reads until the peer answers, and the TCP connection is dropped
//! by the deadline whatever happens.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::collections::VecDeque;
use tagcast::ServerFrame;
use tokio::time::timeout_at;

use crate::close::{self, Closer};
use crate::metrics::{Metrics, Rejection, Transport};
use crate::registry::{Connection, Offered};
use crate::router::{Refusal, Router};

/// Runs a registered connection until it ends. Generic over the socket halves so the rules can
/// be driven without a network.
pub async fn run<W, R, E>(sink: W, stream: R, conn: Arc<Connection>, router: Arc<Router>)
where
    W: Sink<Message, Error = E> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let writer = tokio::spawn(write_loop(sink, conn.clone(), router.metrics.clone()));
    read_loop(stream, &conn, &router).await;
    // The reader is done: make sure the writer ends too (no frame if nobody decided one).
    conn.closer.close_silently();
    let _ = writer.await;
}

async fn read_loop<R, E>(mut stream: R, conn: &Connection, router: &Router)
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let closed = conn.closer.wait();
    tokio::pin!(closed);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut closed => break,
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Err(e)) => {
                let (code, reason) = classify(&e);
                tracing::debug!(connection = conn.id, code, reason, "read error");
                if code == close::MESSAGE_TOO_BIG {
                    router.metrics.rejected(Rejection::TooBig);
                }
                if code == 0 {
                    conn.closer.close_silently();
                } else {
                    conn.closer.close(code, reason);
                }
            }
            Some(Ok(Message::Text(text))) => {
                router.metrics.bytes_in.inc_by(text.len() as u64);
                handle_text(&text, conn, router).await;
            }
            Some(Ok(Message::Binary(data))) => {
                router.metrics.bytes_in.inc_by(data.len() as u64);
                router.metrics.received(Transport::WebSocket);
                router.metrics.rejected(Rejection::BadRequest);
                refuse(
                    conn,
                    router,
                    None,
                    Refusal {
                        code: tagcast::ErrorCode::BadRequest,
                        text: "binary frames are not accepted: send a JSON text frame".into(),
                    },
                );
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) => {
                // The peer closes: tungstenite answers it as we keep reading to the end.
                conn.closer.close_silently();
            }
        }
    }
    // Closing: keep reading (and dropping) until the peer answers the close or the deadline.
    let deadline = conn
        .closer
        .closing()
        .map(|c| c.deadline)
        .unwrap_or_else(std::time::Instant::now);
    let deadline = tokio::time::Instant::from_std(deadline);
    while let Ok(Some(Ok(_))) = timeout_at(deadline, stream.next()).await {}
}

async fn handle_text(text: &str, conn: &Connection, router: &Router) {
    let (id, result) = router
        .route_text(text, conn.envelope, &conn.handshake)
        .await;
    match result {
        Ok(delivered) => {
            if let (true, Some(id)) = (conn.envelope, id) {
                let ack = ServerFrame::Ack { id, delivered };
                reply(conn, router, ack);
            }
        }
        Err(refusal) => refuse(conn, router, id, refusal),
    }
}

/// Queues a frame for the sender itself (ack or error), counting a slow consumer it causes.
fn reply(conn: &Connection, router: &Router, frame: ServerFrame) {
    let offered = conn.offer(Utf8Bytes::from(frame.to_json()));
    if offered == Offered::SlowConsumer {
        router.metrics.slow_consumers.inc();
    }
}

/// Answers a refused request: an error frame in envelope mode, a close in raw mode.
fn refuse(conn: &Connection, router: &Router, id: Option<tagcast::RequestId>, refusal: Refusal) {
    tracing::debug!(connection = conn.id, code = %refusal.code, error = %refusal.text, "request refused");
    if conn.envelope {
        let frame = ServerFrame::Error {
            id,
            code: refusal.code,
            error: refusal.text,
        };
        reply(conn, router, frame);
    } else {
        let code = match refusal.code {
            tagcast::ErrorCode::Unauthorized | tagcast::ErrorCode::RateLimited => {
                close::POLICY_VIOLATION
            }
            tagcast::ErrorCode::Unavailable => close::TRY_AGAIN_LATER,
            _ => close::INVALID_PAYLOAD,
        };
        conn.closer.close(code, &refusal.text);
    }
}

/// The close code and reason for a read error; code 0 means the socket is gone (no frame).
fn classify<E: std::error::Error + Send + Sync + 'static>(e: &E) -> (u16, &'static str) {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    // axum wraps tungstenite's error; look through the chain for it.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<WsError>() {
            return match ws {
                WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                    (close::MESSAGE_TOO_BIG, "message too big")
                }
                WsError::Capacity(_) => (close::MESSAGE_TOO_BIG, "frame too big"),
                WsError::Utf8(_) => (close::INVALID_PAYLOAD, "invalid UTF-8 in a text frame"),
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Io(_) => (0, "connection lost"),
                WsError::Protocol(_) => (close::PROTOCOL_ERROR, "protocol error"),
                _ => (0, "connection lost"),
            };
        }
        source = err.source();
    }
    (0, "connection lost")
}

async fn write_loop<W, E>(mut sink: W, conn: Arc<Connection>, metrics: Arc<Metrics>)
where
    W: Sink<Message, Error = E> + Unpin,
{
    let closer: &Closer = &conn.closer;
    // One waiter for the whole loop: registering a new one per frame would cost more than
    // the frame itself.
    let closed = closer.wait();
    tokio::pin!(closed);
    // Frames taken from the outbox; swapped with it, so neither reallocates in steady state.
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            () = std::future::poll_fn(|cx| conn.outbox.poll_take(cx, &mut batch)) => {}
        }
        let write = async {
            let mut bytes = 0;
            while let Some(frame) = batch.pop_front() {
                bytes += frame.len() as u64;
                sink.feed(Message::Text(frame)).await?;
            }
            metrics.bytes_out.inc_by(bytes);
            sink.flush().await
        };
        // A peer that stops reading blocks the write: a close decided meanwhile (slow consumer,
        // shutdown) must still end the connection by its deadline.
        let written = tokio::select! {
            biased;
            _ = &mut closed => break,
            written = write => written,
        };
        if written.is_err() {
            closer.close_silently();
            conn.outbox.close();
            return;
        }
    }
    let Some(closing) = closer.closing() else {
        conn.outbox.close();
        return;
    };
    if let Some((code, reason)) = &closing.frame {
        let frame = Message::Close(Some(CloseFrame {
            code: *code,
            reason: Utf8Bytes::from(reason.as_str()),
        }));
        let deadline = tokio::time::Instant::from_std(closing.deadline);
        let _ = timeout_at(deadline, async {
            // What was queued before the close still goes out (nothing lost at shutdown), except
            // for a slow consumer, whose full queue is the problem.
            if reason != close::SLOW_CONSUMER {
                conn.outbox.take(&mut batch);
                while let Some(frame) = batch.pop_front() {
                    sink.feed(Message::Text(frame)).await?;
                }
            }
            sink.send(frame).await
        })
        .await;
    }
    conn.outbox.close();
}
