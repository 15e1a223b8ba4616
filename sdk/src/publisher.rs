//! `Publisher`: what application code depends on to send requests, so tests can swap in the mock.

use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::request::WebSocketRequest;

/// The future returned by [`Publisher::send`]: the delivered count, or an error.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, Error>> + Send + 'a>>;

/// Something that sends [`WebSocketRequest`]s: the real [`WebSocketClient`](crate::WebSocketClient)
/// or, in unit tests, the [`WebSocketClientMock`](crate::WebSocketClientMock).
///
/// Object-safe, so services can hold an `Arc<dyn Publisher>`.
pub trait Publisher: Send + Sync {
    /// Sends one request; resolves to the number of connections it was delivered to.
    fn send(&self, request: WebSocketRequest) -> PublishFuture<'_>;
}

impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    fn send(&self, request: WebSocketRequest) -> PublishFuture<'_> {
        (**self).send(request)
    }
}

impl<P: Publisher + ?Sized> Publisher for &P {
    fn send(&self, request: WebSocketRequest) -> PublishFuture<'_> {
        (**self).send(request)
    }
}
