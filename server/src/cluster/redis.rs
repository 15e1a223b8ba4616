//! Redis pub/sub between the nodes of a cluster (`--redis URL`, PROTOCOL.md §10).
//!
//! A node routes each accepted request to its own connections at once and publishes it once on
//! the channel; every other node delivers what it receives to its own matching connections. A
//! node skips its own messages when they come back from Redis, so every recipient gets a
//! message exactly once, `delivered` counts this node's recipients as soon as they are queued,
//! and a sender's requests keep their order (each publish completes before the next is routed).
//!
//! On the bus a message is `version (1) | node id (8, big-endian) | tags length (4, big-endian)
//! | tags JSON | payload JSON`: the validated payload and tags, never the metadata.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tagcast::Tags;

use super::{BoxFuture, Bus, BusError, Unavailable};
use crate::router::Fanout;

/// The encoding version written by this node.
const VERSION: u8 = 1;
/// How long one Redis command or connection attempt may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: from the first delay, doubling, up to the cap (well inside the 15 s that
/// PROTOCOL.md §10 allows for serving again).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Encodes one message for the bus.
pub fn encode(node: u64, tags_json: &str, payload_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + tags_json.len() + payload_json.len());
    out.push(VERSION);
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&(tags_json.len() as u32).to_be_bytes());
    out.extend_from_slice(tags_json.as_bytes());
    out.extend_from_slice(payload_json.as_bytes());
    out
}

/// A message read from the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// The node that accepted the request.
    pub node: u64,
    /// The request's tags.
    pub tags: Tags,
    /// The JSON of the payload, as recipients receive it.
    pub payload: String,
}

/// Decodes one message; `None` for another version or a damaged message.
pub fn decode(bytes: &[u8]) -> Option<BusMessage> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION || rest.len() < 12 {
        return None;
    }
    let node = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let tags_len = u32::from_be_bytes(rest[8..12].try_into().ok()?) as usize;
    let rest = &rest[12..];
    if rest.len() < tags_len {
        return None;
    }
    let tags = Tags::parse(std::str::from_utf8(&rest[..tags_len]).ok()?).ok()?;
    let payload = std::str::from_utf8(&rest[tags_len..]).ok()?.to_owned();
    serde_json::from_str::<serde::de::IgnoredAny>(&payload).ok()?;
    Some(BusMessage {
        node,
        tags,
        payload,
    })
}

/// The Redis side of a node.
pub struct RedisBus {
    client: redis::Client,
    /// The URL without credentials, for messages.
    shown_url: String,
    channel: String,
    /// This node's id: its own messages coming back from Redis are skipped.
    node: u64,
    /// Whether the node can publish and is subscribed: requests are refused otherwise.
    up: AtomicBool,
    /// The connection publishes go through (cloned out of the lock, never used under it).
    publisher: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("url", &self.shown_url)
            .field("channel", &self.channel)
            .field("up", &self.is_up())
            .finish()
    }
}

/// A connected pair: a publishing connection and a subscription to the channel.
struct Link {
    publisher: MultiplexedConnection,
    messages: redis::aio::PubSubStream,
}

impl RedisBus {
    /// Checks the URL (no connection yet).
    pub fn new(url: &str, channel: &str) -> Result<Self, BusError> {
        let shown_url = hide_password(url);
        let client = redis::Client::open(url).map_err(|e| BusError::BadUrl {
            url: shown_url.clone(),
            reason: e.to_string(),
        })?;
        if channel.is_empty() {
            return Err(BusError::EmptyChannel);
        }
        let node = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ (u64::from(std::process::id()) << 32);
        Ok(RedisBus {
            client,
            shown_url,
            channel: channel.to_owned(),
            node,
            up: AtomicBool::new(false),
            publisher: Mutex::new(None),
        })
    }

