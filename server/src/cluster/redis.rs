//! Redis between the nodes of a cluster (`--redis URL`, PROTOCOL.md §10, §11).
//!
//! **Without history** (`--history 0`) a node routes each accepted request to its own
//! connections at once and publishes it once on the channel; every other node delivers what it
//! receives to its own matching connections, and a node skips its own messages when they come
//! back. A sender's requests keep their order (each publish completes before the next is routed).
//!
//! **With history** (the default) Redis orders the cluster: one Lua script ([`APPEND`]) gives a
//! request the next sequence of the cluster's history, appends it to a stream
//! (`<channel>:history`, `MAXLEN ~ --history`) and publishes it, in one atomic step, so the
//! order of the channel is the order of the positions. Every node, the sender's included,
//! delivers from the channel in that order: a connection never sees position 6 before 5. The
//! sender waits for its own request to come back and answers with this node's delivery. The
//! epoch of the positions lives in `<channel>:epoch`; a Redis that lost it (restarted without
//! its data) starts a new epoch, and resumes from before it are not recovered.
//!
//! When a node (re)connects, a second script ([`SYNC`]) reads the stream after the last
//! position the node delivered: the node catches its envelope connections up before anything
//! newer, or closes them with 1012 when the stream no longer covers the gap
//! ([`Fanout::deliver_positioned`], [`Fanout::synced`]). A node starting up fills its copy of the
//! history the same way, so a client may resume on any node.
//!
//! On the bus a message is `version (1) | node id (8, big-endian) | [request id (8), version 2]
//! | tags length (4, big-endian) | tags JSON | payload JSON`: the validated payload and tags,
//! never the metadata. With history, the channel carries `<position> <message>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tagcast::Tags;
use tokio::sync::{mpsc, oneshot};

use super::{Asked, BoxFuture, Bus, BusError, Submitted, Taken, Unavailable, ASK_TIMEOUT};
use crate::api::Question;
use crate::history::split_position;
use crate::registry::Delivery;
use crate::router::{Fanout, Positioned};

/// The encoding of a request routed without history.
const VERSION: u8 = 1;
/// The encoding of a request of a cluster with history (it carries the sender's request id).
const SEQUENCED: u8 = 2;
/// How long one Redis command or connection attempt may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a sender waits for its own request to come back from the channel before it
/// answers with no local recipients (the node caught it up, or lost the link meanwhile).
const RETURN_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff: from the first delay, doubling, up to the cap (well inside the 15 s that
/// PROTOCOL.md §10 allows for serving again).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The first lines of both scripts: the epoch of the cluster's history, or (Redis has none:
/// fresh, or restarted without its data) ARGV[1] as a new one, with the old sequence and
/// stream dropped. KEYS: epoch, sequence, stream.
macro_rules! epoch_lua {
    () => {
        "
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"
    };
}

/// Appends a request to the cluster's history and publishes it, atomically.
/// KEYS: epoch, sequence, stream. ARGV: a fresh epoch (used when Redis has none), channel,
/// most kept requests, the encoded request. Returns the request's sequence.
pub const APPEND: &str = concat!(
    epoch_lua!(),
    r#"local seq = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], string.format('%d-0', seq),
  'm', ARGV[4], 't', ms)
redis.call('PUBLISH', ARGV[2], epoch .. '.' .. string.format('%d', seq) .. ' ' .. ARGV[4])
return seq
"#
);

/// Reads where the cluster's history stands: its epoch (made from `ARGV[1]` when Redis has
/// none), its last sequence, and the kept requests after `ARGV[3]` when `ARGV[2]` is the epoch
/// (else the newest `ARGV[4]` of them, newest first). KEYS: epoch, sequence, stream.
pub const SYNC: &str = concat!(
    epoch_lua!(),
    r#"local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local entries
if epoch == ARGV[2] then
  entries = redis.call('XRANGE', KEYS[3], '(' .. ARGV[3] .. '-0', '+')
else
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[4])
end
return {epoch, seq, entries}
"#
);

/// Encodes one request routed without history.
pub fn encode(node: u64, tags_json: &str, payload_json: &str) -> Vec<u8> {
    encode_as(VERSION, node, None, tags_json, payload_json)
}

