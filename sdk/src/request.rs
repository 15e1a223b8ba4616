//! `WebSocketRequest`: the builder, its exact serialization and strict parsing (PROTOCOL.md §3).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::envelope::RequestId;
use crate::error::Error;
use crate::tags::{json_kind, Tags, TagsError, DEFAULT_MAX_TAGS};

/// Free-form request metadata (a JSON object). With `--auth`, it carries `key` and `secret`.
/// It is never forwarded to recipients.
pub type Metadata = Map<String, Value>;

/// The error text for a request without `message` (kept from the original server).
pub const MESSAGE_MANDATORY: &str = "The 'message' property is mandatory !";

/// A request to deliver `message` to every connection whose tags contain `tags`.
///
/// Serializes exactly as PROTOCOL.md §3: `{"message":…,"tags":{…},"metadata":{…}}`, with empty
/// tags and metadata as `{}`.
///
/// ```
/// use tagcast::{Tags, WebSocketRequest};
///
/// let request = WebSocketRequest::new("Bonjour !")
///     .with_tags(Tags::new().with("language", "FR"))
///     .with_meta("key", "application1");
/// assert_eq!(
///     serde_json::to_string(&request).unwrap(),
///     r#"{"message":"Bonjour !","tags":{"language":"FR"},"metadata":{"key":"application1"}}"#
/// );
///
/// // Parsing is strict, and its errors name the problem.
/// let parsed = WebSocketRequest::parse(r#"{"message": "Hi", "tags": {"language": "EN"}}"#).unwrap();
/// assert_eq!(parsed.tags().get("language").unwrap().canonical(), "EN");
/// let err = WebSocketRequest::parse(r#"{"tags": {}}"#).unwrap_err();
/// assert_eq!(err.to_string(), "The 'message' property is mandatory !");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebSocketRequest {
    message: Value,
    tags: Tags,
    metadata: Metadata,
}

impl WebSocketRequest {
    /// A request carrying `message` (a string, or any JSON value), no tags (everyone) and no metadata.
    pub fn new(message: impl Into<Value>) -> Self {
        WebSocketRequest {
            message: message.into(),
            tags: Tags::new(),
            metadata: Metadata::new(),
        }
    }

    /// A request carrying a typed message, serialized with serde.
    pub fn from_message<T: Serialize>(message: &T) -> Result<Self, Error> {
        let value =
            serde_json::to_value(message).map_err(|e| Error::InvalidMessage(e.to_string()))?;
        Ok(WebSocketRequest::new(value))
    }

    /// Replaces the tags the recipients must have.
    pub fn with_tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds one metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The message payload.
    pub fn message(&self) -> &Value {
        &self.message
    }

    /// The tags a recipient must have.
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Mutable access to the tags (used to merge a client's default tags).
    pub fn tags_mut(&mut self) -> &mut Tags {
        &mut self.tags
    }

    /// Mutable access to the metadata.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Takes the request apart: `(message, tags, metadata)`.
    pub fn into_parts(self) -> (Value, Tags, Metadata) {
        (self.message, self.tags, self.metadata)
    }

    /// Replaces the message (used by message parsers that normalize it).
    pub fn set_message(&mut self, message: Value) {
        self.message = message;
    }

    /// Strictly parses a request without `id` and with the default tag bound.
    pub fn parse(text: &str) -> Result<Self, Error> {
        parse_request(text, &ParseOptions::default()).1
    }

    /// The request as compact JSON text (§3).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a WebSocketRequest always serializes")
    }

