//! The server API (PROTOCOL.md §11 `GET /history`, §12): backends count, disconnect and retag
//! the open connections by tag set, and read the kept history, over HTTP with `--api-key`.
//!
//! No HTTP framework type here: each endpoint takes the request's parts and returns an
//! [`Answer`]; `http.rs` wires them to routes.

use serde_json::{json, Map, Value};
use tagcast::Tags;

use crate::auth::constant_time_eq;
use crate::close::{Closer, DISCONNECTED};
use crate::handshake::parse_query;
use crate::registry::Registry;
use crate::router::Fanout;

/// Most `by` values a presence answer lists.
pub const MAX_PRESENCE_VALUES: usize = 1000;
/// Most messages one `GET /history` answers.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// `limit` of `GET /history` when absent.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The reason of a `/disconnect` close when the request gives none.
pub const DEFAULT_DISCONNECT_REASON: &str = "disconnected by the server";

/// The `--api-key` secret. Its `Debug` output hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// An HTTP answer: a status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Answer { status: 200, body }
    }

    fn error(status: u16, text: impl Into<String>) -> Self {
        Answer {
            status,
            body: json!({ "error": text.into() }),
        }
    }
}

/// What the endpoints work on.
#[derive(Debug)]
pub struct Api<'a> {
    /// `--api-key`; `None` turns the API off.
    pub key: Option<&'a ApiKey>,
    /// The open connections.
    pub registry: &'a Registry,
    /// Delivery, retagging and the history.
    pub fanout: &'a Fanout,
    /// `--max-tags`.
    pub max_tags: usize,
    /// Whether other nodes share the connections (a cluster): answers cover this node only
    /// and say `partial`.
    pub clustered: bool,
}

/// Whether `authorization` (the header's value) carries `key` as a bearer token.
pub fn bearer_matches(authorization: Option<&[u8]>, key: &ApiKey) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some(token) = value.strip_prefix(b"Bearer ") else {
        return false;
    };
    constant_time_eq(token.trim_ascii(), key.0.as_bytes())
}

