//! The one error type of the protocol crate, with texts a user can act on.

use std::fmt;

use crate::envelope::ErrorCode;
// The type lives beside `Tags`; this keeps the path `tagcast::error::TagsError` working.
pub use crate::tags::TagsError;
use crate::token::TokenError;

/// How a connection ended: the close frame's code and reason, or, without a close frame, what
/// ended it (an I/O error, a connection that just stopped).
///
/// The codes a Tagcast server sends are associated constants, so an application can tell
/// "come back later" from "go away":
///
/// ```
/// use tagcast::error::Close;
///
/// let kicked = Close { code: Some(Close::DISCONNECTED), reason: "logged out".into() };
/// assert!(kicked.is_final()); // POST /disconnect: a reconnecting client stops
/// assert_eq!(kicked.to_string(), "code 4001 (logged out)");
/// let slow = Close { code: Some(Close::POLICY_VIOLATION), reason: "slow consumer".into() };
/// assert!(!slow.is_final());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code, when a close frame came with one.
    pub code: Option<u16>,
    /// The close frame's reason (possibly empty), or what ended the connection without one.
    pub reason: String,
}

impl Close {
    /// 1000: a normal close (the client's own [`close`](crate::WebSocketClient::close)).
    pub const NORMAL: u16 = 1000;
    /// 1001: the server is stopping (`going away`) or the connection was idle too long.
    pub const GOING_AWAY: u16 = 1001;
    /// 1007: a raw-mode request the server could not accept (PROTOCOL.md §3).
    pub const INVALID_DATA: u16 = 1007;
    /// 1008: `slow consumer` (PROTOCOL.md §8), `rate limited` or `unauthorized` in raw mode.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// 1009: a message over the server's `--max-message-bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// 1012: `service restart`, a cluster node that could not catch its connections up.
    pub const SERVICE_RESTART: u16 = 1012;
    /// 4001: the server's application disconnected this connection (`POST /disconnect`,
    /// PROTOCOL.md §12). It is final: a reconnecting client does not come back.
    pub const DISCONNECTED: u16 = 4001;

    /// Whether the server meant it as final: a reconnect would be unwelcome (today: 4001).
    pub fn is_final(&self) -> bool {
        self.code == Some(Close::DISCONNECTED)
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "code {code} ({})", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Every error of the `tagcast` crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tag set breaks PROTOCOL.md §1.
    #[error(transparent)]
    Tags(#[from] TagsError),
    /// A request is not a valid `WebSocketRequest` (PROTOCOL.md §3); the text names the problem.
    #[error("{0}")]
    InvalidRequest(String),
    /// The message parser rejected the `message` property; the text names the problem.
    #[error("{0}")]
    InvalidMessage(String),
    /// The client refuses to send an empty message (`null` or `""`).
    #[error("refusing to send an empty message")]
    EmptyMessage,
    /// The URL could not be used to open a connection.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The connection could not be opened (nothing listening, TLS, a network error, ...).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server answered the handshake with an HTTP error instead of opening the connection
    /// (PROTOCOL.md §2, §5.1): 401 for a refused key or token (the reason says which: `missing`,
    /// `malformed`, `expired`, `signature`, `subset`...), 400 for bad tags, 503 at the
    /// connection limit, 429 or 403 from a proxy in front of it.
    #[error("the server refused the connection: HTTP {status}{}", with_colon(.reason))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body, trimmed (the server's text; empty when it sent none).
        reason: String,
    },
    /// A signed-tags token the client cannot send (it must be a JWT, PROTOCOL.md §5.1).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The connection is closed: its close code and reason, when the server sent them.
    #[error("connection closed: {0}")]
    Closed(Close),
    /// The connection dropped and the client is reconnecting (see `ClientBuilder::reconnect`):
    /// the request was not sent. The text says why the connection dropped.
    #[error("not connected (reconnecting after: {0}); the request was not sent")]
    NotConnected(String),
    /// The server answered the request with an error frame (envelope mode).
    #[error("{code}: {message}")]
    Rejected {
        /// The error's stable code.
        code: ErrorCode,
        /// The server's text.
        message: String,
    },
    /// The server sent something the client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The envelope error code this error maps to, when it is the sender's fault or a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Tags(_) | Error::InvalidRequest(_) | Error::InvalidMessage(_) => {
                Some(ErrorCode::BadRequest)
            }
            Error::Rejected { code, .. } => Some(*code),
            Error::Token(_) => Some(ErrorCode::BadRequest),
            Error::Refused { status, .. } => match status {
                400 => Some(ErrorCode::BadRequest),
                401 | 403 => Some(ErrorCode::Unauthorized),
                429 => Some(ErrorCode::RateLimited),
                503 => Some(ErrorCode::Unavailable),
                _ => None,
            },
            _ => None,
        }
    }

    /// The close code, when this is [`Error::Closed`] by a close frame that had one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Closed(close) => close.code,
            _ => None,
        }
    }

    /// The HTTP status, when this is a refused handshake ([`Error::Refused`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again as it is cannot help, so a reconnecting client stops: a final close
    /// ([`Close::is_final`], 4001), or a handshake refused with 400, 401 or 403 (bad tags, a
    /// refused key or token). A 429 or 503 refusal, or a dropped connection, is worth retrying.
    pub fn is_final(&self) -> bool {
        match self {
            Error::Closed(close) => close.is_final(),
            Error::Refused { status, .. } => matches!(status, 400 | 401 | 403),
            Error::InvalidUrl { .. } | Error::Token(_) => true,
            _ => false,
        }
    }
}

/// `": text"`, or nothing for an empty text.
fn with_colon(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