    /// The frame a client sends for this request in envelope mode (PROTOCOL.md §6):
    /// `{"id":…,"message":…,"tags":{…},"metadata":{…}}`, with the client's `default_tags` and
    /// `default_metadata` merged under the request's own (a name in both keeps the request's
    /// value). Every client builds its frames here, so they all merge the same way.
    ///
    /// Fails with [`Error::EmptyMessage`] when the message is `null` or `""`.
    ///
    /// ```
    /// use tagcast::{Metadata, Tags, WebSocketRequest};
    ///
    /// let mut defaults = Metadata::new();
    /// defaults.insert("key".into(), "application1".into());
    /// let request = WebSocketRequest::new("Hi").with_tags(Tags::new().with("language", "EN"));
    /// let frame = request
    ///     .to_envelope_json(7, &Tags::new().with("language", "FR").with("room", 1), &defaults)
    ///     .unwrap();
    /// assert_eq!(
    ///     frame,
    ///     r#"{"id":7,"message":"Hi","tags":{"language":"EN","room":1},"metadata":{"key":"application1"}}"#
    /// );
    /// ```
    pub fn to_envelope_json(
        &self,
        id: i64,
        default_tags: &Tags,
        default_metadata: &Metadata,
    ) -> Result<String, Error> {
        match &self.message {
            Value::Null => return Err(Error::EmptyMessage),
            Value::String(s) if s.is_empty() => return Err(Error::EmptyMessage),
            _ => {}
        }
        let tags = self.tags.merged_over(default_tags);
        let mut metadata = default_metadata.clone();
        for (k, v) in &self.metadata {
            metadata.insert(k.clone(), v.clone());
        }
        /// Borrows the parts, in the order the frame has them.
        #[derive(Serialize)]
        struct Frame<'a> {
            id: i64,
            message: &'a Value,
            tags: &'a Tags,
            metadata: &'a Metadata,
        }
        serde_json::to_string(&Frame {
            id,
            message: &self.message,
            tags: &tags,
            metadata: &metadata,
        })
        .map_err(|e| Error::InvalidMessage(e.to_string()))
    }
}

impl std::str::FromStr for WebSocketRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WebSocketRequest::parse(s)
    }
}

impl<'de> Deserialize<'de> for WebSocketRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        parse_value(value, &ParseOptions::default())
            .1
            .map_err(serde::de::Error::custom)
    }
}

/// How strictly to parse a request.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Whether a top-level `id` is allowed (envelope mode, `/publish`).
    pub allow_id: bool,
    /// The most tags a request may carry.
    pub max_tags: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            allow_id: false,
            max_tags: DEFAULT_MAX_TAGS,
        }
    }
}

/// Parses one request frame. Returns the request's `id` (when the frame is a JSON object with a
/// string or integer `id`, whether or not the rest is valid and `id` is allowed) and the request
/// or an error whose text names the problem.
pub fn parse_request(
    text: &str,
    options: &ParseOptions,
) -> (Option<RequestId>, Result<WebSocketRequest, Error>) {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => parse_value(value, options),
        Err(e) => (
            None,
            Err(Error::InvalidRequest(format!(
                "request is not valid JSON: {e}"
            ))),
        ),
    }
}

/// Like [`parse_request`], for an already parsed JSON value.
pub fn parse_value(
    value: Value,
    options: &ParseOptions,
) -> (Option<RequestId>, Result<WebSocketRequest, Error>) {
    let Value::Object(mut object) = value else {
        let kind = json_kind(&value);
        return (
            None,
            Err(Error::InvalidRequest(format!(
                "request must be a JSON object, found {kind}"
            ))),
        );
    };
    let id = object.get("id").and_then(RequestId::from_value);
    let result = build(&mut object, options);
    (id, result)
}

fn build(
    object: &mut Map<String, Value>,
    options: &ParseOptions,
) -> Result<WebSocketRequest, Error> {
    for name in object.keys() {
        match name.as_str() {
            "message" | "tags" | "metadata" => {}
            "id" if options.allow_id => {}
            other => {
                let shown: String = other.chars().take(40).collect();
                let expected = if options.allow_id {
                    "message, tags, metadata, id"
                } else {
                    "message, tags, metadata"
                };
                return Err(Error::InvalidRequest(format!(
                    "unknown property '{shown}' in request (expected {expected})"
                )));
            }
        }
    }
    if options.allow_id {
        if let Some(id) = object.get("id") {
            if RequestId::from_value(id).is_none() {
                return Err(Error::InvalidRequest(format!(
                    "'id' must be a string or an integer, found {}",
                    json_kind(id)
                )));
            }
        }
    }
    let message = match object.remove("message") {
        None | Some(Value::Null) => return Err(Error::InvalidRequest(MESSAGE_MANDATORY.into())),
        Some(m) => m,
    };
    let tags = match object.get("tags") {
        None | Some(Value::Null) => Tags::new(),
        Some(v) => Tags::from_value_bounded(v, options.max_tags).map_err(|e| invalid_tags(&e))?,
    };
    let metadata = match object.remove("metadata") {
        None | Some(Value::Null) => Metadata::new(),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() => Metadata::new(),
        Some(other) => {
            return Err(Error::InvalidRequest(format!(
                "'metadata' must be a JSON object, found {}",
                json_kind(&other)
            )))
        }
    };
    Ok(WebSocketRequest {
        message,
        tags,
        metadata,
    })
}

