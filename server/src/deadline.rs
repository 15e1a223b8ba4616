//! A bound on how long a client may take to send its request head: a slowloris client that
//! sends half a request is dropped instead of holding a connection forever (hyper applies no
//! header timeout when, as under axum, no timer is configured).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps an accepted stream: reads fail with `TimedOut` if the first request head (up to its
/// blank line) has not fully arrived within the limit. After that it is a plain pass-through.
#[derive(Debug)]
pub struct HeadDeadline<S> {
    inner: S,
    /// Running until the head is complete; `None` afterwards.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes of `\r\n\r\n` the stream has ended with so far.
    matched: u8,
}

impl<S> HeadDeadline<S> {
    /// Starts the clock now.
    pub fn new(inner: S, limit: Duration) -> Self {
        HeadDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            matched: 0,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Scans bytes for the end of the head.
    fn saw(&mut self, bytes: &[u8]) {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched as usize] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                self.deadline = None;
                return;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_none() {
            return result;
        }
        if let Poll::Ready(Ok(())) = &result {
            let new = &buf.filled()[before..];
            let ended = new.is_empty();
            this.saw(new);
            if this.deadline.is_none() || ended {
                return result;
            }
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head took too long",
                )));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_end_of_the_head_across_reads() {
        let mut d = HeadDeadline::new((), Duration::from_secs(1));
        d.saw(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(d.deadline.is_some());
        d.saw(b"\r");
        d.saw(b"\n");
        assert!(d.deadline.is_none());
    }
}