/// Encodes one request of a cluster with history; `request` is the sender's own id for it.
pub fn encode_sequenced(node: u64, request: u64, tags_json: &str, payload_json: &str) -> Vec<u8> {
    encode_as(SEQUENCED, node, Some(request), tags_json, payload_json)
}

fn encode_as(
    version: u8,
    node: u64,
    request: Option<u64>,
    tags_json: &str,
    payload_json: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + tags_json.len() + payload_json.len());
    out.push(version);
    out.extend_from_slice(&node.to_be_bytes());
    if let Some(request) = request {
        out.extend_from_slice(&request.to_be_bytes());
    }
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
    /// The sender's id for it (version 2).
    pub request: Option<u64>,
    /// The request's tags.
    pub tags: Tags,
    /// The JSON of the payload, as recipients receive it.
    pub payload: String,
}

/// Decodes one message; `None` for an unknown version or a damaged message.
pub fn decode(bytes: &[u8]) -> Option<BusMessage> {
    let (&version, mut rest) = bytes.split_first()?;
    let take8 = |rest: &mut &[u8]| -> Option<u64> {
        let (head, tail) = rest.split_first_chunk::<8>()?;
        *rest = tail;
        Some(u64::from_be_bytes(*head))
    };
    let node = take8(&mut rest)?;
    let request = match version {
        VERSION => None,
        SEQUENCED => Some(take8(&mut rest)?),
        _ => return None,
    };
    let (tags_len, rest) = rest.split_first_chunk::<4>()?;
    let tags_len = u32::from_be_bytes(*tags_len) as usize;
    if rest.len() < tags_len {
        return None;
    }
    let tags = Tags::parse(std::str::from_utf8(&rest[..tags_len]).ok()?).ok()?;
    let payload = std::str::from_utf8(&rest[tags_len..]).ok()?.to_owned();
    serde_json::from_str::<serde::de::IgnoredAny>(&payload).ok()?;
    Some(BusMessage {
        node,
        request,
        tags,
        payload,
    })
}

/// Splits what the channel carries into the position (a cluster with history) and the message.
fn split_published(bytes: &[u8]) -> (Option<(&str, u64)>, &[u8]) {
    if bytes.first() == Some(&VERSION) {
        return (None, bytes);
    }
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return (None, bytes);
    };
    let position = std::str::from_utf8(&bytes[..space])
        .ok()
        .and_then(split_position);
    (position, &bytes[space + 1..])
}

/// The Redis side of a node.
pub struct RedisBus {
    client: redis::Client,
    /// The URL without credentials, for messages.
    shown_url: String,
    channel: String,
    /// The keys of the cluster's history: epoch, last sequence, stream.
    keys: [String; 3],
    /// This node's id: its own messages coming back from Redis are known by it.
    node: u64,
    /// Whether the node can publish and is subscribed: requests are refused otherwise.
    up: AtomicBool,
    /// The connection publishes go through, with the scripts loaded on it (cloned out of the
    /// lock, never used under it).
    publisher: Mutex<Option<Publisher>>,
    /// This node's connections, once started.
    fanout: OnceLock<Arc<Fanout>>,
    /// Ids for this node's requests (a cluster with history).
    next_request: AtomicU64,
    /// Senders waiting for their request to come back from the channel, by request id.
    waiting: WaitingMap,
    /// Requests on their way to the sending task ([`RedisBus::send_loop`]), and its end of it
    /// until it starts.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    outgoing_rx: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    /// Where server API questions go (`<channel>:api`), and where this node's answers come
    /// back (`<channel>:answers:<node>`).
    questions: String,
    answers: String,
    /// Ids for this node's questions.
    next_question: AtomicU64,
    /// Questions waiting for the other nodes' answers, by question id.
    asking: Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<serde_json::Value>>>,
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

/// The publishing connection and the digests of the scripts loaded on it.
#[derive(Clone)]
struct Publisher {
    connection: MultiplexedConnection,
    append: String,
    sync: String,
}

/// A connected pair: a publishing connection and a subscription to the channel.
struct Link {
    publisher: Publisher,
    messages: redis::aio::PubSubStream,
}

/// Where the cluster's history stands, as [`SYNC`] reads it.
struct Synced {
    epoch: String,
    last: u64,
    /// The kept requests to catch up on, oldest first: sequence, routed at (Unix ms), message.
    entries: Vec<(u64, u64, Vec<u8>)>,
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
        let node = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ (u64::from(std::process::id()) << 32);
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        Ok(RedisBus {
            outgoing,
            outgoing_rx: Mutex::new(Some(outgoing_rx)),
            client,
            shown_url,
            channel: channel.to_owned(),
            keys: ["epoch", "seq", "history"].map(|k| format!("{channel}:{k}")),
            node,
            up: AtomicBool::new(false),
            publisher: Mutex::new(None),
            fanout: OnceLock::new(),
            next_request: AtomicU64::new(1),
            waiting: WaitingMap::default(),
            questions: format!("{channel}:api"),
            answers: format!("{channel}:answers:{node:x}"),
            next_question: AtomicU64::new(1),
            asking: Mutex::default(),
        })
    }

