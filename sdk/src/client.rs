//! `WebSocketClient`: the native client (tokio + tokio-tungstenite), in envelope mode with acks,
//! and, when asked, reconnecting and resuming where it left off (PROTOCOL.md §11).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::envelope::{RequestId, ServerFrame, SUBPROTOCOL};
use crate::error::Error;
use crate::publisher::{PublishFuture, Publisher};
use crate::request::{Metadata, WebSocketRequest};
use crate::resume::Cursor;
use crate::tags::Tags;

/// How many received messages wait for the application before the client stops reading
/// (the server then sees a slow consumer).
const INCOMING_QUEUE: usize = 1024;

/// The close code of `POST /disconnect` (PROTOCOL.md §12): the server's application wants this
/// connection gone, so a reconnecting client stops instead of coming back.
const DISCONNECTED_BY_THE_SERVER: u16 = 4001;

/// One message received from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The payload.
    pub message: Value,
    /// The tags of the request that carried it (empty in raw mode, where the server omits them).
    pub tags: Tags,
    /// The request's position in the server's history (PROTOCOL.md §11): `None` in raw mode or
    /// with history off. Opaque: store it, compare it only for equality.
    pub pos: Option<String>,
    /// The frame's text exactly as received.
    pub text: String,
}

/// What a client reports, in the order it happened: the messages, and what became of its
/// connection. [`WebSocketClient::recv_event`] returns them; [`WebSocketClient::recv`] keeps
/// only the messages.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message routed to this connection, live or replayed after a reconnect.
    Message(Received),
    /// The connection dropped; a client built with [`ClientBuilder::reconnect`] is reconnecting
    /// (sends fail with [`Error::NotConnected`] meanwhile). Without `reconnect` nothing follows.
    Disconnected {
        /// Why it dropped: `code N (reason)` for a close frame, or the I/O error.
        reason: String,
    },
    /// The client is connected again. The messages routed meanwhile that the server still had
    /// came just before this, each once and in order. When `recovered` is false some may be
    /// lost (the server restarted, or forgot them): refresh the application's state another way.
    Resumed {
        /// Whether nothing routed to this connection while it was away is missing.
        recovered: bool,
        /// How many messages the server replayed.
        missed: u64,
    },
}

/// How a client reconnects after its connection drops: exponential backoff with full jitter
/// (each wait is uniform below a bound that doubles from `min_delay` up to `max_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    min_delay: Duration,
    max_delay: Duration,
}

impl Default for Reconnect {
    /// 250 ms growing to 10 s, as in the browser SDK.
    fn default() -> Self {
        Reconnect::new(Duration::from_millis(250), Duration::from_secs(10))
    }
}

impl Reconnect {
    /// Backoff from `min_delay` up to `max_delay` (raised to `min_delay` when below it).
    pub fn new(min_delay: Duration, max_delay: Duration) -> Self {
        Reconnect {
            min_delay,
            max_delay: max_delay.max(min_delay),
        }
    }

    /// The bound of the first wait.
    pub fn min_delay(&self) -> Duration {
        self.min_delay
    }

    /// The largest wait.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The wait before reconnect attempt `attempt` (from 0), `unit` in `[0, 1)` drawn at random.
    fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let bound = self
            .min_delay
            .saturating_mul(1 << attempt.min(20))
            .min(self.max_delay);
        bound.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A number in `[0, 1)` for the jitter, from std's randomly keyed hasher (no `rand` needed).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Options for opening a [`WebSocketClient`]; made by [`WebSocketClient::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    tags: Tags,
    default_tags: Tags,
    default_metadata: Metadata,
    query: Vec<(String, String)>,
    raw: bool,
    /// Extra trusted roots for `wss://` (self-signed or private CAs), beside the web's roots.
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Whether and how to reconnect when the connection drops.
    reconnect: Option<Reconnect>,
}

