//! The `tagcast.v1` envelope frames (PROTOCOL.md §6): message, ack and error.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tags::Tags;

/// The WebSocket subprotocol that turns envelope mode on.
pub const SUBPROTOCOL: &str = "tagcast.v1";

/// The `id` of a request in envelope mode: a string or an integer, echoed in its ack or error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// An integer id.
    Integer(i64),
    /// A string id.
    String(String),
}

impl RequestId {
    /// The id held by a JSON value, when it is a string or an integer that fits i64.
    pub fn from_value(v: &Value) -> Option<RequestId> {
        match v {
            Value::String(s) => Some(RequestId::String(s.clone())),
            Value::Number(n) => n.as_i64().map(RequestId::Integer),
            _ => None,
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Integer(i) => write!(f, "{i}"),
            RequestId::String(s) => f.write_str(s),
        }
    }
}

/// The stable code of an error frame, for a client to switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or invalid; fix it before sending again.
    BadRequest,
    /// The send is not authorized (wrong or missing `key`/`secret` in metadata).
    Unauthorized,
    /// The connection sends faster than `--rate-limit` allows.
    RateLimited,
    /// The server cannot deliver right now (cluster bus down); try again later.
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signed-tags token in a frame: its text on the wire, `<redacted>` in `Debug`, so that a
/// frame printed with `{:?}` does not put a credential in a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FrameToken(pub String);

impl fmt::Debug for FrameToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameToken(<redacted>)")
    }
}

/// A frame the server sends to a client in envelope mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// A delivered message with the tags of the request that carried it.
    Message {
        /// The payload.
        message: Value,
        /// The request's tags.
        tags: Tags,
        /// The request's position in the server's history (absent with history off).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    /// The acknowledgement of a request that had an `id`.
    Ack {
        /// The request's id.
        id: RequestId,
        /// How many connections of this server the message was queued for.
        delivered: u64,
    },
    /// Sent right after the handshake (history on): the position of the last routed request,
    /// the cursor of a connection that has received nothing yet.
    Position {
        /// The position.
        pos: String,
    },
    /// Ends the replay of a connection opened with `since`.
    Resumed {
        /// Whether no request after `since` was missing from the history.
        recovered: bool,
        /// How many requests were replayed.
        missed: u64,
    },
    /// The connection's tags changed (PROTOCOL.md §13): requests routed after this frame are
    /// matched against these tags, those before it against the old ones.
    Tags {
        /// The id of the client's `retag` command; absent when the server's API retagged it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The connection's tags from now on.
        tags: Tags,
        /// The position of the last request routed before the change (history on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
        /// With signed tags, when the server's API retagged the connection: a token for its new
        /// tags (same application and expiry as its own), for its next handshake.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<FrameToken>,
    },
    /// A refused request; the connection stays open.
    Error {
        /// The request's id, or `null` when the frame had none.
        id: Option<RequestId>,
        /// The stable code.
        code: ErrorCode,
        /// A text naming the problem.
        error: String,
    },
}

impl ServerFrame {
    /// Parses a frame received from the server.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The frame as compact JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ServerFrame always serializes")
    }
}

/// Encodes a delivery frame from an already encoded payload and tags (and the request's
/// position, with history on), without re-encoding them: the server builds it once per request
/// and shares it between recipients.
pub fn encode_message_frame(payload_json: &str, tags_json: &str, pos: Option<&str>) -> String {
    let pos_len = pos.map_or(0, |p| p.len() + 9);
    let mut out = String::with_capacity(payload_json.len() + tags_json.len() + pos_len + 37);
    out.push_str(r#"{"type":"message","message":"#);
    out.push_str(payload_json);
    out.push_str(r#","tags":"#);
    out.push_str(tags_json);
    if let Some(pos) = pos {
        // Positions are [A-Za-z0-9._~-]: nothing to escape.
        out.push_str(r#","pos":""#);
        out.push_str(pos);
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tags_frame_carries_its_token_on_the_wire_and_hides_it_in_debug() {
        let text = r#"{"type":"tags","tags":{"room":2},"token":"aaa.bbb.ccc"}"#;
        let frame = ServerFrame::parse(text).unwrap();
        let ServerFrame::Tags { token, .. } = &frame else {
            panic!("{frame:?}");
        };
        assert_eq!(token.as_ref().map(|t| t.0.as_str()), Some("aaa.bbb.ccc"));
        assert!(!format!("{frame:?}").contains("aaa.bbb.ccc"));
        assert_eq!(serde_json::to_string(&frame).unwrap(), text);
    }

    #[test]
    fn frames_match_section_6() {
        let ack = ServerFrame::Ack {
            id: RequestId::Integer(3),
            delivered: 2,
        };
        assert_eq!(ack.to_json(), r#"{"type":"ack","id":3,"delivered":2}"#);
        let err = ServerFrame::Error {
            id: None,
            code: ErrorCode::BadRequest,
            error: "x".into(),
        };
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","id":null,"code":"bad_request","error":"x"}"#
        );
        let tags = Tags::new().with("language", "FR");
        let fast = encode_message_frame(r#""Hi""#, &tags.to_json(), None);
        let slow = ServerFrame::Message {
            message: Value::from("Hi"),
            tags: tags.clone(),
            pos: None,
        };
        assert_eq!(fast, slow.to_json());
        assert_eq!(fast.capacity(), fast.len());
        assert_eq!(ServerFrame::parse(&fast).unwrap(), slow);
        let fast = encode_message_frame(r#""Hi""#, &tags.to_json(), Some("e1.5"));
        let slow = ServerFrame::Message {
            message: Value::from("Hi"),
            tags,
            pos: Some("e1.5".into()),
        };
        assert_eq!(fast, slow.to_json());
        assert_eq!(fast.capacity(), fast.len());
        assert_eq!(
            ServerFrame::Position { pos: "e1.0".into() }.to_json(),
            r#"{"type":"position","pos":"e1.0"}"#
        );
        assert_eq!(
            ServerFrame::Resumed {
                recovered: false,
                missed: 2
            }
            .to_json(),
            r#"{"type":"resumed","recovered":false,"missed":2}"#
        );
    }
}