    /// Whether the cluster orders requests through the shared history (this node keeps one).
    fn sequenced(&self) -> bool {
        self.fanout.get().is_some_and(|f| f.history().is_some())
    }

    async fn link(&self) -> redis::RedisResult<Link> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        pubsub
            .subscribe(&[&self.channel, &self.questions, &self.answers])
            .await?;
        let load = |script: &'static str| {
            let mut connection = connection.clone();
            async move {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script)
                    .query_async::<String>(&mut connection)
                    .await
            }
        };
        let (append, sync) = (load(APPEND).await?, load(SYNC).await?);
        Ok(Link {
            publisher: Publisher {
                connection,
                append,
                sync,
            },
            messages: pubsub.into_on_message(),
        })
    }

    /// Reads where the cluster's history stands, and what this node missed of it.
    async fn sync(&self, publisher: &Publisher, fanout: &Fanout) -> redis::RedisResult<Synced> {
        let Some(history) = fanout.history() else {
            return Ok(Synced {
                epoch: String::new(),
                last: 0,
                entries: Vec::new(),
            });
        };
        let (epoch, last) = {
            let s = history.lock();
            (s.epoch().to_owned(), s.last())
        };
        let mut connection = publisher.connection.clone();
        let (epoch, last, mut raw): (String, u64, Vec<redis::Value>) = redis::cmd("EVALSHA")
            .arg(&publisher.sync)
            .arg(3)
            .arg(&self.keys)
            .arg(crate::history::new_epoch())
            .arg(&epoch)
            .arg(last)
            .arg(history.limits().requests)
            .query_async(&mut connection)
            .await?;
        let newest_first = raw
            .first()
            .zip(raw.last())
            .and_then(|(a, b)| Some(entry_sequence(a)? > entry_sequence(b)?))
            .unwrap_or(false);
        if newest_first {
            raw.reverse();
        }
        let entries = raw.iter().filter_map(entry).collect();
        Ok(Synced {
            epoch,
            last,
            entries,
        })
    }

    /// Delivers what this node missed of the cluster's history (or fills its copy at start),
    /// then checks that its copy ends where the cluster's does.
    fn catch_up(&self, synced: Synced, fanout: &Fanout) {
        if fanout.history().is_none() {
            return;
        }
        let now_ms = unix_ms();
        let now = Instant::now();
        for (sequence, routed_ms, bytes) in synced.entries {
            let Some(message) = decode(&bytes) else {
                continue;
            };
            let age = Duration::from_millis(now_ms.saturating_sub(routed_ms));
            let at = Positioned {
                epoch: &synced.epoch,
                sequence,
                at: now.checked_sub(age).unwrap_or(now),
                catch_up: true,
            };
            let (node, request) = (message.node, message.request);
            let delivery = fanout.deliver_positioned(
                at,
                &message.tags,
                &message.tags.to_json(),
                message.payload,
            );
            self.returned(node, request, delivery);
        }
        fanout.synced(&synced.epoch, synced.last);
    }

    /// Takes a fresh link's publishing connection: from here requests go on the bus.
    fn set_up(&self, publisher: Publisher, fanout: &Fanout) {
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

    /// Connects, subscribes and catches up with the cluster's history.
    async fn join(&self, fanout: &Fanout) -> redis::RedisResult<redis::aio::PubSubStream> {
        let link = self.link().await?;
        let synced = self.sync(&link.publisher, fanout).await?;
        self.catch_up(synced, fanout);
        self.set_up(link.publisher, fanout);
        Ok(link.messages)
    }

    /// Delivers what the channel carries, and reconnects with backoff when Redis goes away.
    async fn supervise(
        self: Arc<Self>,
        mut messages: redis::aio::PubSubStream,
        fanout: Arc<Fanout>,
    ) {
        loop {
            while let Some(message) = messages.next().await {
                let channel = message.get_channel_name();
                if channel == self.questions {
                    self.answer(message.get_payload_bytes(), &fanout);
                } else if channel == self.answers {
                    self.answered(message.get_payload_bytes());
                } else {
                    self.deliver(message.get_payload_bytes(), &fanout);
                }
            }
            self.set_down(&fanout);
            let mut delay = BACKOFF_FIRST;
            messages = loop {
                tokio::time::sleep(delay).await;
                match self.join(&fanout).await {
                    Ok(messages) => break messages,
                    Err(e) => {
                        tracing::debug!("Redis reconnect failed: {e}");
                        delay = (delay * 2).min(BACKOFF_CAP);
                    }
                }
            };
            fanout.metrics().bus_reconnects.inc();
        }
    }

    fn deliver(&self, bytes: &[u8], fanout: &Fanout) {
        let (position, bytes) = split_published(bytes);
        let Some(message) = decode(bytes) else {
            tracing::warn!("ignoring a bus message this node cannot read (another version?)");
            return;
        };
        let tags_json = message.tags.to_json();
        let (node, request) = (message.node, message.request);
        let delivery = match position {
            Some((epoch, sequence)) => {
                let at = Positioned {
                    epoch,
                    sequence,
                    at: Instant::now(),
                    catch_up: false,
                };
                fanout.deliver_positioned(at, &message.tags, &tags_json, message.payload)
            }
            // Delivered by its node when it was accepted.
            None if node == self.node => return,
            None => {
                if self.sequenced() {
                    tracing::warn!(
                        "a cluster node without history routed a request: it has no position \
                         (give every node of a cluster the same --history)"
                    );
                }
                Some(fanout.deliver_unkept(&message.tags, &tags_json, message.payload))
            }
        };
        self.returned(node, request, delivery);
    }

    /// A request of this node came back from the channel (or a catch-up): its sender learns
    /// how many of this node's connections it reached.
    fn returned(&self, node: u64, request: Option<u64>, delivery: Option<Delivery>) {
        let (Some(request), true) = (request, node == self.node) else {
            return;
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request);
        if let Some(sender) = waiting {
            let _ = sender.send(delivery.unwrap_or_default());
        }
    }

    /// Answers another node's server API question for this node's connections.
    fn answer(&self, bytes: &[u8], fanout: &Fanout) {
        #[derive(serde::Deserialize)]
        struct Asked {
            node: u64,
            id: u64,
            question: Question,
        }
        let asked: Asked = match serde_json::from_slice(bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("ignoring a server API question this node cannot read: {e}");
                return;
            }
        };
        if asked.node == self.node {
            return; // answered here by the asking endpoint
        }
        let answer = crate::api::answer_here(&asked.question, fanout);
        let reply = serde_json::json!({ "id": asked.id, "answer": answer }).to_string();
        let to = format!("{}:answers:{:x}", self.channel, asked.node);
        let Ok(mut publisher) = self.publisher() else {
            return;
        };
        tokio::spawn(async move {
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(to)
                .arg(reply)
                .query_async(&mut publisher.connection)
                .await;
            if let Err(e) = sent {
                tracing::debug!("could not answer a server API question: {e}");
            }
        });
    }

    /// Another node's answer to one of this node's questions.
    fn answered(&self, bytes: &[u8]) {
        let Ok(mut reply) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return;
        };
        let Some(id) = reply["id"].as_u64() else {
            return;
        };
        let asking = self.asking.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = asking.get(&id) {
            let _ = sender.send(reply["answer"].take());
        }
    }

    async fn ask_now(&self, question: &Question) -> Asked {
        let down = Asked {
            answers: Vec::new(),
            partial: true,
        };
        let Ok(mut publisher) = self.publisher() else {
            return down;
        };
        let id = self.next_question.fetch_add(1, Ordering::Relaxed);
        let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
        self.asking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, sender);
        let asked = serde_json::json!({ "node": self.node, "id": id, "question": question });
        let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        // PUBLISH answers how many nodes (this one included) listen for questions.
        let listening = tokio::time::timeout_at(
            deadline,
            redis::cmd("PUBLISH")
                .arg(&self.questions)
                .arg(asked.to_string())
                .query_async::<u64>(&mut publisher.connection),
        )
        .await;
        let mut result = down;
        if let Ok(Ok(listening)) = listening {
            let others = listening.saturating_sub(1) as usize;
            while result.answers.len() < others {
                match tokio::time::timeout_at(deadline, answers.recv()).await {
                    Ok(Some(answer)) => result.answers.push(answer),
                    _ => break,
                }
            }
            result.partial = result.answers.len() < others;
        }
        self.asking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result
    }

    fn publisher(&self) -> Result<Publisher, Unavailable> {
        let publisher = self
            .is_up()
            .then(|| {
                self.publisher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .flatten();
        publisher.ok_or_else(|| Unavailable("the Redis bus is down".into()))
    }

    /// Hands a request to the sending task (in the caller's order) and says how it will be
    /// answered: once Redis took it (without history), or once it came back from the channel
    /// and was delivered here (with history).
    fn submit_now(&self, tags_json: &str, payload_json: &str) -> Submitted {
        if !self.is_up() {
            return Submitted::Now(Err(Unavailable("the Redis bus is down".into())));
        }
        let sequenced = self.sequenced();
        let (sent, taken) = oneshot::channel();
        let (bytes, waiting) = if sequenced {
            let request = self.next_request.fetch_add(1, Ordering::Relaxed);
            let (sender, returned) = oneshot::channel();
            let waiting = Waiting::new(self.waiting.clone(), request, sender);
            let bytes = encode_sequenced(self.node, request, tags_json, payload_json);
            (bytes, Some((waiting, returned)))
        } else {
            (encode(self.node, tags_json, payload_json), None)
        };
        let outgoing = Outgoing {
            bytes,
            sequenced,
            sent,
        };
        if self.outgoing.send(outgoing).is_err() {
            return Submitted::Now(Err(Unavailable("the Redis bus is down".into())));
        }
        Submitted::Later(Box::pin(async move {
            match taken.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Unavailable("the Redis bus is down".into())),
            }
            let Some((waiting, returned)) = waiting else {
                return Ok(Taken::Deliver);
            };
            // Delivered here when it comes back from the channel, in the cluster's order.
            let delivery = tokio::time::timeout(RETURN_TIMEOUT, returned).await;
            drop(waiting);
            Ok(Taken::Delivered(
                delivery.ok().and_then(Result::ok).unwrap_or_default(),
            ))
        }))
    }

    /// Sends what connections submit, in their order: everything waiting goes to Redis as one
    /// pipeline on the publishing connection (so a sender with many requests in flight pays
    /// one round trip per batch, not per request), and each submitter hears whether Redis
    /// took it.
    async fn send_loop(self: Arc<Self>, mut outgoing: mpsc::UnboundedReceiver<Outgoing>) {
        let mut batch = Vec::new();
        while let Some(first) = outgoing.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match outgoing.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let result = match self.publisher() {
                Err(e) => Err(e),
                Ok(mut publisher) => {
                    let kept = self
                        .fanout
                        .get()
                        .and_then(|f| f.history())
                        .map_or(0, |h| h.limits().requests);
                    let epoch = crate::history::new_epoch();
                    let mut pipe = redis::pipe();
                    for request in &batch {
                        if request.sequenced {
                            pipe.cmd("EVALSHA")
                                .arg(&publisher.append)
                                .arg(3)
                                .arg(&self.keys)
                                .arg(&epoch)
                                .arg(&self.channel)
                                .arg(kept)
                                .arg(&request.bytes)
                                .ignore();
                        } else {
                            pipe.cmd("PUBLISH")
                                .arg(&self.channel)
                                .arg(&request.bytes)
                                .ignore();
                        }
                    }
                    pipe.query_async::<()>(&mut publisher.connection)
                        .await
                        .map_err(|e| {
                            tracing::debug!("publishing to Redis failed: {e}");
                            Unavailable("publishing to Redis failed".into())
                        })
                }
            };
            for request in batch.drain(..) {
                let _ = request.sent.send(result.clone());
            }
        }
    }
}

