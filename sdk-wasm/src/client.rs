//! The connection: `connect`, the `TagcastClient` it resolves to (send, setTags, handlers,
//! close), and the background task that reads frames and, when the connection drops,
//! reconnects with backoff and resumes where it left off (`since`, PROTOCOL.md §11).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::oneshot;
use futures_util::future::{select, Either};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, State as WsState, WebSocketError};
use gloo_timers::future::TimeoutFuture;
use tagcast::envelope::{RequestId, ServerFrame, SUBPROTOCOL};
use tagcast::request::MESSAGE_MANDATORY;
use tagcast::resume::Cursor;
use tagcast::{Metadata, Tags, WebSocketRequest};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::errors::{bad_request, closed, describe, from_sdk, tagcast_error, Close, TIMEOUT};
use crate::events::{emit, object, Handlers, Kind};
use crate::options::ConnectOptions;
use crate::options::{metadata_from_js, number, string, tags_from_js, to_json, token_tags};

/// The close code of `POST /disconnect` (PROTOCOL.md §12): the server's application wants this
/// connection gone, so the client does not come back.
const DISCONNECTED_BY_THE_SERVER: u16 = 4001;

/// The close code browsers report for a connection that ended (or never opened) without a
/// close frame.
const ABNORMAL: u16 = 1006;

/// The longest delay `setTimeout` takes; longer ones would fire at once.
const MAX_TIMEOUT_MS: f64 = 2_147_483_647.0;

/// The connection states, as JavaScript sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Reconnecting,
    Closed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Open => "open",
            State::Reconnecting => "reconnecting",
            State::Closed => "closed",
        }
    }
}

/// Where the answer of a `send` (`{delivered}`) or a `setTags` (the new tags) goes.
type Reply = oneshot::Sender<Result<JsValue, JsValue>>;
type Sink = SplitSink<WebSocket, Message>;
type Stop = oneshot::Receiver<Sink>;

/// Splits an open socket: the sink goes to the client, the stream and the stop signal to the
/// reading task.
fn install(inner: &Rc<RefCell<Inner>>, socket: WebSocket) -> (SplitStream<WebSocket>, Stop) {
    let (sink, stream) = socket.split();
    let (stop, stopped) = oneshot::channel();
    let mut i = inner.borrow_mut();
    i.sink = Some(sink);
    i.stop = Some(stop);
    (stream, stopped)
}

/// Everything the client and its background task share (the browser is single-threaded).
struct Inner {
    /// The URL the application gave.
    base: String,
    /// `key` and `secret`, for the handshake query.
    credentials: Vec<(String, String)>,
    /// The handshake URL, without `since`: `base` with the tags and credentials.
    url: String,
    /// The connection's tags (the server's word after a retag).
    tags: Tags,
    /// Whether `url` carries the tags: without them, a signed-tags connection has its token's.
    tags_in_url: bool,
    /// The most tags of a connection or a send.
    max_tags: usize,
    /// The signed-tags token of the `token` option, or the latest a retag was accepted with,
    /// or the one the server sent when its API retagged the connection.
    token: Option<String>,
    /// A `setTags` sent with a token: its id and the token, which becomes the connection's
    /// once the server accepts the new tags (PROTOCOL.md §13).
    retag_token: Option<(i64, String)>,
    /// The `getToken` option, called before every attempt to open.
    get_token: Option<js_sys::Function>,
    state: State,
    sink: Option<Sink>,
    /// Hands the sink back to the reading task, which closes the socket with 1000.
    stop: Option<oneshot::Sender<Sink>>,
    pending: HashMap<i64, Reply>,
    next_id: i64,
    /// The application's handlers, in a cell of their own (see `Handlers`).
    handlers: Rc<RefCell<Handlers>>,
    /// The `since` of the next reconnect.
    cursor: Cursor,
    reconnect: bool,
    max_retries: f64,
    min_delay_ms: f64,
    max_delay_ms: f64,
    default_tags: Tags,
    default_metadata: Metadata,
}

impl Inner {
    fn fail_pending(&mut self, reason: &str, close: Option<&Close>) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(closed(reason, close)));
        }
    }
}

/// The application's handlers, to emit to without holding a borrow of `inner`: handlers may call
/// back into the client.
fn handlers(inner: &Rc<RefCell<Inner>>) -> Rc<RefCell<Handlers>> {
    inner.borrow().handlers.clone()
}

