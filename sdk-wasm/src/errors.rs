//! The errors JavaScript sees: instances of the `TagcastError` class (`js/tagcast-error.js`, a
//! real `Error` subclass that the package exports) whose `code` a caller switches on.

use tagcast::ErrorCode;
use wasm_bindgen::prelude::*;

/// The code of failures of the connection itself (not a server error frame).
pub(crate) const CLOSED: &str = "closed";
/// The code of a `send` or `setTags` whose answer did not come within its `timeoutMs`.
pub(crate) const TIMEOUT: &str = "timeout";

/// A close frame's code and reason.
pub(crate) type Close = (u16, String);

#[wasm_bindgen(module = "/js/tagcast-error.js")]
extern "C" {
    /// The JavaScript class `TagcastError`.
    type TagcastError;

    #[wasm_bindgen(constructor)]
    fn new(
        code: &str,
        message: &str,
        close_code: Option<u16>,
        reason: Option<&str>,
    ) -> TagcastError;
}

/// A `TagcastError` with this `code` and `message`.
pub(crate) fn tagcast_error(code: &str, message: &str) -> JsValue {
    TagcastError::new(code, message, None, None).into()
}

/// A `closed` error; with the close code and reason of the connection when it ended with one.
pub(crate) fn closed(message: &str, close: Option<&Close>) -> JsValue {
    let (code, reason) = close.map_or((None, None), |(c, r)| (Some(*c), Some(r.as_str())));
    TagcastError::new(CLOSED, message, code, reason).into()
}

/// A `bad_request` error: the caller's input is wrong, nothing went to the network.
pub(crate) fn bad_request(message: impl std::fmt::Display) -> JsValue {
    tagcast_error(ErrorCode::BadRequest.as_str(), &message.to_string())
}

/// An error of the `tagcast` crate: a server refusal keeps its code, a failed connection is
/// `closed`, and everything else is about the caller's input (`bad_request`).
pub(crate) fn from_sdk(error: &tagcast::Error) -> JsValue {
    let code = match error {
        tagcast::Error::Connect(_)
        | tagcast::Error::Closed(_)
        | tagcast::Error::NotConnected(_) => CLOSED,
        other => other.code().unwrap_or(ErrorCode::BadRequest).as_str(),
    };
    tagcast_error(code, &error.to_string())
}

/// What a JavaScript exception says: an `Error`'s message, a thrown string, or its type.
pub(crate) fn describe(error: &JsValue) -> String {
    js_sys::Reflect::get(error, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| error.as_string())
        .unwrap_or_else(|| format!("a {}", error.js_typeof().as_string().unwrap_or_default()))
}
