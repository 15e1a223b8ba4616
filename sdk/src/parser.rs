//! Message parsers: what a server accepts in `message` and what it forwards.
//!
//! The original server accepted strings only unless a `MessageParser` was configured; Tagcast
//! keeps that default ([`StringParser`]) and adds [`JsonParser`] (any JSON), [`TypedParser`]
//! (a serde type, the heir of the original's `MyMessageParser`) and, with the feature
//! `json-schema`, [`SchemaParser`] (`--message-schema FILE`).

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;

/// The error text of the string-only parser (kept from the original server).
pub const NOT_A_STRING: &str =
    "The 'message' property is not a string, you must configure a message parser to parse messages !";

/// Checks a request's `message` and returns what recipients receive.
///
/// The server encodes the returned value once per request; an `Err` is sent back to the sender
/// (close 1007 in raw mode, `bad_request` in envelope mode) with the error's text.
pub trait MessageParser: Send + Sync + 'static {
    /// Validates (and possibly normalizes) one message.
    fn parse(&self, message: Value) -> Result<Value, Error>;
}

/// Accepts only JSON strings: the default, as in the original server.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringParser;

impl MessageParser for StringParser {
    fn parse(&self, message: Value) -> Result<Value, Error> {
        match message {
            Value::String(_) => Ok(message),
            _ => Err(Error::InvalidMessage(NOT_A_STRING.to_owned())),
        }
    }
}

/// Accepts any JSON value (`--messages json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonParser;

impl MessageParser for JsonParser {
    fn parse(&self, message: Value) -> Result<Value, Error> {
        Ok(message)
    }
}

/// Accepts messages that deserialize into `T` and forwards `T` serialized again, so unknown
/// fields can be refused (`#[serde(deny_unknown_fields)]`) and defaults filled in.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use serde_json::json;
/// use tagcast::{MessageParser, TypedParser};
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(deny_unknown_fields, rename_all = "camelCase")]
/// struct MyMessage {
///     message_property1: String,
/// }
///
/// let parser = TypedParser::<MyMessage>::new();
/// assert!(parser.parse(json!({"messageProperty1": "Hello !"})).is_ok());
/// let err = parser.parse(json!({"other": 1})).unwrap_err();
/// assert!(err.to_string().contains("other"));
/// ```
pub struct TypedParser<T>(PhantomData<fn() -> T>);

impl<T> TypedParser<T> {
    /// A parser for messages of type `T`.
    pub fn new() -> Self {
        TypedParser(PhantomData)
    }
}

impl<T> Default for TypedParser<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for TypedParser<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypedParser<{}>", std::any::type_name::<T>())
    }
}

impl<T: DeserializeOwned + Serialize + 'static> MessageParser for TypedParser<T> {
    fn parse(&self, message: Value) -> Result<Value, Error> {
        let typed: T = serde_json::from_value(message)
            .map_err(|e| Error::InvalidMessage(format!("invalid 'message': {e}")))?;
        serde_json::to_value(&typed)
            .map_err(|e| Error::InvalidMessage(format!("cannot encode 'message': {e}")))
    }
}

/// Accepts messages valid against a JSON Schema (`--message-schema FILE`); errors name the
/// failing path inside `message`.
///
/// ```
/// use serde_json::json;
/// use tagcast::{MessageParser, SchemaParser};
///
/// let parser = SchemaParser::new(&json!({
///     "type": "object",
///     "properties": {"text": {"type": "string"}},
///     "required": ["text"]
/// })).unwrap();
/// assert!(parser.parse(json!({"text": "hi"})).is_ok());
/// let err = parser.parse(json!({"text": 5})).unwrap_err();
/// assert!(err.to_string().contains("message/text"));
/// ```
#[cfg(feature = "json-schema")]
pub struct SchemaParser {
    validator: jsonschema::Validator,
}

#[cfg(feature = "json-schema")]
impl std::fmt::Debug for SchemaParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaParser")
    }
}

/// A JSON Schema that cannot be compiled; the text says what is wrong with it.
#[cfg(feature = "json-schema")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSchema(pub String);

#[cfg(feature = "json-schema")]
impl SchemaParser {
    /// Compiles a schema.
    pub fn new(schema: &Value) -> Result<Self, InvalidSchema> {
        jsonschema::validator_for(schema)
            .map(|validator| SchemaParser { validator })
            .map_err(|e| InvalidSchema(e.to_string()))
    }
}

#[cfg(feature = "json-schema")]
impl MessageParser for SchemaParser {
    fn parse(&self, message: Value) -> Result<Value, Error> {
        if let Err(e) = self.validator.validate(&message) {
            let path = e.instance_path().as_str().to_owned();
            return Err(Error::InvalidMessage(format!("message{path}: {e}")));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_parser_keeps_the_original_text() {
        // The error text is the original server's, word for word (PROTOCOL.md §3).
        assert_eq!(
            StringParser.parse(json!({"a": 1})).unwrap_err().to_string(),
            "The 'message' property is not a string, you must configure a message parser to parse messages !"
        );
        for not_a_string in [json!(1), json!(null), json!(true), json!([]), json!(1.5)] {
            assert_eq!(
                StringParser
                    .parse(not_a_string.clone())
                    .unwrap_err()
                    .to_string(),
                NOT_A_STRING,
                "{not_a_string}"
            );
        }
        // A string message is passed on as it is.
        assert_eq!(
            StringParser.parse(json!("x \"quoted\" é")).unwrap(),
            json!("x \"quoted\" é")
        );
        assert_eq!(StringParser.parse(json!("")).unwrap(), json!(""));
    }

    #[test]
    fn json_parser_passes_any_value_as_it_is() {
        for value in [
            json!({"a": [1, {"b": null}]}),
            json!(1.5),
            json!(null),
            json!("x"),
        ] {
            assert_eq!(JsonParser.parse(value.clone()).unwrap(), value);
        }
    }
}
