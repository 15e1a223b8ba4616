//! `WebSocketClient`: the native client (tokio + tokio-tungstenite), in envelope mode with acks,
//! signed-tags tokens sent as a subprotocol (PROTOCOL.md §5.1), changing its tags in place
//! (§13), and, when asked, reconnecting and resuming where it left off (§11).

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
use crate::error::{Close, Error};
use crate::publisher::{PublishFuture, Publisher};
use crate::request::{Metadata, WebSocketRequest};
use crate::resume::Cursor;
use crate::tags::Tags;
use crate::token::TokenError;

/// How many received messages wait for the application before the client stops reading
/// (the server then sees a slow consumer).
const INCOMING_QUEUE: usize = 1024;

/// The prefix of the subprotocol that carries a signed-tags token (PROTOCOL.md §5.1).
pub const TOKEN_PROTOCOL_PREFIX: &str = "tagcast.token.";

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
    /// The connection dropped and the client is reconnecting (it was built with
    /// [`ClientBuilder::reconnect`] and the close was not final); sends fail with
    /// [`Error::NotConnected`] meanwhile. [`Event::Resumed`] follows once it is back, or
    /// [`Event::Ended`] if the server refuses it for good.
    Disconnected {
        /// The close code, when the server sent a close frame (1001 going away, 1008 slow
        /// consumer, 1012 service restart...; see [`Close`]).
        code: Option<u16>,
        /// The close frame's reason, or the I/O error.
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
    /// The connection's tags changed (PROTOCOL.md §13), by [`WebSocketClient::set_tags`] or by
    /// the server's `POST /retag`. The messages before this event were matched against the old
    /// tags, those after it against these; a reconnect opens with these.
    Retagged {
        /// The connection's tags from now on.
        tags: Tags,
    },
    /// The client has ended by itself and will not reconnect; nothing follows. The error says
    /// why: [`Error::Closed`] with the close code and reason (4001 from `POST /disconnect`,
    /// 1008 `slow consumer`, 1009 `message too big`, or any close of a client built without
    /// `reconnect`), or, while reconnecting, a handshake the server refused for good
    /// ([`Error::Refused`] with 400, 401 or 403: see [`Error::is_final`]). Sends fail with it
    /// from now on. A client closed by [`WebSocketClient::close`] does not get it.
    Ended(Error),
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

/// A signed-tags token. It grants listening to its tags until it expires, so its `Debug` never
/// shows it (a logged builder must not hand it out).
#[derive(Clone, PartialEq, Eq)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Takes a token that fits in a subprotocol: RFC 7230 token characters only (a JWT's
    /// base64url and dots always do), else [`TokenError::Malformed`] before anything is sent.
    fn new(token: String) -> Result<Token, TokenError> {
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if token.is_empty() || !token.chars().all(tchar) {
            return Err(TokenError::Malformed(
                "a token is a JWT: base64url parts joined by dots, nothing else".into(),
            ));
        }
        Ok(Token(token))
    }

    /// The subprotocol that carries it.
    fn protocol(&self) -> String {
        format!("{TOKEN_PROTOCOL_PREFIX}{}", self.0)
    }
}

