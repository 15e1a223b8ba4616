//! The one error type of the protocol crate, with texts a user can act on.

use crate::envelope::ErrorCode;

/// A problem with a tag set (PROTOCOL.md §1). Each variant names the offending tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagsError {
    /// The tags are not valid JSON.
    #[error("tags are not valid JSON: {0}")]
    InvalidJson(String),
    /// The tags are a JSON value other than an object (or the empty array).
    #[error("tags must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A tag name is empty.
    #[error("tag name must not be empty")]
    EmptyName,
    /// A tag name is longer than 128 bytes.
    #[error("tag name {name:?} is {len} bytes long, the limit is 128")]
    NameTooLong {
        /// The first 32 characters of the name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A string value is longer than 256 bytes.
    #[error("tag {name:?}: value is {len} bytes long, the limit is 256")]
    ValueTooLong {
        /// The tag name.
        name: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// A value is neither a string nor an integer.
    #[error("tag {name:?}: value must be a string or an integer, found {found}")]
    BadValue {
        /// The tag name.
        name: String,
        /// What was found instead.
        found: &'static str,
    },
    /// A number is not an integer that fits i64.
    #[error(
        "tag {name:?}: {number} is not an integer that fits 64 bits (no fraction, no exponent)"
    )]
    NotAnInteger {
        /// The tag name.
        name: String,
        /// The number as written.
        number: String,
    },
    /// More tags than allowed.
    #[error("too many tags: {count}, the limit is {max}")]
    TooMany {
        /// How many tags came.
        count: usize,
        /// The limit (`--max-tags`).
        max: usize,
    },
}

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
