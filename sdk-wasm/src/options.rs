//! What JavaScript passes in (tags, metadata, messages and the options of `connect`), read and
//! validated with the server's own rules before anything reaches the network.

use serde_json::Value;
use tagcast::tags::DEFAULT_MAX_TAGS;
use tagcast::{Metadata, Tags};
use wasm_bindgen::prelude::*;

use crate::errors::bad_request;

/// A JavaScript value as JSON text, through the browser's own `JSON.stringify`; `None` for
/// `undefined` and `null`.
fn json_text(value: &JsValue, what: &str) -> Result<Option<String>, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let cannot = || bad_request(format!("{what} cannot be encoded as JSON"));
    let text = js_sys::JSON::stringify(value).map_err(|_| cannot())?;
    // `JSON.stringify` returns `undefined` for a function or a symbol.
    text.as_string().map(Some).ok_or_else(cannot)
}

/// Converts a JavaScript value to JSON; `None` for `undefined` and `null`.
pub(crate) fn to_json(value: &JsValue, what: &str) -> Result<Option<Value>, JsValue> {
    json_text(value, what)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| bad_request(format!("{what} is not valid JSON: {e}")))
        })
        .transpose()
}

/// Validates tags given by JavaScript with the server's own rules, at most `max` of them; no
/// tags for `undefined` and `null`.
pub(crate) fn tags_from_js(value: &JsValue, max: usize) -> Result<Tags, JsValue> {
    match json_text(value, "tags")? {
        None => Ok(Tags::new()),
        Some(text) => {
            Tags::parse_bounded(&text, max).map_err(|e| bad_request(format!("invalid tags: {e}")))
        }
    }
}

#[wasm_bindgen]
extern "C" {
    /// The global `atob` (windows and workers alike): base64 to a string of bytes.
    #[wasm_bindgen(catch, js_name = atob)]
    fn atob(data: &str) -> Result<String, JsValue>;
}

/// The tags a signed-tags token gives a connection opened without tags (its `tags` claim),
/// read without checking the token: only the server, holding the secret, can. Decoded by the
/// browser's own `atob` and `JSON.parse`, which keeps a base64 decoder out of the `.wasm`.
/// `None` when the token is not a JWT with valid tags.
pub(crate) fn token_tags(token: &str, max: usize) -> Option<Tags> {
    let claims = token.split('.').nth(1)?;
    // base64url to base64, padded.
    let mut base64: String = claims
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while base64.len() % 4 != 0 {
        base64.push('=');
    }
    // One char per byte: the UTF-8 of the claims.
    let bytes: Vec<u8> = atob(&base64).ok()?.chars().map(|c| c as u8).collect();
    let claims = js_sys::JSON::parse(std::str::from_utf8(&bytes).ok()?).ok()?;
    let tags = js_sys::Reflect::get(&claims, &JsValue::from_str("tags")).ok()?;
    if tags.is_undefined() {
        return None;
    }
    tags_from_js(&tags, max).ok()
}