/// Changes the state and tells the handlers; `close` is the close that caused it, when known.
fn set_state(inner: &Rc<RefCell<Inner>>, state: State, close: Option<&Close>) {
    {
        let mut i = inner.borrow_mut();
        if i.state == state {
            return;
        }
        i.state = state;
    }
    let name = JsValue::from_str(state.as_str());
    let event = match close {
        Some((code, reason)) => object(&[
            ("state", &name),
            ("code", &JsValue::from(*code)),
            ("reason", &JsValue::from_str(reason)),
        ]),
        None => object(&[("state", &name)]),
    };
    emit(&handlers(inner), Kind::State, &event, &[name]);
}

/// The handshake URL: `base` with `tags` (when there are some, or `always`: once the server
/// said what they are) and the credentials.
fn handshake_url(
    base: &str,
    tags: &Tags,
    always: bool,
    credentials: &[(String, String)],
) -> Result<String, tagcast::Error> {
    let tags_json = tags.to_json();
    let mut pairs = Vec::with_capacity(3);
    if always || !tags.is_empty() {
        pairs.push(("tags", tags_json.as_str()));
    }
    pairs.extend(credentials.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    tagcast::url::handshake_url(base, &pairs)
}

/// Opens one WebSocket and waits until it is open; the error says why it could not open.
async fn open_socket(url: &str, protocols: &[String]) -> Result<WebSocket, String> {
    let mut socket = WebSocket::open_with_protocols(url, protocols).map_err(|e| e.to_string())?;
    // gloo-net's sink is ready once the socket left CONNECTING (opened or failed).
    futures_util::future::poll_fn(|cx| {
        futures_util::Sink::<Message>::poll_ready(std::pin::Pin::new(&mut socket), cx)
    })
    .await
    .map_err(|e| e.to_string())?;
    match socket.state() {
        WsState::Open => {
            if socket.protocol() != SUBPROTOCOL {
                return Err(format!("the server at {url} did not accept {SUBPROTOCOL}"));
            }
            Ok(socket)
        }
        _ => Err(format!(
            "could not open {url}: the server is unreachable or refused the handshake \
             (browsers hide the HTTP status: check the server's log, the key and the tags)"
        )),
    }
}

/// The subprotocols of the next attempt: `tagcast.v1`, and the token (`getToken`'s answer, or
/// the `token` option) as `tagcast.token.<token>`.
async fn protocols(inner: &Rc<RefCell<Inner>>) -> Result<Vec<String>, String> {
    let (get_token, token, context) = {
        let i = inner.borrow();
        // What `getToken` is told: the tags this attempt opens with (when it names them) and
        // the client's own token (the server's after an API retag), so that it can sign the
        // right tags, or hand that token back.
        let context = js_sys::Object::new();
        if i.tags_in_url {
            let _ = js_sys::Reflect::set(&context, &"tags".into(), &parse_json(&i.tags.to_json()));
        }
        if let Some(token) = &i.token {
            let _ = js_sys::Reflect::set(&context, &"token".into(), &token.into());
        }
        (i.get_token.clone(), i.token.clone(), context)
    };
    let token = match get_token {
        None => token,
        Some(get_token) => {
            let failed = |e: JsValue| format!("getToken failed: {}", describe(&e));
            let answer = get_token.call1(&JsValue::NULL, &context).map_err(failed)?;
            let answer = JsFuture::from(js_sys::Promise::resolve(&answer))
                .await
                .map_err(failed)?;
            if answer.is_undefined() || answer.is_null() {
                None
            } else {
                Some(answer.as_string().ok_or("getToken must give a string")?)
            }
        }
    };
    if let Some(token) = &token {
        // A handshake without tags gets the token's (PROTOCOL.md §5.1): so does `tags`.
        let mut i = inner.borrow_mut();
        if !i.tags_in_url {
            if let Some(tags) = token_tags(token, i.max_tags) {
                i.tags = tags;
            }
        }
    }
    let mut protocols = vec![SUBPROTOCOL.to_owned()];
    protocols.extend(token.map(|t| format!("tagcast.token.{t}")));
    Ok(protocols)
}

/// How [`open`] ended.
enum Opened {
    /// Open, and whether it was opened with `since`.
    Socket(WebSocket, bool),
    /// The application closed the client meanwhile.
    Closed,
    /// No more attempts: why.
    GaveUp(String),
}

/// Opens a socket, resuming after the cursor's position when it has one. When reconnecting is
/// on, a failed attempt is retried after a delay (exponential backoff with full jitter) up to
/// `maxRetries` times; `wait_first` waits before the first attempt too (after a drop, so that
/// clients of a restarted server do not all come back at once).
async fn open(inner: &Rc<RefCell<Inner>>, wait_first: bool) -> Opened {
    let mut failures: u32 = 0;
    loop {
        let (url, resuming, reconnect, max_retries, min, max) = {
            let i = inner.borrow();
            let since = i.cursor.since();
            // The URL came from `handshake_url` already: adding a pair cannot fail.
            let url = since
                .and_then(|since| tagcast::url::handshake_url(&i.url, &[("since", since)]).ok())
                .unwrap_or_else(|| i.url.clone());
            let r = (i.reconnect, i.max_retries, i.min_delay_ms, i.max_delay_ms);
            (url, since.is_some(), r.0, r.1, r.2, r.3)
        };
        if failures > 0 || wait_first {
            // Full jitter: a uniform delay below an exponentially growing, capped bound.
            let bound = (min * 2f64.powi(failures.min(20) as i32))
                .min(max)
                .min(MAX_TIMEOUT_MS);
            TimeoutFuture::new((js_sys::Math::random() * bound) as u32).await;
        }
        if inner.borrow().state == State::Closed {
            return Opened::Closed;
        }
        let opened = match protocols(inner).await {
            Ok(protocols) => open_socket(&url, &protocols).await,
            Err(e) => Err(e),
        };
        if inner.borrow().state == State::Closed {
            if let Ok(socket) = opened {
                let _ = socket.close(Some(1000), None);
            }
            return Opened::Closed;
        }
        match opened {
            Ok(socket) => return Opened::Socket(socket, resuming),
            Err(reason) => {
                failures = failures.saturating_add(1);
                if !reconnect || f64::from(failures) > max_retries {
                    return Opened::GaveUp(if failures > 1 {
                        format!("gave up after {failures} attempts: {reason}")
                    } else {
                        reason
                    });
                }
            }
        }
    }
}

/// A connection to a Tagcast server, made by `connect`.
#[wasm_bindgen]
pub struct TagcastClient {
    inner: Rc<RefCell<Inner>>,
}

/// Opens a connection with `tags` and resolves once it is open. Rejects with a `TagcastError`
/// whose code is `bad_request` for invalid tags or options, or a URL that is not `ws://` or
/// `wss://` (all before any network use), or `closed` when the server cannot be reached or
/// refuses the handshake (with `reconnect` on, after `maxRetries` more attempts). (Typed in
/// `types`: wasm-bindgen would make `tags` and `options` required.)
#[wasm_bindgen(skip_typescript)]
pub async fn connect(
    url: String,
    tags: Option<JsValue>,
    options: Option<JsValue>,
) -> Result<TagcastClient, JsValue> {
    let options = ConnectOptions::from_js(&options.unwrap_or(JsValue::UNDEFINED))?;
    let tags = tags_from_js(&tags.unwrap_or(JsValue::UNDEFINED), options.max_tags)?;

    let mut credentials = Vec::with_capacity(2);
    if let Some(key) = options.key {
        credentials.push(("key".to_owned(), key));
    }
    if let Some(secret) = options.secret {
        credentials.push(("secret".to_owned(), secret));
    }
    let base = url;
    let url = handshake_url(&base, &tags, false, &credentials).map_err(|e| from_sdk(&e))?;

    let inner = Rc::new(RefCell::new(Inner {
        base,
        credentials,
        url,
        tags_in_url: !tags.is_empty(),
        tags,
        max_tags: options.max_tags,
        token: options.token,
        retag_token: None,
        get_token: options.get_token,
        state: State::Connecting,
        sink: None,
        stop: None,
        pending: HashMap::new(),
        next_id: 1,
        handlers: Rc::default(),
        cursor: Cursor::new(),
        reconnect: options.reconnect,
        max_retries: options.max_retries,
        min_delay_ms: options.min_delay_ms,
        max_delay_ms: options.max_delay_ms,
        default_tags: options.default_tags,
        default_metadata: options.default_metadata,
    }));
    let socket = match open(&inner, false).await {
        Opened::Socket(socket, _) => socket,
        Opened::GaveUp(reason) => return Err(closed(&reason, None)),
        Opened::Closed => return Err(closed("closed", None)),
    };
    let (stream, stopped) = install(&inner, socket);
    {
        let mut i = inner.borrow_mut();
        i.state = State::Open;
        i.cursor.opened(false);
    }
    wasm_bindgen_futures::spawn_local(run(inner.clone(), stream, stopped));
    Ok(TagcastClient { inner })
}

/// The background task: reads frames, and reconnects when the connection drops.
async fn run(inner: Rc<RefCell<Inner>>, mut stream: SplitStream<WebSocket>, mut stopped: Stop) {
    loop {
        let (reason, close) = match read(&inner, &mut stream, &mut stopped).await {
            Ended::Lost(reason, close) => (reason, close),
            Ended::Stopped(sink) => {
                if let Ok(socket) = stream.reunite(sink) {
                    let _ = socket.close(Some(1000), None);
                }
                return;
            }
        };
        let kicked = matches!(close, Some((DISCONNECTED_BY_THE_SERVER, _)));
        let reconnect = {
            let mut i = inner.borrow_mut();
            i.sink = None;
            i.stop = None;
            i.fail_pending(&format!("connection lost: {reason}"), close.as_ref());
            i.reconnect && !kicked && i.state != State::Closed
        };
        if !reconnect {
            set_state(&inner, State::Closed, close.as_ref());
            return;
        }
        set_state(&inner, State::Reconnecting, close.as_ref());
        match open(&inner, true).await {
            Opened::Socket(socket, resuming) => {
                (stream, stopped) = install(&inner, socket);
                inner.borrow_mut().cursor.opened(resuming);
                set_state(&inner, State::Open, None);
                if !resuming {
                    // No position to resume from (history off, or a drop before the first
                    // frame): the server cannot say what was missed, so the client says it may
                    // have been.
                    emit_resumed(&inner, false, 0);
                }
            }
            Opened::Closed => return,
            Opened::GaveUp(reason) => {
                set_state(&inner, State::Closed, Some(&(ABNORMAL, reason)));
                return;
            }
        }
    }
}

/// How a connection ended.
enum Ended {
    /// The connection ended by itself, for this reason (and with this close, when known).
    Lost(String, Option<Close>),
    /// The application closed the client and handed the sink back.
    Stopped(Sink),
}

/// Reads until the connection ends or the application closes the client.
async fn read(
    inner: &Rc<RefCell<Inner>>,
    stream: &mut SplitStream<WebSocket>,
    mut stopped: &mut Stop,
) -> Ended {
    loop {
        let mut next = stream.next().fuse();
        let frame = futures_util::select! {
            frame = next => frame,
            sink = stopped => return match sink {
                Ok(sink) => Ended::Stopped(sink),
                Err(_) => Ended::Lost("closed by the application".to_owned(), None),
            },
        };
        match frame {
            None => return Ended::Lost("the connection ended".to_owned(), None),
            Some(Ok(Message::Text(text))) => handle_frame(inner, &text),
            Some(Ok(Message::Bytes(_))) => {}
            Some(Err(WebSocketError::ConnectionClose(e))) => {
                let reason = format!("code {} {}", e.code, e.reason);
                return Ended::Lost(reason, Some((e.code, e.reason)));
            }
            // A failed connection fires `error`, then `close` with its code (1006): read on.
            Some(Err(WebSocketError::ConnectionError)) => {}
            Some(Err(e)) => return Ended::Lost(e.to_string(), None),
        }
    }
}

fn emit_resumed(inner: &Rc<RefCell<Inner>>, recovered: bool, missed: u64) {
    let event = object(&[
        ("recovered", &JsValue::from(recovered)),
        ("missed", &JsValue::from(missed as f64)),
    ]);
    emit(&handlers(inner), Kind::Resumed, &event, &[]);
}

/// A JSON text (that serde wrote) as a JavaScript value.
fn parse_json(text: &str) -> JsValue {
    js_sys::JSON::parse(text).unwrap_or(JsValue::NULL)
}

fn handle_frame(inner: &Rc<RefCell<Inner>>, text: &str) {
    // Deliveries are parsed by the browser's JSON.parse: the payload reaches JavaScript as is.
    let Ok(parsed) = js_sys::JSON::parse(text) else {
        return;
    };
    let kind = js_sys::Reflect::get(&parsed, &"type".into())
        .ok()
        .and_then(|t| t.as_string());
    let field = |name: &str| js_sys::Reflect::get(&parsed, &name.into()).unwrap_or(JsValue::NULL);
    if kind.as_deref() == Some("message") {
        let (message, tags, pos) = (field("message"), field("tags"), field("pos"));
        let pos = pos.as_string();
        inner.borrow_mut().cursor.message(pos.as_deref());
        let pos = pos.map_or(JsValue::UNDEFINED, JsValue::from);
        let mut fields = vec![("message", &message), ("tags", &tags)];
        if !pos.is_undefined() {
            fields.push(("pos", &pos));
        }
        let event = object(&fields);
        emit(
            &handlers(inner),
            Kind::Message,
            &event,
            &[message.clone(), tags.clone(), pos.clone()],
        );
        return;
    }
    let Ok(frame) = ServerFrame::parse(text) else {
        return;
    };
    inner.borrow_mut().cursor.observe(&frame);
    let (id, result) = match frame {
        ServerFrame::Resumed { recovered, missed } => {
            emit_resumed(inner, recovered, missed);
            return;
        }
        ServerFrame::Tags {
            id,
            tags,
            pos,
            token,
        } => {
            // Retagged (PROTOCOL.md §13): a reconnect opens with the new tags, and with the
            // token that allows them (the one of its own retag, or the one the server sent
            // when its API retagged it; `getToken`, when given, still has the last word).
            {
                let mut i = inner.borrow_mut();
                // Named even when empty: without a `tags` query a signed-tags connection would
                // get all its token grants.
                if let Ok(url) = handshake_url(&i.base, &tags, true, &i.credentials) {
                    i.url = url;
                    i.tags_in_url = true;
                }
                i.tags = tags;
                if let (Some(RequestId::Integer(id)), Some((sent, _))) = (&id, &i.retag_token) {
                    if id == sent {
                        i.token = i.retag_token.take().map(|(_, t)| t);
                    }
                }
                if let Some(token) = token {
                    i.token = Some(token.0);
                }
            }
            let tags = field("tags");
            let mut fields = vec![("tags", &tags)];
            let pos = pos.map(JsValue::from);
            if let Some(pos) = &pos {
                fields.push(("pos", pos));
            }
            emit(&handlers(inner), Kind::Tags, &object(&fields), &[]);
            match id {
                Some(RequestId::Integer(id)) => (id, Ok(tags)),
                _ => return,
            }
        }
        ServerFrame::Ack {
            id: RequestId::Integer(id),
            delivered,
        } => (
            id,
            Ok(object(&[("delivered", &JsValue::from(delivered as f64))])),
        ),
        ServerFrame::Error {
            id: Some(RequestId::Integer(id)),
            code,
            error,
        } => (id, Err(tagcast_error(code.as_str(), &error))),
        // Positions only move the cursor; frames for ids this client never sent cannot be
        // matched to a request.
        _ => return,
    };
    let reply = inner.borrow_mut().pending.remove(&id);
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

/// Reads the `timeoutMs` of a call's options: `None` for no timeout.
fn timeout_ms(options: &JsValue) -> Result<Option<f64>, JsValue> {
    let ms = number(options, "timeoutMs", f64::INFINITY)?;
    Ok(ms.is_finite().then_some(ms.min(MAX_TIMEOUT_MS)))
}

/// Sends a frame that `build` makes from its id, and resolves to the server's answer for that
/// id; rejects at once while the client is not open, and with `timeout` when no answer came
/// within `timeout` milliseconds.
fn request(
    inner: &Rc<RefCell<Inner>>,
    timeout: Option<f64>,
    build: &dyn Fn(i64, &Inner) -> Result<String, JsValue>,
) -> js_sys::Promise {
    let sent = send_frame(inner, build);
    let inner = inner.clone();
    wasm_bindgen_futures::future_to_promise(async move {
        let (id, answer) = sent?;
        let gone = || closed("the connection closed before the answer", None);
        match timeout {
            None => answer.await.unwrap_or_else(|_| Err(gone())),
            Some(ms) => match select(answer, TimeoutFuture::new(ms as u32)).await {
                Either::Left((answer, _)) => answer.unwrap_or_else(|_| Err(gone())),
                Either::Right(_) => {
                    inner.borrow_mut().pending.remove(&id);
                    Err(tagcast_error(
                        TIMEOUT,
                        &format!("no answer from the server within {} ms", ms as u64),
                    ))
                }
            },
        }
    })
}

/// Builds and writes a frame on the open socket; the id and where its answer will come.
fn send_frame(
    inner: &Rc<RefCell<Inner>>,
    build: &dyn Fn(i64, &Inner) -> Result<String, JsValue>,
) -> Result<(i64, oneshot::Receiver<Result<JsValue, JsValue>>), JsValue> {
    let mut inner = inner.borrow_mut();
    let id = inner.next_id;
    let frame = build(id, &inner)?;
    if inner.state != State::Open {
        return Err(closed(
            &format!("not connected (state: {})", inner.state.as_str()),
            None,
        ));
    }
    inner.next_id += 1;
    let sent = match inner.sink.as_mut() {
        // gloo-net's sink is ready at once on an open socket: no await with a borrow held.
        Some(sink) => sink.send(Message::Text(frame)).now_or_never(),
        None => None,
    };
    match sent {
        Some(Ok(())) => {}
        _ => return Err(closed("the connection is not writable", None)),
    }
    let (reply, answer) = oneshot::channel();
    inner.pending.insert(id, reply);
    Ok((id, answer))
}

#[wasm_bindgen]
impl TagcastClient {
    /// Sends `message` (any JSON value; a string by default on the server) to the connections
    /// whose tags contain `tags` (all of them when absent), with the default tags and metadata
    /// merged under the call's own. Resolves to `{ delivered }`, or rejects with a
    /// `TagcastError` (`bad_request`, `unauthorized`, `rate_limited`, `unavailable`, `closed`,
    /// or `timeout` when `options.timeoutMs` passed without an answer). (Typed in `types`:
    /// wasm-bindgen would make the optional parameters required.)
    #[wasm_bindgen(skip_typescript)]
    pub fn send(
        &self,
        message: JsValue,
        tags: Option<JsValue>,
        metadata: Option<JsValue>,
        options: Option<JsValue>,
    ) -> js_sys::Promise {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let prepared = (|| {
            let message = match to_json(&message, "message")? {
                None => return Err(bad_request(MESSAGE_MANDATORY)),
                Some(m) => m,
            };
            let max_tags = self.inner.borrow().max_tags;
            let tags = tags_from_js(tags.as_ref().unwrap_or(&JsValue::UNDEFINED), max_tags)?;
            let metadata = metadata_from_js(metadata.as_ref().unwrap_or(&JsValue::UNDEFINED))?;
            Ok((
                WebSocketRequest::new(message)
                    .with_tags(tags)
                    .with_metadata(metadata),
                timeout_ms(&options)?,
            ))
        })();
        let (request_, timeout) = match prepared {
            Ok(p) => p,
            Err(e) => return js_sys::Promise::reject(&e),
        };
        request(&self.inner, timeout, &|id, inner| {
            // The same frame as the native client's: defaults merged under the call's own.
            request_
                .to_envelope_json(id, &inner.default_tags, &inner.default_metadata)
                .map_err(|e| from_sdk(&e))
        })
    }

    /// Replaces the connection's tags without reconnecting (PROTOCOL.md §13): messages routed
    /// before the server's answer were matched against the old tags, those after it against the
    /// new ones. Resolves to the new tags, or rejects with a `TagcastError` (`bad_request`,
    /// `unauthorized` for tags a signed-tags token does not allow, `closed`, `timeout`). A
    /// reconnect opens with the new tags. `options.token`: a signed-tags token for the new tags.
    /// (Typed in `types`.)
    #[wasm_bindgen(js_name = setTags, skip_typescript)]
    pub fn set_tags(&self, tags: JsValue, options: Option<JsValue>) -> js_sys::Promise {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let max_tags = self.inner.borrow().max_tags;
        let prepared = (|| {
            let tags = tags_from_js(&tags, max_tags)?;
            let token = string(&options, "token")?;
            Ok((tags, token, timeout_ms(&options)?))
        })();
        let (tags, token, timeout) = match prepared {
            Ok(p) => p,
            Err(e) => return js_sys::Promise::reject(&e),
        };
        let id = self.inner.borrow().next_id;
        let answer = request(&self.inner, timeout, &|id, _| {
            let token = token
                .as_ref()
                .map(|t| format!(",\"token\":{}", serde_json::Value::String(t.clone())))
                .unwrap_or_default();
            Ok(format!(
                r#"{{"type":"retag","id":{id},"tags":{}{token}}}"#,
                tags.to_json()
            ))
        });
        let mut inner = self.inner.borrow_mut();
        if inner.next_id > id {
            // Sent: a reconnect presents this token once the server accepted it.
            inner.retag_token = token.map(|t| (id, t));
        }
        answer
    }

    /// The connection's tags: those it opened with, or the latest the server confirmed (a
    /// `tags` event). Under `--signed-tags`, a connection opened without tags has its token's:
    /// those, read from the token.
    #[wasm_bindgen(getter, unchecked_return_type = "Tags")]
    pub fn tags(&self) -> JsValue {
        parse_json(&self.inner.borrow().tags.to_json())
    }

    /// Calls `callback(message, tags, pos)` for every message routed to this connection (`pos`:
    /// its position in the server's history, when it has one). `on("message", ...)` is the same
    /// with one event object, and can be removed.
    #[wasm_bindgen(js_name = onMessage)]
    pub fn on_message(
        &self,
        #[wasm_bindgen(
            unchecked_param_type = "(message: unknown, tags: Tags, pos?: string) => void"
        )]
        callback: js_sys::Function,
    ) {
        handlers(&self.inner).borrow_mut().on_message.push(callback);
    }

    /// Calls `callback(state)` on every state change: `connecting`, `open`, `reconnecting`,
    /// `closed`. `on("state", ...)` also gives the close code and reason.
    #[wasm_bindgen(js_name = onStateChange)]
    pub fn on_state_change(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(state: ConnectionState) => void")]
        callback: js_sys::Function,
    ) {
        handlers(&self.inner).borrow_mut().on_state.push(callback);
    }

    /// Calls `handler(event)` for every `event`: `message`, `state`, `resumed` or `error` (see
    /// `TagcastEventMap`); returns a function that removes it. Throws a `bad_request`
    /// `TagcastError` for another event name. (Typed in `TagcastClient`'s interface.)
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: &str, handler: JsValue) -> Result<js_sys::Function, JsValue> {
        let kind = Kind::parse(event)?;
        let handler: js_sys::Function = handler
            .dyn_into()
            .map_err(|_| bad_request(format!("the {event:?} handler must be a function")))?;
        handlers(&self.inner)
            .borrow_mut()
            .add(kind, handler.clone());
        // Weak: a handler that keeps its own remover must not keep the client alive.
        let weak = Rc::downgrade(&self.inner);
        let remove = Closure::<dyn FnMut()>::new(move || {
            if let Some(inner) = weak.upgrade() {
                handlers(&inner).borrow_mut().remove(kind, &handler);
            }
        });
        Ok(remove.into_js_value().unchecked_into())
    }

    /// Removes a handler added with `on`; removing one that is not there does nothing.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: &str, handler: &js_sys::Function) -> Result<(), JsValue> {
        let kind = Kind::parse(event)?;
        handlers(&self.inner).borrow_mut().remove(kind, handler);
        Ok(())
    }

    /// The current state.
    #[wasm_bindgen(getter, unchecked_return_type = "ConnectionState")]
    pub fn state(&self) -> String {
        self.inner.borrow().state.as_str().to_owned()
    }

    /// Closes the connection (code 1000) for good: no reconnect; pending sends reject `closed`.
    pub fn close(&self) {
        let handover = {
            let mut i = self.inner.borrow_mut();
            i.fail_pending("closed by the application", None);
            (i.sink.take(), i.stop.take())
        };
        let close = handover.0.as_ref().map(|_| (1000, String::new()));
        set_state(&self.inner, State::Closed, close.as_ref());
        if let (Some(sink), Some(stop)) = handover {
            let _ = stop.send(sink);
        }
    }
}
