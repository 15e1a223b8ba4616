//! The bus between the nodes of a cluster (PROTOCOL.md §10): [`Bus`] is what the router and the
//! server see of it; [`local::LocalBus`] is a lone node's (the default), [`redis::RedisBus`]
//! shares requests through Redis pub/sub (`--redis URL`).
//!
//! The router puts each accepted request on the bus before delivering it to its own node's
//! connections, so a request the cluster cannot carry is refused whole, never half delivered;
//! what other nodes put on the bus reaches this node's connections through the same
//! [`Fanout::deliver`](crate::router::Fanout::deliver).

pub mod local;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::api::Question;
use crate::registry::Delivery;
use crate::router::Fanout;

/// A boxed future, as the [`Bus`] trait object returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The bus's answer to a submitted request: at once (a lone node, a bus that is down), or later.
pub enum Submitted {
    /// Answered already.
    Now(Result<Taken, Unavailable>),
    /// Answered when this completes.
    Later(BoxFuture<'static, Result<Taken, Unavailable>>),
}

impl std::fmt::Debug for Submitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Submitted::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Submitted::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// What became of a request the bus took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The caller delivers it to this node's connections now.
    Deliver,
    /// The bus delivered it to this node's connections in the cluster's order (with history,
    /// PROTOCOL.md §10); this is that delivery.
    Delivered(Delivery),
}

/// Why a request could not be put on the bus: it is refused as `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster unavailable")]
pub struct Unavailable(pub String);

/// Why a bus cannot start: a configuration error (exit 2 from `tagcast serve`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// `--redis` is not a Redis URL (shown without its password).
    #[error("--redis {url}: not a Redis URL: {reason}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// What the Redis client said.
        reason: String,
    },
    /// `--redis-channel` is empty.
    #[error("--redis-channel must not be empty")]
    EmptyChannel,
    /// Redis did not answer at start.
    #[error("--redis {url}: cannot reach Redis: {reason}")]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// What the router and the server need of the bus between nodes.
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Connects, and from then on delivers what other nodes publish through `fanout`. When it
    /// returns `Ok`, the bus is up: the node may say `listening on`.
    fn start(self: Arc<Self>, fanout: Arc<Fanout>) -> BoxFuture<'static, Result<(), BusError>>;

    /// Puts one accepted request (its tags and payload as JSON) on the bus for the other nodes.
    /// Requests take their place in the bus's order when this returns, so a sender may submit
    /// its next request before the bus has answered the previous ones (they stay in its
    /// order). The answer says whether the caller delivers it to this node's connections now,
    /// or the bus did, in the cluster's order (a cluster with history).
    fn submit(&self, tags_json: &str, payload_json: &str) -> Submitted;

    /// Whether requests can go on the bus now (`/healthz`, `tagcast_bus_up`).
    fn is_up(&self) -> bool;

    /// Asks every other node a server API question (PROTOCOL.md §12); each answers for its
    /// own connections. Waits at most [`ASK_TIMEOUT`].
    fn ask<'a>(&'a self, question: &'a Question) -> BoxFuture<'a, Asked>;
}

/// How long the server API waits for the other nodes' answers.
pub const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The other nodes' answers to a [`Question`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Asked {
    /// Their answers, as [`answer_here`](crate::api::answer_here) gives them.
    pub answers: Vec<serde_json::Value>,
    /// Whether some node did not answer in time (or the bus is down).
    pub partial: bool,
}
