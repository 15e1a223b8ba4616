//! Admitting a WebSocket connection (PROTOCOL.md §2, §5, §5.1, §11): [`Admission::admit`]
//! applies the connection limit, then authorization (the application's key and secret, or a
//! signed-tags token), then the tags, then `since`, and picks the subprotocol. It returns the admitted connection's
//! parts or a typed refusal; the HTTP layer only turns a refusal into a response.

use std::sync::Arc;

use http::header::SEC_WEBSOCKET_PROTOCOL;
use tagcast::{Tags, TagsError, TokenError, SUBPROTOCOL};

use crate::auth::{ApplicationsAuthManager, AuthManager, Handshake};
use crate::connection::Grant;
use crate::history::check_position;
use crate::registry::{Registry, Slot};

/// The prefix of the subprotocol that carries a signed-tags token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "tagcast.token.";

/// Why a handshake is refused, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The server is at `--max-connections` (HTTP 503).
    Limit,
    /// Opening is not authorized, or the signed-tags token is refused (HTTP 401); the text
    /// says why and never holds a secret.
    Unauthorized(String),
    /// The `tags` query parameter is not valid tags (HTTP 400).
    BadTags(TagsError),
    /// `since` is not a position, or comes without the `tagcast.v1` subprotocol (HTTP 400).
    BadSince(String),
}

impl Refused {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            Refused::Limit => 503,
            Refused::Unauthorized(_) => 401,
            Refused::BadTags(_) | Refused::BadSince(_) => 400,
        }
    }

    /// The plain-text body that answers it.
    pub fn text(&self) -> String {
        match self {
            Refused::Limit => "the server is at its connection limit, try again later".into(),
            Refused::Unauthorized(reason) => reason.clone(),
            Refused::BadTags(e) => format!("invalid 'tags': {e}"),
            Refused::BadSince(why) => why.clone(),
        }
    }
}

/// What an admitted connection opens with.
#[derive(Debug)]
pub struct Admitted {
    /// Its `--max-connections` slot, held until the connection ends.
    pub slot: Slot,
    /// Its tags.
    pub tags: Tags,
    /// The subprotocol to answer with: `tagcast.v1` when offered, else the token's own (a
    /// browser that offered only its token protocol must get one back, or it fails).
    pub protocol: Option<String>,
    /// Whether it speaks `tagcast.v1`.
    pub envelope: bool,
    /// The position it resumes from (`since`, envelope mode only).
    pub since: Option<String>,
    /// With `--signed-tags`: what its token grants (its tags bound its retag commands).
    pub granted: Option<Grant>,
    /// The handshake, kept for auth managers whose `authorize_send` reads it.
    pub handshake: Option<Box<Handshake>>,
}

