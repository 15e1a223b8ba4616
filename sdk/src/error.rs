//! The one error type of the protocol crate, with texts a user can act on.

use crate::envelope::ErrorCode;
// The type lives beside `Tags`; this keeps the path `tagcast::error::TagsError` working.
pub use crate::tags::TagsError;

/// Every error of the `tagcast` crate.
#[derive(Debug, thiserror::Error)]
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
    /// The connection could not be opened (refused, HTTP error status, TLS, ...).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection is closed; the text says how it was closed, when known.
    #[error("connection closed: {0}")]
    Closed(String),
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
            _ => None,
        }
    }
}