fn invalid_tags(e: &TagsError) -> Error {
    Error::InvalidRequest(format!("invalid 'tags': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        WebSocketRequest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_tags_and_metadata_serialize_as_objects() {
        assert_eq!(
            WebSocketRequest::new("x").to_json(),
            r#"{"message":"x","tags":{},"metadata":{}}"#
        );
    }

    #[test]
    fn absent_null_and_empty_array_mean_empty() {
        for text in [
            r#"{"message":"x"}"#,
            r#"{"message":"x","tags":null,"metadata":null}"#,
            r#"{"message":"x","tags":[],"metadata":[]}"#,
        ] {
            let r = WebSocketRequest::parse(text).unwrap();
            assert!(r.tags().is_empty() && r.metadata().is_empty());
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(err(r#"{"message":null}"#), MESSAGE_MANDATORY);
        assert!(err(r#"{"message":"x","extra":1}"#).contains("'extra'"));
        assert!(err(r#"{"message":"x","id":1}"#).contains("'id'"));
        assert!(err(r#"{"message":"x","tags":{"lang":false}}"#).contains("\"lang\""));
        assert!(err(r#"{"message":"x","metadata":"k"}"#).contains("'metadata'"));
        assert!(err("[1]").contains("object"));
        assert!(err("{").contains("not valid JSON"));
    }

    #[test]
    fn id_is_reported_even_for_bad_requests() {
        let opts = ParseOptions {
            allow_id: true,
            ..Default::default()
        };
        let (id, r) = parse_request(r#"{"id":"a1","tags":{}}"#, &opts);
        assert_eq!(id, Some(RequestId::String("a1".into())));
        assert!(r.is_err());
        let (id, r) = parse_request(r#"{"id":7,"message":"m"}"#, &opts);
        assert_eq!(id, Some(RequestId::Integer(7)));
        assert!(r.is_ok());
        let (id, _) = parse_request(r#"{"id":1.5,"message":"m"}"#, &opts);
        assert_eq!(id, None);
    }

    #[test]
    fn envelope_frames_merge_defaults_under_the_request() {
        let mut defaults = Metadata::new();
        defaults.insert("key".into(), "k".into());
        defaults.insert("secret".into(), "s".into());
        let default_tags = Tags::new().with("room", 1).with("language", "FR");
        let request = WebSocketRequest::new(serde_json::json!({"text": "x"}))
            .with_tags(Tags::new().with("language", "EN"))
            .with_meta("trace", 5)
            .with_meta("key", "own");
        assert_eq!(
            request
                .to_envelope_json(3, &default_tags, &defaults)
                .unwrap(),
            r#"{"id":3,"message":{"text":"x"},"tags":{"language":"EN","room":1},"metadata":{"key":"own","secret":"s","trace":5}}"#
        );
        // Without defaults the request goes as it is, empty tags and metadata as objects.
        assert_eq!(
            WebSocketRequest::new("m")
                .to_envelope_json(-1, &Tags::new(), &Metadata::new())
                .unwrap(),
            r#"{"id":-1,"message":"m","tags":{},"metadata":{}}"#
        );
        // The server reads it back as the same request with that id.
        let opts = ParseOptions {
            allow_id: true,
            ..Default::default()
        };
        let frame = request
            .to_envelope_json(9, &default_tags, &defaults)
            .unwrap();
        let (id, parsed) = parse_request(&frame, &opts);
        assert_eq!(id, Some(RequestId::Integer(9)));
        assert_eq!(
            parsed.unwrap().tags(),
            &request.tags().merged_over(&default_tags)
        );
        for empty in [Value::Null, Value::from("")] {
            assert!(matches!(
                WebSocketRequest::new(empty).to_envelope_json(1, &Tags::new(), &Metadata::new()),
                Err(Error::EmptyMessage)
            ));
        }
    }

    #[test]
    fn too_many_tags() {
        let opts = ParseOptions {
            allow_id: false,
            max_tags: 1,
        };
        let (_, r) = parse_request(r#"{"message":"m","tags":{"a":1,"b":2}}"#, &opts);
        assert!(r.unwrap_err().to_string().contains("too many tags"));
    }
}