impl Api<'_> {
    /// Checks the `Authorization` header: 403 when the API is off, 401 when the key is
    /// missing or wrong.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), Answer> {
        let Some(key) = self.key else {
            return Err(Answer::error(
                403,
                "the server API is off: start tagcast serve with --api-key SECRET (or TAGCAST_API_KEY)",
            ));
        };
        if bearer_matches(authorization, key) {
            Ok(())
        } else {
            Err(Answer::error(
                401,
                "the server API needs the header 'Authorization: Bearer <the --api-key secret>'",
            ))
        }
    }

    fn tags(&self, value: Option<&Value>, name: &str) -> Result<Tags, Answer> {
        match value {
            None | Some(Value::Null) => Ok(Tags::new()),
            Some(v) => Tags::from_value_bounded(v, self.max_tags)
                .map_err(|e| Answer::error(400, format!("invalid '{name}': {e}"))),
        }
    }

    fn query_tags(&self, query: &[(String, String)]) -> Result<Tags, Answer> {
        match query_value(query, "tags") {
            None => Ok(Tags::new()),
            Some(json) => Tags::parse_bounded(json, self.max_tags)
                .map_err(|e| Answer::error(400, format!("invalid 'tags': {e}"))),
        }
    }

    fn with_partial(&self, mut body: Value) -> Answer {
        body["partial"] = Value::Bool(self.clustered);
        Answer::ok(body)
    }

    /// `GET /presence?tags=<json>[&by=NAME]`.
    pub fn presence(&self, query: Option<&str>) -> Answer {
        let query = query.map(parse_query).unwrap_or_default();
        let tags = match self.query_tags(&query) {
            Ok(t) => t,
            Err(answer) => return answer,
        };
        let by = query_value(&query, "by");
        let presence = self.registry.presence(&tags, by, MAX_PRESENCE_VALUES);
        let mut body = json!({ "connections": presence.connections });
        if by.is_some() {
            body["values"] = Value::Object(
                presence
                    .values
                    .into_iter()
                    .map(|(value, n)| (value, Value::from(n)))
                    .collect(),
            );
            body["truncated"] = Value::Bool(presence.truncated);
        }
        self.with_partial(body)
    }

    /// `POST /disconnect` with `{"tags": {...}, "reason": "text"}`: closes every matching
    /// connection with 4001.
    pub fn disconnect(&self, body: &[u8]) -> Answer {
        let request = match object(body, &["tags", "reason"]) {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let tags = match required_tags(self, &request) {
            Ok(t) => t,
            Err(answer) => return answer,
        };
        let reason = match request.get("reason") {
            None | Some(Value::Null) => DEFAULT_DISCONNECT_REASON,
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Answer::error(400, "'reason' must be a string"),
        };
        let mut disconnected = 0u64;
        for (conn, _) in self.registry.matching(&tags) {
            if close(&conn.closer, reason) {
                disconnected += 1;
            }
        }
        self.with_partial(json!({ "disconnected": disconnected }))
    }

    /// `POST /retag` with `{"tags": {...}, "set": {...}, "unset": ["name", ...]}`.
    pub fn retag(&self, body: &[u8]) -> Answer {
        let request = match object(body, &["tags", "set", "unset"]) {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let tags = match required_tags(self, &request) {
            Ok(t) => t,
            Err(answer) => return answer,
        };
        let set = match self.tags(request.get("set"), "set") {
            Ok(t) => t,
            Err(answer) => return answer,
        };
        let unset: Vec<String> = match request.get("unset") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => {
                let names: Option<Vec<String>> = names
                    .iter()
                    .map(|n| n.as_str().map(str::to_owned))
                    .collect();
                match names {
                    Some(names) => names,
                    None => return Answer::error(400, "'unset' must be a list of tag names"),
                }
            }
            Some(_) => return Answer::error(400, "'unset' must be a list of tag names"),
        };
        let retagged = self.fanout.retag(&tags, &set, &unset, self.max_tags);
        self.with_partial(json!({ "retagged": retagged.retagged, "refused": retagged.refused }))
    }

    /// `GET /history?tags=<json>&since=<position>&limit=<n>`.
    pub fn history(&self, query: Option<&str>) -> Answer {
        let query = query.map(parse_query).unwrap_or_default();
        let tags = match self.query_tags(&query) {
            Ok(t) => t,
            Err(answer) => return answer,
        };
        let since = query_value(&query, "since");
        if let Some(since) = since {
            if let Err(e) = crate::history::check_position(since) {
                return Answer::error(400, e.to_string());
            }
        }
        let limit = match query_value(&query, "limit").map(str::parse::<usize>) {
            None => DEFAULT_HISTORY_LIMIT,
            Some(Ok(n)) if n <= MAX_HISTORY_LIMIT => n,
            Some(_) => {
                return Answer::error(
                    400,
                    format!("'limit' must be a number from 0 to {MAX_HISTORY_LIMIT}"),
                )
            }
        };
        let Some(history) = self.fanout.history() else {
            return Answer::error(
                404,
                "the history is off: start tagcast serve with --history N (N > 0)",
            );
        };
        let page = history.lock().page(since, &tags, limit);
        let messages: Vec<Value> = page
            .frames
            .iter()
            .filter_map(|frame| serde_json::from_str::<Value>(frame).ok())
            .map(|mut frame| {
                if let Some(o) = frame.as_object_mut() {
                    o.remove("type");
                }
                frame
            })
            .collect();
        self.with_partial(json!({
            "messages": messages,
            "recovered": page.recovered,
            "pos": page.pos,
        }))
    }
}

fn close(closer: &Closer, reason: &str) -> bool {
    closer.close(DISCONNECTED, reason)
}

fn query_value<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The JSON object of a request body, with only the `allowed` properties.
fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, Answer> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Answer::error(400, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Answer::error(400, "the body must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Answer::error(
            400,
            format!(
                "unknown property '{unknown}' (allowed: {})",
                allowed.join(", ")
            ),
        ));
    }
    Ok(map)
}

fn required_tags(api: &Api<'_>, request: &Map<String, Value>) -> Result<Tags, Answer> {
    match request.get("tags") {
        None => Err(Answer::error(
            400,
            "'tags' is required: the connections to act on ({} means everyone)",
        )),
        Some(v) => api.tags(Some(v), "tags"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys_are_compared_whole() {
        let key = ApiKey("s3cret".into());
        assert!(bearer_matches(Some(b"Bearer s3cret"), &key));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), &key));
        assert!(!bearer_matches(Some(b"s3cret"), &key));
        assert!(!bearer_matches(None, &key));
        assert!(!format!("{key:?}").contains("s3cret"));
    }
}