/// The rules a handshake is checked against, from the configuration.
pub struct Admission {
    /// The open connections (and their slots).
    pub registry: Arc<Registry>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-tags`.
    pub max_tags: usize,
    /// Who may open (without `--signed-tags`) and send.
    pub auth: Arc<dyn AuthManager>,
    /// With `--signed-tags`: the applications whose secrets sign tokens.
    pub tokens: Option<Arc<ApplicationsAuthManager>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_connections", &self.max_connections)
            .field("max_tags", &self.max_tags)
            .field("signed_tags", &self.tokens.is_some())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Checks a handshake at `now` (Unix seconds, for token expiry): the connection limit, then
    /// authorization, then the tags.
    pub fn admit(&self, handshake: Handshake, now: u64) -> Result<Admitted, Refused> {
        let slot = self
            .registry
            .reserve(self.max_connections)
            .ok_or(Refused::Limit)?;
        let offered = offered_protocols(&handshake);
        let token_protocol = offered
            .iter()
            .find(|p| p.starts_with(TOKEN_PROTOCOL_PREFIX))
            .cloned();
        let mut granted = None;
        let tags = match &self.tokens {
            Some(applications) => {
                let (tags, grant) =
                    self.signed_tags(applications, &handshake, token_protocol.as_deref(), now)?;
                granted = Some(grant);
                tags
            }
            None => {
                self.auth
                    .authorize_open(&handshake)
                    .map_err(|denied| Refused::Unauthorized(denied.0))?;
                match handshake.query_value("tags") {
                    None => Tags::new(),
                    Some(json) => self.parse_tags(json)?,
                }
            }
        };
        let envelope = offered.iter().any(|p| p == SUBPROTOCOL);
        let since = match handshake.query_value("since") {
            None => None,
            Some(_) if !envelope => {
                return Err(Refused::BadSince(format!(
                    "'since' needs the {SUBPROTOCOL} subprotocol: raw connections cannot resume"
                )))
            }
            Some(since) => {
                check_position(since).map_err(|e| Refused::BadSince(e.to_string()))?;
                Some(since.to_owned())
            }
        };
        let protocol = if envelope {
            Some(SUBPROTOCOL.to_owned())
        } else {
            token_protocol
        };
        let handshake = self.auth.keeps_handshake().then(|| Box::new(handshake));
        Ok(Admitted {
            slot,
            tags,
            protocol,
            envelope,
            since,
            granted,
            handshake,
        })
    }

    /// `--signed-tags`: the tags come from a token the application's backend signed; a `tags`
    /// query may narrow them, never widen them.
    fn signed_tags(
        &self,
        applications: &ApplicationsAuthManager,
        handshake: &Handshake,
        token_protocol: Option<&str>,
        now: u64,
    ) -> Result<(Tags, Grant), Refused> {
        // Both given: the subprotocol wins. The SDKs send their current token there (the one
        // a retag was accepted with, or the server's after an API retag), while a token in
        // the URL is the one the client was first given.
        let token = token_protocol
            .map(|p| &p[TOKEN_PROTOCOL_PREFIX.len()..])
            .or_else(|| handshake.query_value("token"));
        let refused = |e: TokenError| Refused::Unauthorized(e.to_string());
        let claims = match token {
            None => return Err(refused(TokenError::Missing)),
            Some(token) => tagcast::token::verify(token, now, |key| applications.secret_of(key))
                .map_err(refused)?,
        };
        match handshake.query_value("tags") {
            None => Ok((claims.tags.clone(), claims)),
            Some(json) => {
                let asked = self.parse_tags(json)?;
                if claims.tags.contains_all(&asked) {
                    Ok((asked, claims))
                } else {
                    Err(refused(TokenError::Subset))
                }
            }
        }
    }

    fn parse_tags(&self, json: &str) -> Result<Tags, Refused> {
        Tags::parse_bounded(json, self.max_tags).map_err(Refused::BadTags)
    }
}

/// The subprotocols a client offered, in its order.
fn offered_protocols(handshake: &Handshake) -> Vec<String> {
    handshake
        .headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The decoded pairs of a query string (`application/x-www-form-urlencoded`).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The current time in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AllowAll, ApplicationsAuthManager};
    use http::{HeaderMap, HeaderValue};

    const YAML: &str =
        "applications:\n  - key: app\n    secret: s3cret\n    authorizeOpen: false\n";
    const NOW: u64 = 1_800_000_000;

    fn admission(max_connections: Option<usize>, closed: bool, signed: bool) -> Admission {
        let apps = Arc::new(ApplicationsAuthManager::from_yaml(YAML, !closed).unwrap());
        Admission {
            registry: Arc::new(Registry::default()),
            max_connections,
            max_tags: 2,
            auth: if closed {
                apps.clone()
            } else {
                Arc::new(AllowAll)
            },
            tokens: signed.then_some(apps),
        }
    }

    fn offer(query: &str, protocols: Option<&str>) -> Handshake {
        let mut headers = HeaderMap::new();
        if let Some(p) = protocols {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).unwrap());
        }
        Handshake {
            peer: "127.0.0.1:9".parse().unwrap(),
            query: parse_query(query),
            headers,
        }
    }

    fn token(tags: &Tags, exp: u64) -> String {
        tagcast::sign_tags_until("app", "s3cret", tags, exp)
    }

    #[test]
    fn admits_with_tags_and_picks_the_envelope() {
        let a = admission(None, false, false);
        let ok = a
            .admit(offer(r#"tags={"user":5}"#, Some("chat, tagcast.v1")), NOW)
            .unwrap();
        assert_eq!(ok.tags, Tags::new().with("user", 5));
        assert!(ok.envelope);
        assert_eq!(ok.protocol.as_deref(), Some("tagcast.v1"));
        let raw = a.admit(offer("", None), NOW).unwrap();
        assert!(raw.tags.is_empty() && !raw.envelope && raw.protocol.is_none());
    }

    #[test]
    fn the_limit_comes_first_and_slots_come_back() {
        let a = admission(Some(1), true, false);
        let held = a.admit(offer("key=app&secret=s3cret", None), NOW).unwrap();
        // Unauthorized and bad tags too: the limit is checked before anything else.
        assert_eq!(
            a.admit(offer("tags=[1]", None), NOW).unwrap_err(),
            Refused::Limit
        );
        assert_eq!(Refused::Limit.status(), 503);
        drop(held);
        assert!(a.admit(offer("key=app&secret=s3cret", None), NOW).is_ok());
    }

    #[test]
    fn authorization_comes_before_the_tags() {
        let a = admission(None, true, false);
        let e = a.admit(offer("tags=[1]", None), NOW).unwrap_err();
        assert!(matches!(e, Refused::Unauthorized(_)), "{e:?}");
        assert_eq!(e.status(), 401);
        let e = a
            .admit(offer("key=app&secret=s3cret&tags=[1]", None), NOW)
            .unwrap_err();
        assert!(matches!(e, Refused::BadTags(_)), "{e:?}");
        assert_eq!(e.status(), 400);
        assert!(e.text().starts_with("invalid 'tags': "), "{}", e.text());
    }

    #[test]
    fn since_needs_a_position_and_the_envelope() {
        let a = admission(None, false, false);
        let ok = a
            .admit(offer("since=ab.12", Some("tagcast.v1")), NOW)
            .unwrap();
        assert_eq!(ok.since.as_deref(), Some("ab.12"));
        let e = a.admit(offer("since=ab.12", None), NOW).unwrap_err();
        assert!(
            matches!(&e, Refused::BadSince(t) if t.contains("tagcast.v1")),
            "{e:?}"
        );
        let e = a
            .admit(offer("since=a%20b", Some("tagcast.v1")), NOW)
            .unwrap_err();
        assert_eq!(e.status(), 400);
        // The tags are checked first.
        let e = a.admit(offer("tags=5&since=a%20b", None), NOW).unwrap_err();
        assert!(matches!(e, Refused::BadTags(_)), "{e:?}");
    }

    #[test]
    fn the_tag_count_is_bounded() {
        let a = admission(None, false, false);
        let e = a
            .admit(offer(r#"tags={"a":1,"b":2,"c":3}"#, None), NOW)
            .unwrap_err();
        assert_eq!(e, Refused::BadTags(TagsError::TooMany { count: 3, max: 2 }));
    }

    #[test]
    fn signed_tags_come_from_the_token_by_query_or_subprotocol() {
        let a = admission(None, true, true);
        let granted = Tags::new().with("user", 42).with("room", "a");
        let t = token(&granted, NOW + 60);
        let ok = a.admit(offer(&format!("token={t}"), None), NOW).unwrap();
        assert_eq!(ok.tags, granted);
        let protocol = format!("{TOKEN_PROTOCOL_PREFIX}{t}");
        let ok = a.admit(offer("", Some(&protocol)), NOW).unwrap();
        assert_eq!(ok.tags, granted);
        assert!(!ok.envelope);
        assert_eq!(ok.protocol.as_deref(), Some(protocol.as_str()));
        // A subset may be asked for.
        let ok = a
            .admit(
                offer(&format!(r#"token={t}&tags={{"user":42}}"#), None),
                NOW,
            )
            .unwrap();
        assert_eq!(ok.tags, Tags::new().with("user", 42));
        // Both: the subprotocol's token wins over the query's.
        let newer = token(&Tags::new().with("room", "b"), NOW + 60);
        let protocol = format!("{TOKEN_PROTOCOL_PREFIX}{newer}");
        let both = a
            .admit(offer(&format!("token={t}"), Some(&protocol)), NOW)
            .unwrap();
        assert_eq!(both.tags, Tags::new().with("room", "b"));
        // What the token grants is kept whole: its retags and a token signed for it later
        // need it.
        let grant = Grant {
            tags: granted,
            key: "app".into(),
            exp: NOW + 60,
        };
        assert_eq!(ok.granted, Some(grant));
    }

    #[test]
    fn signed_tags_refusals_say_which() {
        let a = admission(None, true, true);
        let granted = Tags::new().with("user", 42);
        let text = |query: String| match a.admit(offer(&query, None), NOW) {
            Err(Refused::Unauthorized(text)) => text,
            other => panic!("{query}: {other:?}"),
        };
        assert_eq!(text(String::new()), TokenError::Missing.to_string());
        assert!(text("token=abc".into()).starts_with("malformed: "));
        let expired = token(&granted, NOW - 1);
        assert_eq!(
            text(format!("token={expired}")),
            TokenError::Expired.to_string()
        );
        let t = token(&granted, NOW + 60);
        assert_eq!(
            text(format!(r#"token={t}&tags={{"user":43}}"#)),
            TokenError::Subset.to_string()
        );
        // Valid token, tags that are not tags: 400 as without signed tags.
        let e = a.admit(offer(&format!("token={t}&tags=5"), None), NOW);
        assert!(matches!(e, Err(Refused::BadTags(_))), "{e:?}");
    }
}
