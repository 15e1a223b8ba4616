//! The server API (PROTOCOL.md §11 `GET /history`, §12): backends count, disconnect and retag
//! the open connections by tag set, and read the kept history, over HTTP with `--api-key`.
//!
//! No HTTP framework type here: each endpoint takes the request's parts and returns an
//! [`Answer`]; `http.rs` wires them to routes.
//!
//! In a cluster, presence, disconnect and retag cover every node: the endpoint turns the
//! request into a [`Question`], answers it for this node's connections ([`answer_here`]), asks
//! the other nodes over the bus ([`Bus::ask`]), and sums what they answer ([`merge`]); a
//! node that does not answer within a second is left out and the answer says `partial`.
//! Nodes answer with counts, never with lists of connections. The history is the cluster's
//! on every node (shared through Redis), so `GET /history` answers from this node's copy.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tagcast::Tags;

use crate::auth::constant_time_eq;
use crate::close::DISCONNECTED;
use crate::cluster::Bus;
use crate::handshake::parse_query;
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
    /// This node's connections, their retagging and the history.
    pub fanout: &'a Fanout,
    /// `--max-tags`.
    pub max_tags: usize,
    /// The other nodes of a cluster, asked for their part of each answer.
    pub bus: &'a dyn Bus,
}

/// A question about the open connections that every node answers for its own (presence,
/// disconnect, retag): what travels between the nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Question {
    /// How many connections have tags containing `tags`, per value of `by`.
    Presence {
        /// The tags counted connections contain.
        tags: Tags,
        /// The tag whose values are counted.
        by: Option<String>,
    },
    /// Close every connection whose tags contain `tags` with 4001 and `reason`.
    Disconnect {
        /// The tags of the connections to close.
        tags: Tags,
        /// The close reason.
        reason: String,
    },
    /// Change the tags of every connection whose tags contain `tags`.
    Retag {
        /// The tags of the connections to retag.
        tags: Tags,
        /// Pairs added or replaced.
        set: Tags,
        /// Names removed.
        unset: Vec<String>,
        /// The most tags a connection may end with (the asked node's `--max-tags`).
        max_tags: usize,
    },
}

/// Answers `question` for this node's connections (acting on them for disconnect and retag).
pub fn answer_here(question: &Question, fanout: &Fanout) -> Value {
    match question {
        Question::Presence { tags, by } => {
            let presence = fanout
                .registry()
                .presence(tags, by.as_deref(), MAX_PRESENCE_VALUES);
            json!({
                "connections": presence.connections,
                "values": presence.values,
                "truncated": presence.truncated,
            })
        }
        Question::Disconnect { tags, reason } => {
            let mut disconnected = 0u64;
            for (conn, _) in fanout.registry().matching(tags) {
                if conn.closer.close(DISCONNECTED, reason) {
                    disconnected += 1;
                }
            }
            json!({ "disconnected": disconnected })
        }
        Question::Retag {
            tags,
            set,
            unset,
            max_tags,
        } => {
            let retagged = fanout.retag(tags, set, unset, *max_tags);
            json!({ "retagged": retagged.retagged, "refused": retagged.refused })
        }
    }
}

