//! Signed tags (PROTOCOL.md §5.1): HS256 JWTs whose claims are an application `key`, a tag set
//! and an expiry, signed with the application's secret by its backend.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::tags::Tags;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused; the text starts with the word PROTOCOL.md §5.1 names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token in the query or the subprotocols.
    #[error(
        "missing: signed tags need a token (query `token` or subprotocol `tagcast.token.<token>`)"
    )]
    Missing,
    /// Not a JWT, another algorithm, or a missing or invalid claim.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The token's `exp` is past.
    #[error("expired: the token expired")]
    Expired,
    /// The token has an `nbf` (not before) still in the future: outside its validity window,
    /// so the reason is `expired` too.
    #[error("expired: the token is not valid before its 'nbf'")]
    NotYetValid,
    /// `key` names no application.
    #[error("unknown application: no application has this key")]
    UnknownApplication,
    /// The signature does not match the application's secret.
    #[error("signature: the token is not signed by this application's secret")]
    Signature,
    /// The `tags` query asks for tags the token does not grant.
    #[error("subset: the tags query must be a subset of the token's tags")]
    Subset,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The application that signed it.
    pub key: String,
    /// The tags the connection may listen with.
    pub tags: Tags,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Signs `tags` for the application `key` with its `secret`, valid until `exp` (Unix seconds).
pub fn sign_tags_until(key: &str, secret: &str, tags: &Tags, exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({ "key": key, "tags": tags, "exp": exp });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Signs `tags` for the application `key` with its `secret`, valid for `ttl` from now: what a
/// backend hands to one user's browser so it can listen with those tags only.
///
/// ```
/// use std::time::Duration;
/// use tagcast::{sign_tags, Tags};
///
/// let token = sign_tags("application1", "s3cret", &Tags::new().with("user", 42), Duration::from_secs(3600));
/// let claims = tagcast::token::verify(&token, 0, |key| (key == "application1").then_some("s3cret")).unwrap();
/// assert_eq!(claims.tags, Tags::new().with("user", 42));
/// ```
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub fn sign_tags(key: &str, secret: &str, tags: &Tags, ttl: std::time::Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    sign_tags_until(key, secret, tags, now.saturating_add(ttl.as_secs()))
}

/// Checks a token at time `now` (Unix seconds): its form, its application (`secret_of` gives
/// an application's secret from its key), its signature, then its validity window (`exp`, and
/// `nbf` when present; other claims such as `iat` or `jti` are ignored).
pub fn verify<'a>(
    token: &str,
    now: u64,
    secret_of: impl Fn(&str) -> Option<&'a str>,
) -> Result<TokenClaims, TokenError> {
    let malformed = |why: &str| TokenError::Malformed(why.to_owned());
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a JWT (three dot-separated parts)"));
    };
    let decode = |part: &str, what: &str| -> Result<Value, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| malformed(&format!("the {what} is not base64url")))?;
        serde_json::from_slice(&bytes).map_err(|_| malformed(&format!("the {what} is not JSON")))
    };
    let header = decode(header, "header")?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(malformed("the algorithm must be HS256"));
    }
    let claims = decode(claims, "claims")?;
    let key = claims
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("missing claim 'key'"))?;
    let tags = claims
        .get("tags")
        .ok_or_else(|| malformed("missing claim 'tags'"))
        .and_then(|t| Tags::from_value(t).map_err(|e| malformed(&format!("claim 'tags': {e}"))))?;
    let seconds = |name: &str| -> Result<Option<u64>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| malformed(&format!("claim '{name}' must be Unix seconds"))),
            Some(_) => Err(malformed(&format!("claim '{name}' must be Unix seconds"))),
        }
    };
    let exp = seconds("exp")?.ok_or_else(|| malformed("missing claim 'exp'"))?;
    // Optional, as in any JWT: not valid before this time.
    let nbf = seconds("nbf")?;
    let secret = secret_of(key).ok_or(TokenError::UnknownApplication)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .map_err(|_| malformed("the signature is not base64url"))?;
    let signing_input = &token[..token.rfind('.').unwrap_or(0)];
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::Signature)?;
    if exp <= now {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(TokenError::NotYetValid);
    }
    Ok(TokenClaims {
        key: key.to_owned(),
        tags,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str) -> Option<&'static str> {
        (key == "app").then_some("s3cret")
    }

    #[test]
    fn every_refusal_names_its_reason() {
        let tags = Tags::new().with("user", 42);
        let good = sign_tags_until("app", "s3cret", &tags, 2000);
        assert_eq!(verify(&good, 1000, secret).unwrap().tags, tags);
        assert_eq!(verify(&good, 2000, secret), Err(TokenError::Expired));
        // `nbf`, when a JWT library adds one, bounds the window from below.
        let claims = json!({ "key": "app", "tags": tags, "exp": 2000, "nbf": 1500, "iat": 1 });
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(input.as_bytes());
        let later = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(verify(&later, 1000, secret), Err(TokenError::NotYetValid));
        assert_eq!(verify(&later, 1500, secret).unwrap().tags, tags);
        let other = sign_tags_until("nope", "s3cret", &tags, 2000);
        assert_eq!(
            verify(&other, 1000, secret),
            Err(TokenError::UnknownApplication)
        );
        let forged = sign_tags_until("app", "wrong", &tags, 2000);
        assert_eq!(verify(&forged, 1000, secret), Err(TokenError::Signature));
        for bad in ["", "a.b", "a.b.c", "x.y.z.w"] {
            assert!(
                matches!(verify(bad, 0, secret), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            good.split('.').nth(1).unwrap()
        );
        assert!(verify(&none, 0, secret)
            .unwrap_err()
            .to_string()
            .starts_with("malformed"));
        // Each error starts with its own reason word (the server's 401 body starts with it,
        // and clients match on it): a token not valid yet reads as expired.
        for (e, prefix) in [
            (TokenError::Missing, "missing: "),
            (TokenError::Malformed("x".into()), "malformed: "),
            (TokenError::Expired, "expired: "),
            (TokenError::NotYetValid, "expired: "),
            (TokenError::UnknownApplication, "unknown application: "),
            (TokenError::Signature, "signature: "),
            (TokenError::Subset, "subset: "),
        ] {
            let text = e.to_string();
            assert!(text.starts_with(prefix), "{e:?}: {text:?}");
        }
    }
}
