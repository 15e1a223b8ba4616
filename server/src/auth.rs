//! Authorization: the `AuthManager` trait, `AllowAll`, and the YAML `ApplicationsAuthManager`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderMap;
use tagcast::WebSocketRequest;

/// An auth file (`--auth`) that cannot be used; the text names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFileError {
    /// The file cannot be read.
    #[error("{path}: cannot read the auth file: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file's content is not a valid list of applications.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: ApplicationsError,
    },
}

/// What is wrong with an applications YAML document; positions count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplicationsError {
    /// Not YAML.
    #[error("bad YAML: {0}")]
    Yaml(String),
    /// No top-level `applications` key.
    #[error("no 'applications' key")]
    NoApplications,
    /// `applications` is not a list.
    #[error("'applications' must be a list")]
    NotAList,
    /// An application lacks a field.
    #[error("application {position} has no '{field}'")]
    Missing {
        /// The application's position, from 1.
        position: usize,
        /// The missing field.
        field: &'static str,
    },
    /// `key` or `secret` is not a string.
    #[error("application {position}: '{field}' must be a string")]
    NotAString {
        /// The application's position, from 1.
        position: usize,
        /// The field.
        field: &'static str,
    },
    /// `authorizeOpen` is not a boolean.
    #[error("application {position}: 'authorizeOpen' must be true or false")]
    NotABool {
        /// The application's position, from 1.
        position: usize,
    },
    /// A key the file format does not have (a typo such as `authorizedOpen`).
    #[error(
        "application {position}: unknown key '{key}' (the keys are key, secret, authorizeOpen)"
    )]
    UnknownKey {
        /// The application's position, from 1.
        position: usize,
        /// The key.
        key: String,
    },
    /// A top-level key other than `applications`.
    #[error("unknown key '{0}' (the file has one key: applications)")]
    UnknownTopKey(String),
}

/// What a connection showed at its handshake: what `AuthManager`s decide on.
///
/// Its `Debug` output hides the values of `secret` and `token` and of credential headers, so it
/// is safe to log.
#[derive(Clone)]
pub struct Handshake {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The decoded query string pairs, in order.
    pub query: Vec<(String, String)>,
    /// The request headers.
    pub headers: HeaderMap,
}

impl Handshake {
    /// The first value of a query parameter.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

const HIDDEN_QUERY: [&str; 2] = ["secret", "token"];
const HIDDEN_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "sec-websocket-protocol",
];

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(k, v)| {
                let shown = if HIDDEN_QUERY.contains(&k.as_str()) {
                    "<hidden>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let shown = if HIDDEN_HEADERS.contains(&k.as_str()) {
                    "<hidden>"
                } else {
                    v.to_str().unwrap_or("<binary>")
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("Handshake")
            .field("peer", &self.peer)
            .field("query", &query)
            .field("headers", &headers)
            .finish()
    }
}

/// A refusal, with a text for the client (HTTP 401 body, close reason or error frame).
/// Never put a secret in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Decides who may open a connection and who may send (the original `IAuthManager`).
pub trait AuthManager: Send + Sync + 'static {
    /// Whether a connection may open, from its handshake.
    fn authorize_open(&self, handshake: &Handshake) -> Result<(), Denied>;

    /// Whether a request may be sent on a connection opened with `handshake`.
    fn authorize_send(
        &self,
        handshake: &Handshake,
        request: &WebSocketRequest,
    ) -> Result<(), Denied>;

    /// Whether `authorize_send` reads the handshake's query and headers. When `false`, the server
    /// keeps only the peer address of each connection, which saves memory per connection.
    fn keeps_handshake(&self) -> bool {
        true
    }
}

/// Authorizes everything: the behaviour without `--auth`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl AuthManager for AllowAll {
    fn authorize_open(&self, _: &Handshake) -> Result<(), Denied> {
        Ok(())
    }
    fn authorize_send(&self, _: &Handshake, _: &WebSocketRequest) -> Result<(), Denied> {
        Ok(())
    }
    fn keeps_handshake(&self) -> bool {
        false
    }
}

/// One application of the YAML file.
#[derive(Clone)]
struct Application {
    key: String,
    secret: String,
    authorize_open: bool,
}

/// Applications with a key and a secret, read from YAML (PROTOCOL.md §5):
///
/// ```
/// use tagcast_server::auth::{ApplicationsAuthManager, AuthManager};
///
/// let yaml = "applications:\n  - key: application1\n    secret: s3cret\n    authorizeOpen: false\n";
/// let auth = ApplicationsAuthManager::from_yaml(yaml, false).unwrap();
/// let request = tagcast::WebSocketRequest::new("hi")
///     .with_meta("key", "application1")
///     .with_meta("secret", "s3cret");
/// # let handshake = tagcast_server::auth::Handshake {
/// #     peer: "127.0.0.1:1".parse().unwrap(), query: vec![], headers: Default::default() };
/// assert!(auth.authorize_send(&handshake, &request).is_ok());
/// assert!(auth.authorize_open(&handshake).is_err());
/// ```
#[derive(Clone)]
pub struct ApplicationsAuthManager {
    applications: Vec<Application>,
    /// `--authorize-open`: whether anyone may open.
    authorize_open: bool,
}

impl fmt::Debug for ApplicationsAuthManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.applications.iter().map(|a| a.key.as_str()).collect();
        f.debug_struct("ApplicationsAuthManager")
            .field("applications", &keys)
            .field("authorize_open", &self.authorize_open)
            .finish()
    }
}