impl ClientBuilder {
    /// Also trusts the PEM certificates in `pem` for `wss://` URLs (a private CA, or a
    /// self-signed server certificate). The web's usual roots stay trusted.
    pub fn trust_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        self.roots.extend(crate::tls::parse_pem(pem)?);
        Ok(self)
    }

    fn tls(&self) -> Result<tokio_tungstenite::Connector, Error> {
        Ok(tokio_tungstenite::Connector::Rustls(
            crate::tls::client_config(&self.roots)?,
        ))
    }

    /// The tags of the connection: which messages it receives.
    pub fn tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }

    /// Tags added to every request sent (a request's own tags win).
    pub fn default_tags(mut self, tags: Tags) -> Self {
        self.default_tags = tags;
        self
    }

    /// Metadata added to every request sent (a request's own entries win).
    pub fn default_metadata(mut self, metadata: Metadata) -> Self {
        self.default_metadata = metadata;
        self
    }

    /// Opens with an application's `key` and `secret` (PROTOCOL.md §5) and sends them as default
    /// metadata, so that sends are authorized too.
    pub fn credentials(mut self, key: &str, secret: &str) -> Self {
        self.query.push(("key".into(), key.into()));
        self.query.push(("secret".into(), secret.into()));
        self.default_metadata.insert("key".into(), key.into());
        self.default_metadata.insert("secret".into(), secret.into());
        self
    }

    /// Adds a query parameter to the handshake URL.
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Opens in raw mode (no `tagcast.v1`): frames arrive as the original server sent them, and
    /// [`WebSocketClient::send`] is refused because raw mode has no acknowledgements.
    pub fn raw(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }

    /// Reconnects when the connection drops (not after [`WebSocketClient::close`], nor after
    /// close code 4001, the server's `POST /disconnect`), waiting as `options` says between
    /// attempts, and resumes where it left off: the server replays what was routed to this
    /// connection meanwhile (PROTOCOL.md §11), then [`Event::Resumed`] says whether that was
    /// everything. Off by default: the client then ends when its connection does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tagcast::client::{Event, Reconnect};
    /// use tagcast::{Tags, WebSocketClient, WebSocketRequest};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let url = format!("ws://{}", listener.local_addr()?);
    /// # let server = tagcast_server::Server::builder().build()?;
    /// # tokio::spawn(server.run(listener, std::future::pending()));
    /// let room = Tags::new().with("room", "lobby");
    /// let client = WebSocketClient::builder(url)
    ///     .tags(room.clone())
    ///     .reconnect(Reconnect::new(Duration::from_millis(100), Duration::from_secs(5)))
    ///     .connect()
    ///     .await?;
    /// client.send(WebSocketRequest::new("hello").with_tags(room)).await?;
    /// while let Some(event) = client.recv_event().await {
    ///     match event {
    ///         Event::Message(received) => {
    ///             assert_eq!(received.message, "hello");
    ///             assert!(received.pos.is_some()); // its place in the server's history
    ///             break;
    ///         }
    ///         Event::Disconnected { reason } => eprintln!("connection lost ({reason}), reconnecting"),
    ///         Event::Resumed { recovered: true, missed } => eprintln!("back; {missed} replayed"),
    ///         Event::Resumed { recovered: false, .. } => { /* messages may be lost: reload */ }
    ///         _ => {}
    ///     }
    /// }
    /// client.close().await;
    /// # Ok(()) }
    /// ```
    pub fn reconnect(mut self, options: Reconnect) -> Self {
        self.reconnect = Some(options);
        self
    }

    /// The URL the handshake uses: the given URL with `tags` and the extra query parameters;
    /// [`Error::InvalidUrl`] when the URL is not a `ws://` or `wss://` one.
    pub fn handshake_url(&self) -> Result<String, Error> {
        self.url_since(None)
    }

    /// The handshake URL, resuming after `since` when given.
    fn url_since(&self, since: Option<&str>) -> Result<String, Error> {
        let tags = self.tags.to_json();
        let mut pairs = Vec::with_capacity(self.query.len() + 2);
        if !self.tags.is_empty() {
            pairs.push(("tags", tags.as_str()));
        }
        pairs.extend(self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(since) = since {
            pairs.push(("since", since));
        }
        crate::url::handshake_url(&self.url, &pairs)
    }

    /// Opens the connection.
    pub async fn connect(self) -> Result<WebSocketClient, Error> {
        let socket = self.open(None).await?;
        let (commands, commands_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let closed = Arc::new(Mutex::new(None));
        let default_tags = self.default_tags.clone();
        let default_metadata = self.default_metadata.clone();
        let raw = self.raw;
        let link = Link {
            commands: commands_rx,
            incoming: incoming_tx,
            closed: closed.clone(),
            cursor: Cursor::new(),
            builder: self,
        };
        let task = tokio::spawn(run(socket, link));
        Ok(WebSocketClient {
            commands,
            incoming: tokio::sync::Mutex::new(incoming),
            next_id: AtomicI64::new(1),
            default_tags,
            default_metadata,
            closed,
            raw,
            task: Mutex::new(Some(task)),
        })
    }

    /// Opens one WebSocket (resuming after `since` when given) and checks the subprotocol.
    async fn open(&self, since: Option<&str>) -> Result<Socket, Error> {
        let url = self.url_since(since)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidUrl {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        if !self.raw {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        let connector = if url.starts_with("wss:") {
            Some(self.tls()?)
        } else {
            None
        };
        let (socket, response) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
                .await
                .map_err(connect_error)?;
        if !self.raw {
            let accepted = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .is_some_and(|p| p.as_bytes() == SUBPROTOCOL.as_bytes());
            if !accepted {
                return Err(Error::Protocol(format!(
                    "the server did not accept the {SUBPROTOCOL} subprotocol"
                )));
            }
        }
        Ok(socket)
    }
}

fn connect_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            if body.is_empty() {
                Error::Connect(format!("HTTP {status}"))
            } else {
                Error::Connect(format!("HTTP {status}: {body}"))
            }
        }
        tungstenite::Error::Url(e) => Error::Connect(format!("bad URL: {e}")),
        other => Error::Connect(other.to_string()),
    }
}