/// Sums the answers of several nodes to `question` (this node's first): counts add up, and
/// presence values add up per value, at most [`MAX_PRESENCE_VALUES`] of them.
pub fn merge(question: &Question, answers: &[Value]) -> Value {
    let sum = |name: &str| -> u64 { answers.iter().filter_map(|a| a[name].as_u64()).sum() };
    match question {
        Question::Presence { by, .. } => {
            let mut body = json!({ "connections": sum("connections") });
            if by.is_some() {
                let mut values = std::collections::BTreeMap::<String, u64>::new();
                let mut truncated = answers.iter().any(|a| a["truncated"] == true);
                for answer in answers {
                    let Some(those) = answer["values"].as_object() else {
                        continue;
                    };
                    for (value, n) in those {
                        let n = n.as_u64().unwrap_or(0);
                        let known = values.len();
                        match values.get_mut(value) {
                            Some(total) => *total += n,
                            None if known < MAX_PRESENCE_VALUES => {
                                values.insert(value.clone(), n);
                            }
                            None => truncated = true,
                        }
                    }
                }
                body["values"] = json!(values);
                body["truncated"] = Value::Bool(truncated);
            }
            body
        }
        Question::Disconnect { .. } => json!({ "disconnected": sum("disconnected") }),
        Question::Retag { .. } => {
            json!({ "retagged": sum("retagged"), "refused": sum("refused") })
        }
    }
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

    /// Answers `question` for every node: this one, then the others over the bus, summed;
    /// `partial` when a node did not answer in time.
    pub async fn ask(&self, question: Question) -> Answer {
        let mut answers = vec![answer_here(&question, self.fanout)];
        let others = self.bus.ask(&question).await;
        answers.extend(others.answers);
        let mut body = merge(&question, &answers);
        body["partial"] = Value::Bool(others.partial);
        Answer::ok(body)
    }

    /// `GET /presence?tags=<json>[&by=NAME]`.
    pub fn presence(&self, query: Option<&str>) -> Result<Question, Answer> {
        let query = query.map(parse_query).unwrap_or_default();
        let tags = self.query_tags(&query)?;
        let by = query_value(&query, "by").map(str::to_owned);
        Ok(Question::Presence { tags, by })
    }

    /// `POST /disconnect` with `{"tags": {...}, "reason": "text"}`: closes every matching
    /// connection with 4001.
    pub fn disconnect(&self, body: &[u8]) -> Result<Question, Answer> {
        let request = object(body, &["tags", "reason"])?;
        let tags = required_tags(self, &request)?;
        let reason = match request.get("reason") {
            None | Some(Value::Null) => DEFAULT_DISCONNECT_REASON.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(Answer::error(400, "'reason' must be a string")),
        };
        Ok(Question::Disconnect { tags, reason })
    }

    /// `POST /retag` with `{"tags": {...}, "set": {...}, "unset": ["name", ...]}`.
    pub fn retag(&self, body: &[u8]) -> Result<Question, Answer> {
        let request = object(body, &["tags", "set", "unset"])?;
        let tags = required_tags(self, &request)?;
        let set = self.tags(request.get("set"), "set")?;
        let names = || Answer::error(400, "'unset' must be a list of tag names");
        let unset: Vec<String> = match request.get("unset") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names_given)) => names_given
                .iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(names)?,
            Some(_) => return Err(names()),
        };
        Ok(Question::Retag {
            tags,
            set,
            unset,
            max_tags: self.max_tags,
        })
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
        // In a cluster every node keeps the cluster's history: this copy is the answer.
        Answer::ok(json!({
            "messages": messages,
            "recovered": page.recovered,
            "pos": page.pos,
            "partial": false,
        }))
    }
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
    fn questions_cross_the_bus_as_json_and_answers_add_up() {
        let question = Question::Presence {
            tags: Tags::new().with("room", 42),
            by: Some("user".into()),
        };
        let text = serde_json::to_string(&question).unwrap();
        assert_eq!(text, r#"{"op":"presence","tags":{"room":42},"by":"user"}"#);
        assert_eq!(serde_json::from_str::<Question>(&text).unwrap(), question);
        let answers = [
            json!({"connections": 3, "values": {"1": 2, "2": 1}, "truncated": false}),
            json!({"connections": 2, "values": {"2": 1, "3": 1}, "truncated": false}),
        ];
        assert_eq!(
            merge(&question, &answers),
            json!({"connections": 5, "values": {"1": 2, "2": 2, "3": 1}, "truncated": false})
        );
        let retag = Question::Retag {
            tags: Tags::new(),
            set: Tags::new(),
            unset: vec![],
            max_tags: 64,
        };
        let answers = [
            json!({"retagged": 2, "refused": 1}),
            json!({"retagged": 3, "refused": 0}),
        ];
        assert_eq!(
            merge(&retag, &answers),
            json!({"retagged": 5, "refused": 1})
        );
    }

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