impl ApplicationsAuthManager {
    /// Reads the applications from a YAML file; the error names the file and the application.
    pub fn from_file(path: &Path, authorize_open: bool) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| AuthFileError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_yaml(&text, authorize_open).map_err(|problem| AuthFileError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Reads the applications from YAML text; the error names the application (from 1).
    pub fn from_yaml(text: &str, authorize_open: bool) -> Result<Self, ApplicationsError> {
        use serde_yaml_ng::Value;
        let doc: Value =
            serde_yaml_ng::from_str(text).map_err(|e| ApplicationsError::Yaml(e.to_string()))?;
        let list = match doc.get("applications") {
            Some(Value::Sequence(list)) => list,
            Some(_) => return Err(ApplicationsError::NotAList),
            None => return Err(ApplicationsError::NoApplications),
        };
        if let Value::Mapping(top) = &doc {
            if let Some(other) = top.keys().find(|k| k.as_str() != Some("applications")) {
                let name = other
                    .as_str()
                    .map_or_else(|| format!("{other:?}"), str::to_owned);
                return Err(ApplicationsError::UnknownTopKey(name));
            }
        }
        let mut applications = Vec::with_capacity(list.len());
        for (i, app) in list.iter().enumerate() {
            let position = i + 1;
            if let Value::Mapping(fields) = app {
                if let Some(other) = fields
                    .keys()
                    .find(|k| !matches!(k.as_str(), Some("key" | "secret" | "authorizeOpen")))
                {
                    let key = other
                        .as_str()
                        .map_or_else(|| format!("{other:?}"), str::to_owned);
                    return Err(ApplicationsError::UnknownKey { position, key });
                }
            }
            let text_field = |field: &'static str| match app.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(ApplicationsError::NotAString { position, field }),
                None => Err(ApplicationsError::Missing { position, field }),
            };
            let key = text_field("key")?;
            let secret = text_field("secret")?;
            let open = match app.get("authorizeOpen") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApplicationsError::NotABool { position }),
                None => {
                    return Err(ApplicationsError::Missing {
                        position,
                        field: "authorizeOpen",
                    })
                }
            };
            applications.push(Application {
                key,
                secret,
                authorize_open: open,
            });
        }
        Ok(ApplicationsAuthManager {
            applications,
            authorize_open,
        })
    }

    /// The secret of the application `key`, to check a signed-tags token.
    pub fn secret_of(&self, key: &str) -> Option<&str> {
        self.applications
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.secret.as_str())
    }

    /// How many applications were read.
    pub fn len(&self) -> usize {
        self.applications.len()
    }

    /// Whether the file listed no application.
    pub fn is_empty(&self) -> bool {
        self.applications.is_empty()
    }

    fn matches(&self, key: Option<&str>, secret: Option<&str>) -> bool {
        let (Some(key), Some(secret)) = (key, secret) else {
            return false;
        };
        // Every application is checked, so the time does not tell which key exists.
        let mut found = false;
        for app in &self.applications {
            found |= app.key == key && constant_time_eq(app.secret.as_bytes(), secret.as_bytes());
        }
        found
    }
}

/// Compares two byte strings in a time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl AuthManager for ApplicationsAuthManager {
    fn authorize_open(&self, handshake: &Handshake) -> Result<(), Denied> {
        if self.authorize_open {
            return Ok(());
        }
        let key = handshake.query_value("key");
        if let Some(key) = key {
            if self
                .applications
                .iter()
                .any(|a| a.key == key && a.authorize_open)
            {
                return Ok(());
            }
        }
        if self.matches(key, handshake.query_value("secret")) {
            return Ok(());
        }
        Err(Denied(
            "opening a connection requires the 'key' (and 'secret') of an application in the query string"
                .into(),
        ))
    }

    fn authorize_send(&self, _: &Handshake, request: &WebSocketRequest) -> Result<(), Denied> {
        let metadata = request.metadata();
        let key = metadata.get("key").and_then(|v| v.as_str());
        let secret = metadata.get("secret").and_then(|v| v.as_str());
        if self.matches(key, secret) {
            Ok(())
        } else {
            Err(Denied(
                "sending requires the 'key' and 'secret' of an application in 'metadata'".into(),
            ))
        }
    }

    fn keeps_handshake(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_errors_name_the_application() {
        let e = |y: &str| ApplicationsAuthManager::from_yaml(y, true).unwrap_err();
        let second = e("applications:\n  - key: a\n    secret: b\n    authorizeOpen: true\n  - key: c\n    authorizeOpen: true\n");
        assert_eq!(
            second,
            ApplicationsError::Missing {
                position: 2,
                field: "secret"
            }
        );
        assert_eq!(second.to_string(), "application 2 has no 'secret'");
        assert_eq!(e("apps: []"), ApplicationsError::NoApplications);
        assert!(matches!(e("applications: ["), ApplicationsError::Yaml(_)));
        assert_eq!(
            e("applications:\n  - secret: b\n    authorizeOpen: true\n").to_string(),
            "application 1 has no 'key'"
        );
        assert_eq!(
            e("applications:\n  - key: a\n    secret: b\n    authorizeOpen: 1\n"),
            ApplicationsError::NotABool { position: 1 }
        );
        assert_eq!(
            e("applications:\n  - key: a\n    secret: b\n    authorizeOpen: true\n    authorizedOpen: false\n"),
            ApplicationsError::UnknownKey { position: 1, key: "authorizedOpen".into() }
        );
        assert_eq!(
            e("applications: []\napps: 1\n"),
            ApplicationsError::UnknownTopKey("apps".into())
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn debug_hides_secrets() {
        let h = Handshake {
            peer: "127.0.0.1:1".parse().unwrap(),
            query: vec![
                ("key".into(), "k".into()),
                ("secret".into(), "s3cr3t".into()),
            ],
            headers: HeaderMap::new(),
        };
        assert!(!format!("{h:?}").contains("s3cr3t"));
    }
}