    async fn link(&self) -> redis::RedisResult<Link> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let publisher = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        pubsub.subscribe(&self.channel).await?;
        Ok(Link {
            publisher,
            messages: pubsub.into_on_message(),
        })
    }

    /// Takes a fresh link's publishing connection: from here requests go on the bus.
    fn set_up(&self, publisher: MultiplexedConnection, fanout: &Fanout) {
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(publisher);
        self.up.store(true, Ordering::Release);
        fanout.metrics().bus_up.set(1);
        tracing::info!(url = %self.shown_url, channel = %self.channel, "cluster bus up");
    }

    fn set_down(&self, fanout: &Fanout) {
        self.up.store(false, Ordering::Release);
        fanout.metrics().bus_up.set(0);
        self.publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tracing::warn!(url = %self.shown_url, "cluster bus down: refusing requests until Redis is back");
    }

    /// Delivers what other nodes publish, and reconnects with backoff when Redis goes away.
    async fn supervise(
        self: Arc<Self>,
        mut messages: redis::aio::PubSubStream,
        fanout: Arc<Fanout>,
    ) {
        loop {
            while let Some(message) = messages.next().await {
                self.deliver(message.get_payload_bytes(), &fanout);
            }
            self.set_down(&fanout);
            let mut delay = BACKOFF_FIRST;
            let link = loop {
                tokio::time::sleep(delay).await;
                match self.link().await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::debug!("Redis reconnect failed: {e}");
                        delay = (delay * 2).min(BACKOFF_CAP);
                    }
                }
            };
            fanout.metrics().bus_reconnects.inc();
            self.set_up(link.publisher, &fanout);
            messages = link.messages;
        }
    }

    fn deliver(&self, bytes: &[u8], fanout: &Fanout) {
        let Some(message) = decode(bytes) else {
            tracing::warn!("ignoring a bus message this node cannot read (another version?)");
            return;
        };
        if message.node == self.node {
            return; // delivered locally when it was accepted
        }
        fanout.deliver(&message.tags, &message.tags.to_json(), message.payload);
    }

    async fn publish_now(&self, tags_json: &str, payload_json: &str) -> Result<(), Unavailable> {
        if !self.is_up() {
            return Err(Unavailable("the Redis bus is down".into()));
        }
        let connection = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(mut connection) = connection else {
            return Err(Unavailable("the Redis bus is down".into()));
        };
        let bytes = encode(self.node, tags_json, payload_json);
        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(bytes)
            .query_async(&mut connection)
            .await;
        published.map(|_| ()).map_err(|e| {
            tracing::debug!("PUBLISH failed: {e}");
            Unavailable("publishing to Redis failed".into())
        })
    }
}

impl Bus for RedisBus {
    /// Connects for the first time (an unreachable Redis is a configuration error at start) and
    /// is up when it returns; then keeps the link up in the background.
    fn start(self: Arc<Self>, fanout: Arc<Fanout>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move {
            let link = self.link().await.map_err(|e| BusError::Unreachable {
                url: self.shown_url.clone(),
                reason: e.to_string(),
            })?;
            // Up before this returns, so before the node says `listening on`: a request in
            // the first moments is never refused as `cluster unavailable`.
            self.set_up(link.publisher, &fanout);
            tokio::spawn(self.supervise(link.messages, fanout));
            Ok(())
        })
    }

    fn publish<'a>(
        &'a self,
        tags_json: &'a str,
        payload_json: &'a str,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(self.publish_now(tags_json, payload_json))
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// `redis://user:secret@host` shown as `redis://user:***@host`.
fn hide_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_other_versions_are_ignored() {
        let tags = Tags::new().with("language", "FR").with("user", 42);
        let bytes = encode(7, &tags.to_json(), r#"{"a":[1,2]}"#);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.node, 7);
        assert_eq!(back.tags, tags);
        assert_eq!(back.payload, r#"{"a":[1,2]}"#);
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(decode(&other).is_none());
        assert!(decode(&bytes[..10]).is_none());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            hide_password("redis://u:pw@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(hide_password("redis://h:6379"), "redis://h:6379");
    }
}