/// Most requests in one pipeline to Redis.
const MAX_BATCH: usize = 256;

/// A request on its way to the sending task.
struct Outgoing {
    bytes: Vec<u8>,
    /// Appended to the cluster's history (with history), or only published.
    sequenced: bool,
    /// Whether Redis took it.
    sent: oneshot::Sender<Result<(), Unavailable>>,
}

/// The senders waiting for their requests to come back, by request id.
type WaitingMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Delivery>>>>;

/// A sender waiting for its request to come back; it stops waiting when dropped.
struct Waiting {
    map: WaitingMap,
    request: u64,
}

impl Waiting {
    fn new(map: WaitingMap, request: u64, sender: oneshot::Sender<Delivery>) -> Self {
        map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, sender);
        Waiting { map, request }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.request);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The sequence of a stream entry (`[id, [field, value, ...]]`, id `<sequence>-0`).
fn entry_sequence(entry: &redis::Value) -> Option<u64> {
    let redis::Value::Array(parts) = entry else {
        return None;
    };
    let id: String = redis::from_redis_value_ref(parts.first()?).ok()?;
    id.split_once('-')?.0.parse().ok()
}

/// A stream entry as (sequence, routed at in Unix ms, message).
fn entry(entry: &redis::Value) -> Option<(u64, u64, Vec<u8>)> {
    let sequence = entry_sequence(entry)?;
    let redis::Value::Array(parts) = entry else {
        return None;
    };
    let fields: Vec<Vec<u8>> = redis::from_redis_value_ref(parts.get(1)?).ok()?;
    let mut message = None;
    let mut routed = 0;
    for pair in fields.chunks(2) {
        match pair {
            [name, value] if name.as_slice() == b"m" => message = Some(value.clone()),
            [name, value] if name.as_slice() == b"t" => {
                routed = std::str::from_utf8(value).ok()?.parse().ok()?;
            }
            _ => {}
        }
    }
    Some((sequence, routed, message?))
}

