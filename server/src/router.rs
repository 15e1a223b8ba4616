//! Request -> parse -> authorize -> recipients -> enqueue, encoding each frame once.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tagcast::envelope::encode_message_frame;
use tagcast::request::parse_request;
use tagcast::{Error, ErrorCode, MessageParser, ParseOptions, RequestId, WebSocketRequest};

use crate::auth::{AuthManager, Handshake};
use crate::registry::Registry;

/// A refused request: the code for envelope mode and a text naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The envelope error code.
    pub code: ErrorCode,
    /// The text for the sender (never holds a secret).
    pub text: String,
}

impl Refusal {
    fn bad_request(e: &Error) -> Self {
        Refusal {
            code: ErrorCode::BadRequest,
            text: e.to_string(),
        }
    }
}

/// Routes requests to the registry's connections.
pub struct Router {
    /// Where the recipients are.
    pub registry: Arc<Registry>,
    /// What `message` may be.
    pub parser: Arc<dyn MessageParser>,
    /// Who may send.
    pub auth: Arc<dyn AuthManager>,
    /// `--max-tags`.
    pub max_tags: usize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("max_tags", &self.max_tags)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Handles one request frame from a connection: returns its id (when it has one) and the
    /// delivered count or the refusal. Routing is complete when this returns, so the next frame
    /// of the same sender is routed after this one everywhere.
    pub fn route_text(
        &self,
        text: &str,
        envelope: bool,
        handshake: &Handshake,
    ) -> (Option<RequestId>, Result<u64, Refusal>) {
        let options = ParseOptions {
            allow_id: envelope,
            max_tags: self.max_tags,
        };
        let (id, parsed) = parse_request(text, &options);
        let result = match parsed {
            Ok(request) => self.route(request, handshake),
            Err(e) => Err(Refusal::bad_request(&e)),
        };
        (if envelope { id } else { None }, result)
    }

    /// Authorizes, parses the message and delivers one request.
    pub fn route(&self, request: WebSocketRequest, handshake: &Handshake) -> Result<u64, Refusal> {
        if let Err(denied) = self.auth.authorize_send(handshake, &request) {
            return Err(Refusal {
                code: ErrorCode::Unauthorized,
                text: denied.0,
            });
        }
        let (message, tags, _metadata) = request.into_parts();
        let message = self
            .parser
            .parse(message)
            .map_err(|e| Refusal::bad_request(&e))?;
        let raw = Utf8Bytes::from(encode(&message));
        let delivered = self.registry.deliver(&tags, &raw, || {
            Utf8Bytes::from(encode_message_frame(&raw, &tags.to_json()))
        });
        tracing::debug!(delivered, tags = %tags.to_json(), "routed");
        Ok(delivered)
    }
}

fn encode(message: &Value) -> String {
    serde_json::to_string(message).expect("a JSON value always serializes")
}
