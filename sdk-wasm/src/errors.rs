//! The errors JavaScript sees: `Error`s named `TagcastError` whose `code` a caller switches on.

use tagcast::ErrorCode;
use wasm_bindgen::JsValue;

/// The code of failures of the connection itself (not a server error frame).
pub(crate) const CLOSED: &str = "closed";

/// A JavaScript `Error` named `TagcastError` with a `code` property.
pub(crate) fn tagcast_error(code: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name("TagcastError");
    let _ = js_sys::Reflect::set(&error, &"code".into(), &code.into());
    error.into()
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