/// Request metadata given by JavaScript: an object, or nothing.
pub(crate) fn metadata_from_js(value: &JsValue) -> Result<Metadata, JsValue> {
    match to_json(value, "metadata")? {
        None => Ok(Metadata::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(bad_request("metadata must be an object")),
    }
}

/// The options of `connect` (the `ConnectOptions` TypeScript interface), read once.
pub(crate) struct ConnectOptions {
    /// Whether to retry a failed first connect and reconnect when the connection drops.
    pub reconnect: bool,
    /// Failed attempts in a row (after the first) before the client gives up.
    pub max_retries: f64,
    /// The most tags of a connection or a send (the server's `--max-tags`).
    pub max_tags: usize,
    /// Called before every connect and reconnect for a fresh signed-tags token.
    pub get_token: Option<js_sys::Function>,
    /// An application's key, for the handshake query.
    pub key: Option<String>,
    /// The application's secret, for the handshake query.
    pub secret: Option<String>,
    /// A signed-tags token, sent as a subprotocol.
    pub token: Option<String>,
    /// The first reconnect delay bound, in milliseconds.
    pub min_delay_ms: f64,
    /// The largest reconnect delay, in milliseconds (never below `min_delay_ms`).
    pub max_delay_ms: f64,
    /// Tags merged under every send's own.
    pub default_tags: Tags,
    /// Metadata merged under every send's own.
    pub default_metadata: Metadata,
}

impl ConnectOptions {
    /// Reads the options object (`undefined` or `null` for the defaults); a wrong option is a
    /// `bad_request` naming it.
    pub(crate) fn from_js(options: &JsValue) -> Result<Self, JsValue> {
        let reconnect = field(options, "reconnect").as_bool().unwrap_or(true);
        let max_retries = number(options, "maxRetries", DEFAULT_MAX_RETRIES)?.floor();
        let max_tags = max_tags(&field(options, "maxTags"))?;
        let get_token = field(options, "getToken");
        let get_token = if get_token.is_undefined() || get_token.is_null() {
            None
        } else {
            Some(get_token.dyn_into().map_err(|_| {
                bad_request(
                    "option 'getToken' must be a function returning a token or a promise of one",
                )
            })?)
        };
        let key = string(options, "key")?;
        let secret = string(options, "secret")?;
        let token = string(options, "token")?;
        let min_delay_ms = number(options, "minDelayMs", 250.0)?;
        let max_delay_ms = number(options, "maxDelayMs", 10_000.0)?.max(min_delay_ms);
        let default_tags = tags_from_js(&field(options, "defaultTags"), max_tags)?;
        let default_metadata = metadata_from_js(&field(options, "defaultMetadata"))?;
        Ok(ConnectOptions {
            reconnect,
            max_retries,
            max_tags,
            get_token,
            key,
            secret,
            token,
            min_delay_ms,
            max_delay_ms,
            default_tags,
            default_metadata,
        })
    }
}

/// The default of `maxRetries`: about half a minute of attempts with the default delays.
const DEFAULT_MAX_RETRIES: f64 = 10.0;

/// The `maxTags` of an option or of `validateTags`: a positive integer, the server's default
/// when absent.
fn max_tags(value: &JsValue) -> Result<usize, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(DEFAULT_MAX_TAGS);
    }
    match value.as_f64() {
        Some(n) if n >= 1.0 && n.fract() == 0.0 => Ok(n.min(u32::MAX.into()) as usize),
        _ => Err(bad_request("maxTags must be a positive integer")),
    }
}

fn field(options: &JsValue, name: &str) -> JsValue {
    if options.is_object() {
        js_sys::Reflect::get(options, &name.into()).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

pub(crate) fn string(options: &JsValue, name: &str) -> Result<Option<String>, JsValue> {
    let v = field(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| bad_request(format!("option '{name}' must be a string")))
}

pub(crate) fn number(options: &JsValue, name: &str, default: f64) -> Result<f64, JsValue> {
    let v = field(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(default);
    }
    match v.as_f64() {
        // `Infinity` is allowed (`maxRetries: Infinity` retries for ever; delays are capped).
        Some(n) if n >= 0.0 => Ok(n),
        _ => Err(bad_request(format!(
            "option '{name}' must be a non-negative number"
        ))),
    }
}

/// Validates tags with the server's rules without connecting, at most `maxTags` of them (the
/// server's default, 64, when absent); throws a `bad_request` `TagcastError` naming the
/// problem. (Typed in `types`: wasm-bindgen would make `maxTags` required.)
#[wasm_bindgen(js_name = validateTags, skip_typescript)]
pub fn validate_tags(tags: JsValue, max: Option<JsValue>) -> Result<(), JsValue> {
    tags_from_js(&tags, max_tags(&max.unwrap_or(JsValue::UNDEFINED))?).map(|_| ())
}