enum Command {
    Send {
        frame: String,
        id: i64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Close,
}

/// A connection to a Tagcast server: sends requests and returns their acknowledged delivered
/// count, and receives the messages routed to its tags.
///
/// ```
/// use tagcast::{Tags, WebSocketClient, WebSocketRequest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let url = format!("ws://{}", listener.local_addr()?);
/// # let server = tagcast_server::Server::builder().build()?;
/// # tokio::spawn(server.run(listener, std::future::pending()));
/// // url is "ws://127.0.0.1:PORT" of a running `tagcast serve`
/// let client = WebSocketClient::builder(url)
///     .tags(Tags::new().with("language", "FR"))
///     .connect()
///     .await?;
/// let delivered = client
///     .send(WebSocketRequest::new("Bonjour !").with_tags(Tags::new().with("language", "FR")))
///     .await?;
/// assert_eq!(delivered, 1); // this very connection is French too
/// let received = client.recv().await.unwrap();
/// assert_eq!(received.message, "Bonjour !");
/// assert_eq!(received.tags, Tags::new().with("language", "FR"));
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WebSocketClient {
    commands: mpsc::Sender<Command>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    next_id: AtomicI64,
    default_tags: Tags,
    default_metadata: Metadata,
    /// Why the connection closed, once it has.
    closed: Arc<Mutex<Option<String>>>,
    raw: bool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Send { id, .. } => write!(f, "Send({id})"),
            Command::Close => f.write_str("Close"),
        }
    }
}