impl Bus for RedisBus {
    /// Connects for the first time (an unreachable Redis is a configuration error at start),
    /// fills this node's copy of the cluster's history, and is up when it returns; then keeps
    /// the link up in the background.
    fn start(self: Arc<Self>, fanout: Arc<Fanout>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move {
            let _ = self.fanout.set(fanout.clone());
            let outgoing = self
                .outgoing_rx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(outgoing) = outgoing {
                tokio::spawn(self.clone().send_loop(outgoing));
            }
            // Up before this returns, so before the node says `listening on`: a request in
            // the first moments is never refused as `cluster unavailable`.
            let messages = self
                .join(&fanout)
                .await
                .map_err(|e| BusError::Unreachable {
                    url: self.shown_url.clone(),
                    reason: e.to_string(),
                })?;
            tokio::spawn(self.supervise(messages, fanout));
            Ok(())
        })
    }

    fn submit(&self, tags_json: &str, payload_json: &str) -> Submitted {
        self.submit_now(tags_json, payload_json)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn ask<'a>(&'a self, question: &'a Question) -> BoxFuture<'a, Asked> {
        Box::pin(self.ask_now(question))
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
        assert_eq!((back.node, back.request), (7, None));
        assert_eq!(back.tags, tags);
        assert_eq!(back.payload, r#"{"a":[1,2]}"#);
        let mut other = bytes.clone();
        other[0] = 3;
        assert!(decode(&other).is_none());
        assert!(decode(&bytes[..10]).is_none());
        let sequenced = encode_sequenced(7, 99, &tags.to_json(), "1");
        let back = decode(&sequenced).unwrap();
        assert_eq!(
            (back.node, back.request, back.payload.as_str()),
            (7, Some(99), "1")
        );
        let mut published = b"k3x.12 ".to_vec();
        published.extend_from_slice(&sequenced);
        let (position, message) = split_published(&published);
        assert_eq!(position, Some(("k3x", 12)));
        assert_eq!(decode(message), Some(back));
        assert_eq!(split_published(&bytes), (None, &bytes[..]));
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
