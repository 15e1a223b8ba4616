//! `WebSocketClient`: the native client (tokio + tokio-tungstenite), in envelope mode with acks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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
use crate::tags::Tags;

/// How many received messages wait for the application before the client stops reading
/// (the server then sees a slow consumer).
const INCOMING_QUEUE: usize = 1024;

/// One message received from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The payload.
    pub message: Value,
    /// The tags of the request that carried it (empty in raw mode, where the server omits them).
    pub tags: Tags,
    /// The frame's text exactly as received.
    pub text: String,
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
}

impl ClientBuilder {
    /// Also trusts the PEM certificates in `pem` for `wss://` URLs (a private CA, or a
    /// self-signed server certificate). The web's usual roots stay trusted.
    pub fn trust_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        use rustls_pki_types::pem::PemObject;
        let mut found = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Connect(format!("not a PEM certificate: {e}")))?;
            self.roots.push(cert);
            found += 1;
        }
        if found == 0 {
            return Err(Error::Connect("no PEM certificate found".into()));
        }
        Ok(self)
    }

    fn tls(&self) -> Result<tokio_tungstenite::Connector, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| Error::Connect(format!("cannot trust the certificate: {e}")))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Connect(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            config,
        )))
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

    /// The URL the handshake uses: the given URL with `tags` and the extra query parameters;
    /// [`Error::InvalidUrl`] when the URL is not a `ws://` or `wss://` one.
    pub fn handshake_url(&self) -> Result<String, Error> {
        let tags = self.tags.to_json();
        let mut pairs = Vec::with_capacity(self.query.len() + 1);
        if !self.tags.is_empty() {
            pairs.push(("tags", tags.as_str()));
        }
        pairs.extend(self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        crate::url::handshake_url(&self.url, &pairs)
    }

    /// Opens the connection.
    pub async fn connect(self) -> Result<WebSocketClient, Error> {
        let url = self.handshake_url()?;
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
        let (commands, commands_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let closed = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(
            socket,
            commands_rx,
            incoming_tx,
            closed.clone(),
            self.raw,
        ));
        Ok(WebSocketClient {
            commands,
            incoming: tokio::sync::Mutex::new(incoming),
            next_id: AtomicI64::new(1),
            default_tags: self.default_tags,
            default_metadata: self.default_metadata,
            closed,
            raw: self.raw,
            task: Mutex::new(Some(task)),
        })
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
    incoming: tokio::sync::Mutex<mpsc::Receiver<Received>>,
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
        }
    }

    /// Opens a connection with `tags` and no defaults.
    pub async fn connect(url: impl Into<String>, tags: Tags) -> Result<Self, Error> {
        Self::builder(url).tags(tags).connect().await
    }

    /// Sends a request with the default tags and metadata merged under its own, and waits for its
    /// acknowledgement: the number of connections it was delivered to.
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

    /// The next message routed to this connection, or `None` once it is closed.
    pub async fn recv(&self) -> Option<Received> {
        self.incoming.lock().await.recv().await
    }

    /// The received messages as a `Stream`; it ends when the connection closes.
    pub fn messages(&self) -> impl Stream<Item = Received> + '_ {
        futures_util::stream::unfold(self, |client| async move {
            client.recv().await.map(|m| (m, client))
        })
    }

    /// Why the connection closed (close code and reason), or `None` while it is open.
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

    /// Closes the connection (code 1000) and waits for the server's answer.
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

/// The connection task: writes commands, reads frames, resolves acks, forwards messages.
async fn run(
    mut socket: Socket,
    mut commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Received>,
    closed: Arc<Mutex<Option<String>>>,
    raw: bool,
) {
    let mut pending: HashMap<i64, oneshot::Sender<Result<u64, Error>>> = HashMap::new();
    let mut closing = false;
    let reason = loop {
        tokio::select! {
            command = commands.recv(), if !closing => match command {
                Some(Command::Send { frame, id, reply }) => {
                    if let Err(e) = socket.send(Message::text(frame)).await {
                        let _ = reply.send(Err(Error::Closed(e.to_string())));
                        break e.to_string();
                    }
                    pending.insert(id, reply);
                }
                Some(Command::Close) | None => {
                    closing = true;
                    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    if socket.send(Message::Close(Some(close))).await.is_err() {
                        break "closed by the client".to_owned();
                    }
                }
            },
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if raw {
                        let message = serde_json::from_str(text).unwrap_or(Value::Null);
                        let received = Received { message, tags: Tags::new(), text: text.to_owned() };
                        let _ = incoming.send(received).await;
                        continue;
                    }
                    match ServerFrame::parse(text) {
                        Ok(ServerFrame::Message { message, tags, .. }) => {
                            let _ = incoming.send(Received { message, tags, text: text.to_owned() }).await;
                        }
                        Ok(ServerFrame::Ack { id: RequestId::Integer(id), delivered }) => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Ok(delivered));
                            }
                        }
                        Ok(ServerFrame::Error { id: Some(RequestId::Integer(id)), code, error }) => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Err(Error::Rejected { code, message: error }));
                            }
                        }
                        Ok(_) | Err(_) => {
                            // Frames for ids this client never sent, or that it cannot read, are
                            // ignored: they cannot be matched to a request.
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => format!("code {} ({})", u16::from(f.code), f.reason),
                        None => "closed without a code".to_owned(),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break e.to_string(),
                None => break "the connection ended".to_owned(),
            },
        }
    };
    *closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(Error::Closed(reason.clone())));
    }
    // Answer the server's close (tungstenite queues the reply) and let the socket end.
    let _ = socket.close(None).await;
}
