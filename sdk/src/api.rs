//! A client of the server's HTTP side (feature `client`): `POST /publish` and the server API
//! (`/presence`, `/disconnect`, `/retag`, `/history`) with the `--api-key` secret.
//!
//! One short HTTP/1.1 exchange per call, over TCP or TLS (`https://` or `wss://` URLs).
//!
//! ```no_run
//! use tagcast::api::ApiClient;
//! use tagcast::{Tags, WebSocketRequest};
//!
//! # async fn demo() -> Result<(), tagcast::api::ApiError> {
//! let api = ApiClient::new("http://localhost:8080")?.api_key("the --api-key secret");
//! let delivered = api.publish(&WebSocketRequest::new("Bonjour")
//!     .with_tags(Tags::new().with("language", "FR"))).await?;
//! let room = api.presence(&Tags::new().with("room", 42), Some("user")).await?;
//! println!("{delivered} delivered; {} in room 42", room.connections);
//! api.disconnect(&Tags::new().with("user", 42), Some("logged out")).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::request::WebSocketRequest;
use crate::tags::Tags;

/// How long one call may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The URL cannot be used (not http, https, ws or wss).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached, or the exchange failed.
    #[error("cannot reach the server: {0}")]
    Connect(String),
    /// The server answered with an error status and its `error` text.
    #[error("HTTP {status}: {error}")]
    Refused {
        /// The HTTP status (400 bad request, 401 unauthorized or wrong key, 403 API off, ...).
        status: u16,
        /// The server's text.
        error: String,
    },
    /// The answer is not what the protocol says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// What `GET /presence` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    /// Matching connections.
    pub connections: u64,
    /// With `by`: connections per value of that tag.
    #[serde(default)]
    pub values: BTreeMap<String, u64>,
    /// Whether values were left out past 1000.
    #[serde(default)]
    pub truncated: bool,
    /// Whether some node of a cluster is not counted.
    #[serde(default)]
    pub partial: bool,
}

/// What `POST /retag` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Retagged {
    /// Connections whose tags changed.
    pub retagged: u64,
    /// Matching connections left unchanged (their new tags would break the rules).
    pub refused: u64,
    /// Whether some node of a cluster is not covered.
    #[serde(default)]
    pub partial: bool,
}

/// One kept request of `GET /history`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Kept {
    /// Its payload.
    pub message: Value,
    /// Its tags.
    pub tags: Tags,
    /// Its position.
    pub pos: String,
}

/// What `GET /history` answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryPage {
    /// The kept requests, oldest first.
    pub messages: Vec<Kept>,
    /// Whether nothing after `since` is missing from the history.
    pub recovered: bool,
    /// The position to pass as `since` for more.
    pub pos: String,
}