impl WebSocketClient {
    /// Starts building a client for `url` (`ws://host:port`, any path).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            tags: Tags::new(),
            default_tags: Tags::new(),
            default_metadata: Metadata::new(),
            query: Vec::new(),
            raw: false,
            roots: Vec::new(),
            reconnect: None,
        }
    }

    /// Opens a connection with `tags` and no defaults.
    pub async fn connect(url: impl Into<String>, tags: Tags) -> Result<Self, Error> {
        Self::builder(url).tags(tags).connect().await
    }

    /// Sends a request with the default tags and metadata merged under its own, and waits for its
    /// acknowledgement: the number of connections it was delivered to.
    ///
    /// While a reconnecting client is away it fails at once with [`Error::NotConnected`] (nothing
    /// is queued); a request whose connection drops before its answer fails with
    /// [`Error::Closed`] and may or may not have been delivered.
    pub async fn send(&self, request: WebSocketRequest) -> Result<u64, Error> {
        if self.raw {
            return Err(Error::Protocol(
                "this client was opened raw: sending needs envelope mode".into(),
            ));
        }
        // A refused request leaves a gap in the ids, which is harmless: they only need to differ.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = request.to_envelope_json(id, &self.default_tags, &self.default_metadata)?;
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Send { frame, id, reply })
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        answer.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// The next message routed to this connection, or `None` once the client has ended. Skips
    /// the other events: use [`recv_event`](WebSocketClient::recv_event) to see reconnects.
    pub async fn recv(&self) -> Option<Received> {
        let mut incoming = self.incoming.lock().await;
        loop {
            if let Event::Message(received) = incoming.recv().await? {
                return Some(received);
            }
        }
    }

    /// The next [`Event`] (a message, a dropped connection, a resume), or `None` once the client
    /// has ended.
    pub async fn recv_event(&self) -> Option<Event> {
        self.incoming.lock().await.recv().await
    }

    /// The events as a `Stream`; it ends when the client does.
    pub fn events(&self) -> impl Stream<Item = Event> + '_ {
        futures_util::stream::unfold(self, |client| async move {
            client.recv_event().await.map(|e| (e, client))
        })
    }

    /// The received messages as a `Stream`; it ends when the connection closes.
    pub fn messages(&self) -> impl Stream<Item = Received> + '_ {
        futures_util::stream::unfold(self, |client| async move {
            client.recv().await.map(|m| (m, client))
        })
    }

    /// Why the client ended (close code and reason), or `None` while it is open or reconnecting.
    pub fn close_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn closed_error(&self) -> Error {
        Error::Closed(
            self.close_reason()
                .unwrap_or_else(|| "the connection is closed".into()),
        )
    }

    /// Closes the connection (code 1000) and waits for the server's answer; a reconnecting
    /// client stops trying.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}