/// Options for opening a [`WebSocketClient`]; made by [`WebSocketClient::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    tags: Tags,
    /// Whether the handshake names the tags even when there are none: once the server said
    /// what they are (a `tags` frame). Without a `tags` query a signed-tags connection gets all
    /// its token grants, which is not what a connection retagged to `{}` had.
    tags_always: bool,
    default_tags: Tags,
    default_metadata: Metadata,
    query: Vec<(String, String)>,
    raw: bool,
    /// Extra trusted roots for `wss://` (self-signed or private CAs), beside the web's roots.
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Whether and how to reconnect when the connection drops.
    reconnect: Option<Reconnect>,
    /// The signed-tags token, sent as a subprotocol; checked when the connection opens. A
    /// token accepted by [`WebSocketClient::set_tags_with_token`], or the one the server sends
    /// when its API retags the connection, replaces it for reconnects.
    token: Option<Result<Token, TokenError>>,
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

    /// Opens with a signed-tags token (PROTOCOL.md §5.1, a server with `--signed-tags`): the
    /// JWT an application's backend made with [`sign_tags`](crate::sign_tags) for this user.
    /// It goes in the subprotocol `tagcast.token.<token>`, offered beside `tagcast.v1`, never in
    /// the URL, so it stays out of access logs. The connection's tags are the token's; set
    /// [`tags`](ClientBuilder::tags) only to listen to a subset of them. A token the server
    /// refuses fails [`connect`](ClientBuilder::connect) with [`Error::Refused`] (status 401,
    /// the reason first: `expired`, `signature`, `subset`...); one that is not even a JWT fails
    /// with [`Error::Token`] before anything is sent. Reconnects use the same token, so a
    /// short-lived one that expires makes the reconnect fail for good ([`Event::Ended`]).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tagcast::{sign_tags, Tags, WebSocketClient};
    ///
    /// # async fn demo() -> Result<(), tagcast::Error> {
    /// // On the backend, which knows the application's secret:
    /// let user = Tags::new().with("user", 42);
    /// let token = sign_tags("application1", "B4ajW3P7jfWEYPZsQV8mnteHg97G67uW", &user, Duration::from_secs(3600));
    /// // In the client, which only gets the token:
    /// let client = WebSocketClient::builder("ws://localhost:8080")
    ///     .token(token)
    ///     .connect()
    ///     .await?; // listens as {"user": 42}, and as nothing else
    /// # Ok(()) }
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token::new(token.into()));
        self
    }

    /// Opens in raw mode (no `tagcast.v1`): frames arrive as the original server sent them, and
    /// [`WebSocketClient::send`] is refused because raw mode has no acknowledgements.
    pub fn raw(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }

    /// Reconnects when the connection drops, waiting as `options` says between attempts, and
    /// resumes where it left off: the server replays what was routed to this connection
    /// meanwhile (PROTOCOL.md §11), then [`Event::Resumed`] says whether that was everything.
    /// It reopens with the tags and token of the last [`set_tags`](WebSocketClient::set_tags),
    /// or of the server's API retag ([`Event::Retagged`]).
    ///
    /// It stops, with [`Event::Ended`] holding the error, when the server means it: close
    /// code 4001 (`POST /disconnect`), or a reopening refused with HTTP 400, 401 or 403 (an
    /// expired token, a revoked key: see [`Error::is_final`]). [`WebSocketClient::close`] stops
    /// it too. The first [`connect`](ClientBuilder::connect) is not retried: its error is
    /// returned. Off by default: the client then ends when its connection does.
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
    ///         Event::Disconnected { code, reason } => eprintln!("lost ({code:?} {reason}), reconnecting"),
    ///         Event::Resumed { recovered: true, missed } => eprintln!("back; {missed} replayed"),
    ///         Event::Resumed { recovered: false, .. } => { /* messages may be lost: reload */ }
    ///         Event::Ended(error) => {
    ///             eprintln!("gone for good: {error}"); // e.g. code 4001 (logged out)
    ///             break;
    ///         }
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
        if !self.tags.is_empty() || self.tags_always {
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
        // PROTOCOL.md §5.1: the server answers with `tagcast.v1` when it is offered, else with
        // the token's own protocol (tungstenite checks that the answer is one of the offered).
        let mut protocols = Vec::with_capacity(2);
        if !self.raw {
            protocols.push(SUBPROTOCOL.to_owned());
        }
        if let Some(token) = &self.token {
            protocols.push(token.clone()?.protocol());
        }
        if !protocols.is_empty() {
            let offer = HeaderValue::from_str(&protocols.join(", "))
                .map_err(|e| Error::Protocol(format!("cannot offer the subprotocols: {e}")))?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", offer);
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
            let reason = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            Error::Refused {
                status: response.status().as_u16(),
                reason,
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
    /// A `retag` command (PROTOCOL.md §13), answered by a `tags` or an `error` frame.
    Retag {
        frame: String,
        id: i64,
        /// The token the frame carries: once accepted, reconnects open with it.
        token: Option<Token>,
        reply: oneshot::Sender<Result<Tags, Error>>,
    },
    Close,
}

/// A command sent on the current connection, waiting for the server's answer.
enum Pending {
    /// A request, answered by an `ack`.
    Send(oneshot::Sender<Result<u64, Error>>),
    /// A retag, answered by a `tags` frame.
    Retag(oneshot::Sender<Result<Tags, Error>>, Option<Token>),
}

impl Pending {
    fn fail(self, error: Error) {
        match self {
            Pending::Send(reply) => {
                let _ = reply.send(Err(error));
            }
            Pending::Retag(reply, _) => {
                let _ = reply.send(Err(error));
            }
        }
    }
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
    /// Why the client ended, once it has.
    closed: Arc<Mutex<Option<Error>>>,
    raw: bool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Send { id, .. } => write!(f, "Send({id})"),
            Command::Retag { id, .. } => write!(f, "Retag({id})"),
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
            tags_always: false,
            default_tags: Tags::new(),
            default_metadata: Metadata::new(),
            query: Vec::new(),
            raw: false,
            roots: Vec::new(),
            reconnect: None,
            token: None,
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

    /// Why the client ended, as text (`code 1008 (slow consumer)`, `the server refused the
    /// connection: HTTP 401: expired: ...`), or `None` while it is open or reconnecting.
    pub fn close_reason(&self) -> Option<String> {
        self.ended().map(|e| match e {
            Error::Closed(close) => close.to_string(),
            other => other.to_string(),
        })
    }

    /// Why the client ended, as the error its sends now fail with ([`Error::Closed`] with the
    /// close code and reason, or [`Error::Refused`] when a reconnect was refused for good), or
    /// `None` while it is open or reconnecting. The same error as the last [`Event::Ended`].
    pub fn ended(&self) -> Option<Error> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn closed_error(&self) -> Error {
        self.ended().unwrap_or_else(|| {
            Error::Closed(Close {
                code: None,
                reason: "the connection is closed".into(),
            })
        })
    }

    /// Replaces this connection's tags without reconnecting (PROTOCOL.md §13) and returns them
    /// as the server set them once it has answered. Messages routed before the answer were
    /// matched against the old tags and those after it against the new ones, so none arrives
    /// twice and none is lost: when this returns, what [`recv`](WebSocketClient::recv) gives
    /// next is every message of the old tags first, then those of the new ones
    /// ([`recv_event`](WebSocketClient::recv_event) puts an [`Event::Retagged`] at the cut).
    /// Reconnects open with the new tags.
    ///
    /// Errors: [`Error::Rejected`] when the server refuses them, the tags staying as they were
    /// (`bad_request`, e.g. over `--max-tags`; `unauthorized` with `--signed-tags` when they are
    /// not within the connection's token, the text starting with `subset`: see
    /// [`set_tags_with_token`](WebSocketClient::set_tags_with_token));
    /// [`Error::NotConnected`] while reconnecting; [`Error::Closed`] when the connection dropped
    /// before the answer (the change may or may not have been made; reconnects use the old
    /// tags); [`Error::Protocol`] in raw mode, which has no commands.
    ///
    /// The answer comes in order after the messages routed before it, which wait in the
    /// client's queue (1024 of them): when many may arrive meanwhile, keep receiving from
    /// another task (or in a `join!`) while this waits, as for [`send`](WebSocketClient::send).
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
    /// let client = WebSocketClient::connect(url, Tags::new().with("room", 42)).await?;
    /// let tags = client.set_tags(Tags::new().with("room", 43)).await?;
    /// assert_eq!(tags, Tags::new().with("room", 43));
    /// let to_43 = WebSocketRequest::new("moved").with_tags(Tags::new().with("room", 43));
    /// assert_eq!(client.send(to_43).await?, 1);
    /// assert_eq!(client.recv().await.unwrap().message, "moved");
    /// client.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn set_tags(&self, tags: Tags) -> Result<Tags, Error> {
        self.retag(tags, None).await
    }

    /// [`set_tags`](WebSocketClient::set_tags) with a newer signed-tags token (PROTOCOL.md
    /// §13, server with `--signed-tags`): the new tags must be within this token's, which then
    /// bounds later retags and is the token reconnects open with. A token the server refuses
    /// gives [`Error::Rejected`] with code `unauthorized` and the reason first (`expired`,
    /// `signature`, `subset`...), and nothing changes.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tagcast::{sign_tags, ErrorCode, Tags, WebSocketClient};
    ///
    /// # async fn demo(client: WebSocketClient) -> Result<(), tagcast::Error> {
    /// // The backend grants room 43 to this user; the client moves there.
    /// let granted = Tags::new().with("user", 42).with("room", 43);
    /// let token = sign_tags("application1", "B4ajW3P7jfWEYPZsQV8mnteHg97G67uW", &granted, Duration::from_secs(600));
    /// client.set_tags_with_token(granted, token).await?;
    /// // Without a token that grants it, room 44 is refused and the tags stay.
    /// match client.set_tags(Tags::new().with("user", 42).with("room", 44)).await {
    ///     Err(tagcast::Error::Rejected { code: ErrorCode::Unauthorized, message }) => {
    ///         assert!(message.starts_with("subset"));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_tags_with_token(
        &self,
        tags: Tags,
        token: impl Into<String>,
    ) -> Result<Tags, Error> {
        let token = Token::new(token.into())?;
        self.retag(tags, Some(token)).await
    }

    async fn retag(&self, tags: Tags, token: Option<Token>) -> Result<Tags, Error> {
        if self.raw {
            return Err(Error::Protocol(
                "this client was opened raw: changing tags needs envelope mode".into(),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = serde_json::json!({ "type": "retag", "id": id, "tags": tags });
        if let Some(token) = &token {
            frame["token"] = Value::from(token.0.as_str());
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::Retag {
            frame: frame.to_string(),
            id,
            token,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(self.closed_error());
        }
        answer.await.unwrap_or_else(|_| Err(self.closed_error()))
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
    closed: Arc<Mutex<Option<Error>>>,
    /// The `since` of the next reconnect.
    cursor: Cursor,
    /// How to open the connection again (its tags and token follow retags).
    builder: ClientBuilder,
}

/// How one connection ended.
enum Ended {
    /// The application closed the client.
    ByClient(Close),
    /// The connection dropped or the server closed it.
    Lost(Close),
}

/// Why a reopening gave up.
enum GaveUp {
    /// The application closed the client meanwhile.
    ByClient,
    /// The server refused the handshake for good (see [`Error::is_final`]).
    Refused(Error),
}

/// The connection task: serves one connection after another until the client ends.
async fn run(mut socket: Socket, mut link: Link) {
    link.cursor.opened(false);
    let end = loop {
        let close = match serve(socket, &mut link).await {
            Ended::ByClient(close) => break Ok(Error::Closed(close)),
            Ended::Lost(close) => close,
        };
        let Some(options) = link.builder.reconnect.filter(|_| !close.is_final()) else {
            break Err(Error::Closed(close));
        };
        let dropped = Event::Disconnected {
            code: close.code,
            reason: close.reason.clone(),
        };
        let _ = link.incoming.send(dropped).await;
        match reopen(&mut link, options, &close).await {
            Ok(next) => socket = next,
            Err(GaveUp::ByClient) => {
                break Ok(Error::Closed(Close {
                    code: None,
                    reason: "closed by the client".into(),
                }))
            }
            Err(GaveUp::Refused(error)) => break Err(error),
        }
    };
    // Stored before `Ended` is sent and the channels drop, so that whoever sees the end finds
    // the reason; the application's own close gets no event.
    let (error, report) = match end {
        Ok(error) => (error, false),
        Err(error) => (error, true),
    };
    *link.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
    if report {
        let _ = link.incoming.send(Event::Ended(error)).await;
    }
}

/// Opens the connection again, with backoff, resuming from the cursor; answers commands with
/// [`Error::NotConnected`] meanwhile. Gives up when the application closes the client or the
/// server refuses the handshake for good.
async fn reopen(link: &mut Link, options: Reconnect, close: &Close) -> Result<Socket, GaveUp> {
    let reason = close.to_string();
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
                        let _ = reply.send(Err(Error::NotConnected(reason.clone())));
                    }
                    Some(Command::Retag { reply, .. }) => {
                        let _ = reply.send(Err(Error::NotConnected(reason.clone())));
                    }
                    Some(Command::Close) | None => return Err(GaveUp::ByClient),
                },
            }
        };
        let socket = match opened {
            Ok(socket) => socket,
            Err(error) if error.is_final() => return Err(GaveUp::Refused(error)),
            Err(_) => {
                attempt = attempt.saturating_add(1);
                continue;
            }
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
        return Ok(socket);
    }
}

/// The close of a connection that ended without a close frame.
fn no_frame(reason: impl Into<String>) -> Close {
    Close {
        code: None,
        reason: reason.into(),
    }
}

/// Serves one connection: writes commands, reads frames, resolves acks and retags, forwards
/// messages.
async fn serve(mut socket: Socket, link: &mut Link) -> Ended {
    let raw = link.builder.raw;
    let mut pending: HashMap<i64, Pending> = HashMap::new();
    let mut closing = false;
    let close = loop {
        tokio::select! {
            command = link.commands.recv(), if !closing => {
                let (frame, id, waiting) = match command {
                    Some(Command::Send { frame, id, reply }) => (frame, id, Pending::Send(reply)),
                    Some(Command::Retag { frame, id, token, reply }) => {
                        (frame, id, Pending::Retag(reply, token))
                    }
                    Some(Command::Close) | None => {
                        closing = true;
                        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                        if socket.send(Message::Close(Some(close))).await.is_err() {
                            break no_frame("closed by the client");
                        }
                        continue;
                    }
                };
                if let Err(e) = socket.send(Message::text(frame)).await {
                    let close = no_frame(e.to_string());
                    waiting.fail(Error::Closed(close.clone()));
                    break close;
                }
                pending.insert(id, waiting);
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
                        ServerFrame::Tags { id, tags, token, .. } => {
                            // Retagged (PROTOCOL.md §13): a reconnect opens with the new tags,
                            // and with the token that allowed them: the one of its own retag,
                            // or the one the server sent when its API retagged it.
                            link.builder.tags = tags.clone();
                            link.builder.tags_always = true;
                            if let Some(Ok(token)) = token.map(|t| Token::new(t.0)) {
                                link.builder.token = Some(Ok(token));
                            }
                            let mine = match id {
                                Some(RequestId::Integer(id)) => pending.remove(&id),
                                _ => None,
                            };
                            match mine {
                                Some(Pending::Retag(reply, token)) => {
                                    if let Some(token) = token {
                                        link.builder.token = Some(Ok(token));
                                    }
                                    // The event goes first: once `set_tags` returns, the cut
                                    // is already in the queue.
                                    let _ = link.incoming.send(Event::Retagged { tags: tags.clone() }).await;
                                    let _ = reply.send(Ok(tags));
                                    continue;
                                }
                                Some(other) => {
                                    other.fail(Error::Protocol("a tags frame answered a request".into()));
                                }
                                None => {}
                            }
                            Event::Retagged { tags }
                        }
                        ServerFrame::Ack { id: RequestId::Integer(id), delivered } => {
                            match pending.remove(&id) {
                                Some(Pending::Send(reply)) => {
                                    let _ = reply.send(Ok(delivered));
                                }
                                Some(other) => {
                                    other.fail(Error::Protocol("an ack answered a retag".into()));
                                }
                                None => {}
                            }
                            continue;
                        }
                        ServerFrame::Error { id: Some(RequestId::Integer(id)), code, error } => {
                            if let Some(waiting) = pending.remove(&id) {
                                waiting.fail(Error::Rejected { code, message: error });
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
                        Some(f) => Close { code: Some(u16::from(f.code)), reason: f.reason.to_string() },
                        None => no_frame("closed without a code"),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break no_frame(e.to_string()),
                None => break no_frame("the connection ended"),
            },
        }
    };
    for (_, waiting) in pending.drain() {
        waiting.fail(Error::Closed(close.clone()));
    }
    // Answer the server's close (tungstenite queues the reply), then drop the socket before
    // anything else: the server waits for the TCP connection to end.
    let _ = socket.close(None).await;
    drop(socket);
    if closing {
        Ended::ByClient(close)
    } else {
        Ended::Lost(close)
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