/// A client of one server's HTTP side.
#[derive(Clone)]
pub struct ApiClient {
    tls: bool,
    host: String,
    port: u16,
    key: Option<String>,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("api_key", &self.key.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl ApiClient {
    /// A client of the server at `url` (`http://`, `https://`, or the `ws://`/`wss://` URL
    /// its WebSocket clients use).
    pub fn new(url: &str) -> Result<Self, ApiError> {
        let invalid = |reason: &str| ApiError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = ::url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let tls = match parsed.scheme() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            _ => return Err(invalid("the scheme must be http, https, ws or wss")),
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        Ok(ApiClient {
            tls,
            host,
            port,
            key: None,
            roots: Vec::new(),
        })
    }

    /// Sends the `--api-key` secret with every call (`Authorization: Bearer`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Also trusts the PEM certificates in `pem` for `https://` (a self-signed server).
    pub fn trust_pem(mut self, pem: &[u8]) -> Result<Self, ApiError> {
        self.roots
            .extend(crate::tls::parse_pem(pem).map_err(|e| ApiError::Connect(e.to_string()))?);
        Ok(self)
    }

    /// `POST /publish`: how many connections of the receiving node got the request.
    pub async fn publish(&self, request: &WebSocketRequest) -> Result<u64, ApiError> {
        let answer = self
            .call("POST", "/publish", Some(request.to_json()))
            .await?;
        delivered(&answer)
    }

    /// `POST /publish` with several requests, routed in order: each one's delivered count or
    /// the server's error text.
    pub async fn publish_batch(
        &self,
        requests: &[WebSocketRequest],
    ) -> Result<Vec<Result<u64, String>>, ApiError> {
        let body: Vec<Value> = requests
            .iter()
            .map(|r| serde_json::from_str(&r.to_json()).unwrap_or(Value::Null))
            .collect();
        let answer = self
            .call("POST", "/publish", Some(Value::Array(body).to_string()))
            .await?;
        let results = answer["results"]
            .as_array()
            .ok_or_else(|| ApiError::Protocol(format!("no results in {answer}")))?;
        Ok(results
            .iter()
            .map(|r| match r["error"].as_str() {
                Some(error) => Err(error.to_owned()),
                None => delivered(r).map_err(|e| e.to_string()),
            })
            .collect())
    }

    /// `GET /presence`: connections whose tags contain `tags`, and per value of `by`.
    pub async fn presence(&self, tags: &Tags, by: Option<&str>) -> Result<Presence, ApiError> {
        let mut query = ::url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("tags", &tags.to_json());
        if let Some(by) = by {
            query.append_pair("by", by);
        }
        let answer = self
            .call("GET", &format!("/presence?{}", query.finish()), None)
            .await?;
        parse(answer)
    }

    /// `POST /disconnect`: closes the matching connections with 4001 and `reason`.
    pub async fn disconnect(&self, tags: &Tags, reason: Option<&str>) -> Result<u64, ApiError> {
        let mut body = json!({ "tags": tags });
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        let answer = self
            .call("POST", "/disconnect", Some(body.to_string()))
            .await?;
        answer["disconnected"]
            .as_u64()
            .ok_or_else(|| ApiError::Protocol(format!("no disconnected count in {answer}")))
    }

    /// `POST /retag`: adds or replaces `set`, removes `unset`, on every matching connection.
    pub async fn retag(
        &self,
        tags: &Tags,
        set: &Tags,
        unset: &[&str],
    ) -> Result<Retagged, ApiError> {
        let body = json!({ "tags": tags, "set": set, "unset": unset });
        let answer = self.call("POST", "/retag", Some(body.to_string())).await?;
        parse(answer)
    }

    /// `GET /history`: what a connection with `tags` would have received after `since`.
    pub async fn history(
        &self,
        tags: &Tags,
        since: Option<&str>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, ApiError> {
        let mut query = ::url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("tags", &tags.to_json());
        if let Some(since) = since {
            query.append_pair("since", since);
        }
        if let Some(limit) = limit {
            query.append_pair("limit", &limit.to_string());
        }
        let answer = self
            .call("GET", &format!("/history?{}", query.finish()), None)
            .await?;
        parse(answer)
    }

    /// One exchange: the JSON body of a 2xx answer, or the server's refusal.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, ApiError> {
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ApiError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
            let _ = tcp.set_nodelay(true);
            if self.tls {
                let config = crate::tls::client_config(&self.roots)
                    .map_err(|e| ApiError::Connect(e.to_string()))?;
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| ApiError::Connect(format!("{}: {e}", self.host)))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ApiError::Connect(format!("TLS: {e}")))?;
                self.exchange(stream, method, path, body).await
            } else {
                self.exchange(tcp, method, path, body).await
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Connect(format!("no answer within {} s", TIMEOUT.as_secs())))?
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, ApiError> {
        let io = |e: std::io::Error| ApiError::Connect(e.to_string());
        let body = body.unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.host, self.port
        );
        if let Some(key) = &self.key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body.as_bytes()).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        let (status, body) = split_answer(&answer)?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::Protocol(format!(
                "HTTP {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(ApiError::Refused {
                status,
                error: value["error"]
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            })
        }
    }
}

fn delivered(answer: &Value) -> Result<u64, ApiError> {
    answer["delivered"]
        .as_u64()
        .ok_or_else(|| ApiError::Protocol(format!("no delivered count in {answer}")))
}

fn parse<T: for<'de> Deserialize<'de>>(answer: Value) -> Result<T, ApiError> {
    let text = answer.to_string();
    serde_json::from_value(answer).map_err(|e| ApiError::Protocol(format!("{e}: {text}")))
}

/// The status and the (de-chunked) body of an HTTP/1.1 answer read to its end.
fn split_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), ApiError> {
    let bad = |why: &str| ApiError::Protocol(why.to_owned());
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP answer (is this a Tagcast server, over the right scheme?)"))?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let raw = &answer[end + 4..];
    if !chunked {
        return Ok((status, raw.to_vec()));
    }
    let mut body = Vec::new();
    let mut rest = raw;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("a cut chunked body"))?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| bad("a bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, body));
        }
        if rest.len() < size + 2 {
            return Err(bad("a cut chunk"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_scheme_name_the_http_side() {
        let c = ApiClient::new("ws://localhost:8080/?tags=x").unwrap();
        assert_eq!((c.tls, c.host.as_str(), c.port), (false, "localhost", 8080));
        let c = ApiClient::new("wss://example.org").unwrap();
        assert_eq!((c.tls, c.port), (true, 443));
        assert!(ApiClient::new("ftp://x").is_err());
        assert!(!format!("{:?}", c.api_key("s3cret")).contains("s3cret"));
    }

    #[test]
    fn answers_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"delivered\":1}";
        assert_eq!(
            split_answer(plain).unwrap(),
            (200, b"{\"delivered\":1}".to_vec())
        );
        let chunked = b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
        assert_eq!(split_answer(chunked).unwrap(), (401, b"{\"a\":1}".to_vec()));
        assert!(split_answer(b"\x15\x03\x03").is_err());
    }
}