impl Publisher for WebSocketClient {
    fn send(&self, request: WebSocketRequest) -> PublishFuture<'_> {
        Box::pin(WebSocketClient::send(self, request))
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the connection task owns besides the socket.
struct Link {
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Event>,
    /// Why the client ended, once it has.
    closed: Arc<Mutex<Option<String>>>,
    /// The `since` of the next reconnect.
    cursor: Cursor,
    /// How to open the connection again.
    builder: ClientBuilder,
}

/// How one connection ended.
enum Ended {
    /// The application closed the client.
    Closed(String),
    /// The connection dropped: why, and the close code when the server sent one.
    Lost(String, Option<u16>),
}

/// The connection task: serves one connection after another until the client ends.
async fn run(mut socket: Socket, mut link: Link) {
    link.cursor.opened(false);
    let reason = loop {
        let (reason, code) = match serve(socket, &mut link).await {
            Ended::Closed(reason) => break reason,
            Ended::Lost(reason, code) => (reason, code),
        };
        let options = link.builder.reconnect;
        let _ = link
            .incoming
            .send(Event::Disconnected {
                reason: reason.clone(),
            })
            .await;
        let Some(options) = options.filter(|_| code != Some(DISCONNECTED_BY_THE_SERVER)) else {
            break reason;
        };
        match reopen(&mut link, options, &reason).await {
            Some(next) => socket = next,
            None => break "closed by the client".to_owned(),
        }
    };
    *link.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
}

/// Opens the connection again, with backoff, resuming from the cursor; answers sends with
/// [`Error::NotConnected`] meanwhile. `None` when the application closed the client.
async fn reopen(link: &mut Link, options: Reconnect, reason: &str) -> Option<Socket> {
    let mut attempt: u32 = 0;
    loop {
        let since = link.cursor.since().map(str::to_owned);
        let builder = &link.builder;
        let wait = options.delay(attempt, random_unit());
        let dial = async {
            tokio::time::sleep(wait).await;
            // Raw mode has no history: `since` would be refused.
            builder
                .open(since.as_deref().filter(|_| !builder.raw))
                .await
        };
        tokio::pin!(dial);
        let opened = loop {
            tokio::select! {
                opened = &mut dial => break opened,
                command = link.commands.recv() => match command {
                    Some(Command::Send { reply, .. }) => {
                        let _ = reply.send(Err(Error::NotConnected(reason.to_owned())));
                    }
                    Some(Command::Close) | None => return None,
                },
            }
        };
        let Ok(socket) = opened else {
            attempt = attempt.saturating_add(1);
            continue;
        };
        let resuming = since.is_some() && !link.builder.raw;
        link.cursor.opened(resuming);
        if !resuming {
            // No position to resume from (raw mode, history off, or a drop before the first
            // frame): the server cannot say what was missed, so the client says it may be.
            let resumed = Event::Resumed {
                recovered: false,
                missed: 0,
            };
            let _ = link.incoming.send(resumed).await;
        }
        return Some(socket);
    }
}

/// Serves one connection: writes commands, reads frames, resolves acks, forwards messages.
async fn serve(mut socket: Socket, link: &mut Link) -> Ended {
    let raw = link.builder.raw;
    let mut pending: HashMap<i64, oneshot::Sender<Result<u64, Error>>> = HashMap::new();
    let mut closing = false;
    let (reason, code) = loop {
        tokio::select! {
            command = link.commands.recv(), if !closing => match command {
                Some(Command::Send { frame, id, reply }) => {
                    if let Err(e) = socket.send(Message::text(frame)).await {
                        let _ = reply.send(Err(Error::Closed(e.to_string())));
                        break (e.to_string(), None);
                    }
                    pending.insert(id, reply);
                }
                Some(Command::Close) | None => {
                    closing = true;
                    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    if socket.send(Message::Close(Some(close))).await.is_err() {
                        break ("closed by the client".to_owned(), None);
                    }
                }
            },
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if raw {
                        let message = serde_json::from_str(text).unwrap_or(Value::Null);
                        let received = Received { message, tags: Tags::new(), pos: None, text: text.to_owned() };
                        let _ = link.incoming.send(Event::Message(received)).await;
                        continue;
                    }
                    let Ok(frame) = ServerFrame::parse(text) else {
                        // A frame this client cannot read cannot be matched to anything.
                        continue;
                    };
                    link.cursor.observe(&frame);
                    let event = match frame {
                        ServerFrame::Message { message, tags, pos } => {
                            Event::Message(Received { message, tags, pos, text: text.to_owned() })
                        }
                        ServerFrame::Resumed { recovered, missed } => Event::Resumed { recovered, missed },
                        ServerFrame::Tags { tags, .. } => {
                            // Retagged (PROTOCOL.md §13): a reconnect opens with the new tags.
                            link.builder.tags = tags;
                            continue;
                        }
                        ServerFrame::Ack { id: RequestId::Integer(id), delivered } => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Ok(delivered));
                            }
                            continue;
                        }
                        ServerFrame::Error { id: Some(RequestId::Integer(id)), code, error } => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Err(Error::Rejected { code, message: error }));
                            }
                            continue;
                        }
                        // Positions only move the cursor; frames for ids this client never
                        // sent cannot be matched to a request.
                        _ => continue,
                    };
                    let _ = link.incoming.send(event).await;
                }
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => {
                            let code = u16::from(f.code);
                            (format!("code {code} ({})", f.reason), Some(code))
                        }
                        None => ("closed without a code".to_owned(), None),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break (e.to_string(), None),
                None => break ("the connection ended".to_owned(), None),
            },
        }
    };
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(Error::Closed(reason.clone())));
    }
    // Answer the server's close (tungstenite queues the reply), then drop the socket before
    // anything else: the server waits for the TCP connection to end.
    let _ = socket.close(None).await;
    drop(socket);
    if closing {
        Ended::Closed(reason)
    } else {
        Ended::Lost(reason, code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let options = Reconnect::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(options.delay(0, 0.0), Duration::ZERO);
        assert_eq!(options.delay(0, 0.5), Duration::from_millis(50));
        assert_eq!(options.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(options.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(options.delay(4, 0.5), Duration::from_millis(500));
        assert_eq!(options.delay(u32::MAX, 0.5), Duration::from_millis(500));
        // A maximum below the minimum is raised to it.
        let odd = Reconnect::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(odd.max_delay(), Duration::from_secs(2));
        for _ in 0..100 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
    }

    #[test]
    fn a_resuming_handshake_adds_since_last() {
        let builder = WebSocketClient::builder("ws://host:1/?a=1")
            .tags(Tags::new().with("room", "r"))
            .query("key", "k");
        assert_eq!(
            builder.url_since(Some("e1.5")).unwrap(),
            "ws://host:1/?a=1&tags=%7B%22room%22%3A%22r%22%7D&key=k&since=e1.5"
        );
        assert_eq!(
            builder.handshake_url().unwrap(),
            builder.url_since(None).unwrap()
        );
    }
}
