//! Handshake URLs: a server's `ws://` or `wss://` URL with the query pairs of the opening
//! (`tags`, `key`, `secret`, ...), built here once for every client.

use crate::error::Error;

/// The URL a client opens: `base` with `pairs` appended to its query.
///
/// `base` is a `ws://` or `wss://` URL; it may have a path, a query (its pairs stay, the new ones
/// come after them) and a fragment (kept). `ws://host:8080` gets the path `/`. Values are encoded
/// as `application/x-www-form-urlencoded`, which is how the server decodes the query, so a `tags`
/// value comes back exactly as written, whatever its spaces, quotes or non-ASCII text.
///
/// Fails with [`Error::InvalidUrl`] when `base` is not a URL, or not a `ws`/`wss` one. The
/// workspace builds without IDNA data (see the root `Cargo.toml`): a host must be ASCII, or
/// already in Punycode.
///
/// ```
/// use tagcast::url::handshake_url;
///
/// let url = handshake_url("ws://localhost:8080", &[("tags", r#"{"language":"FR"}"#)]).unwrap();
/// assert_eq!(url, "ws://localhost:8080/?tags=%7B%22language%22%3A%22FR%22%7D");
/// assert!(handshake_url("http://localhost:8080", &[]).is_err());
/// ```
pub fn handshake_url(base: &str, pairs: &[(&str, &str)]) -> Result<String, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: base.to_owned(),
        reason,
    };
    let mut url = ::url::Url::parse(base).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(invalid(format!(
            "the scheme must be ws or wss, not {}",
            url.scheme()
        )));
    }
    // Without pairs the query is left alone: `query_pairs_mut` would add an empty `?`.
    if !pairs.is_empty() {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoded query of a URL, as the server sees it.
    fn query_of(url: &str) -> Vec<(String, String)> {
        let url = ::url::Url::parse(url).unwrap();
        ::url::form_urlencoded::parse(url.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_bare_host_gets_a_path() {
        assert_eq!(
            handshake_url("ws://host:8080", &[("key", "k")]).unwrap(),
            "ws://host:8080/?key=k"
        );
        assert_eq!(
            handshake_url("ws://host:8080/", &[("key", "k")]).unwrap(),
            "ws://host:8080/?key=k"
        );
        assert_eq!(
            handshake_url("wss://host/ws", &[("key", "k")]).unwrap(),
            "wss://host/ws?key=k"
        );
        assert_eq!(
            handshake_url("ws://host:8080", &[]).unwrap(),
            "ws://host:8080/"
        );
    }

    #[test]
    fn an_existing_query_and_fragment_stay() {
        let url = handshake_url("ws://host/path?a=1&b=x%20y#frag", &[("key", "k")]).unwrap();
        assert_eq!(url, "ws://host/path?a=1&b=x%20y&key=k#frag");
        assert_eq!(
            query_of(&url),
            pairs(&[("a", "1"), ("b", "x y"), ("key", "k")])
        );
        assert_eq!(
            handshake_url("ws://host/?", &[("key", "k")]).unwrap(),
            "ws://host/?key=k"
        );
        assert_eq!(
            handshake_url("ws://host/?a=1#f", &[]).unwrap(),
            "ws://host/?a=1#f"
        );
    }

    #[test]
    fn tags_come_back_exactly() {
        for tags in [
            r#"{"language":"FR"}"#,
            r#"{"name":"Jean Dupont","quote":"\"hi\" & 'bye'"}"#,
            r#"{"ville":"Besançon","emoji":"😀","math":"1+1=2 50%"}"#,
            r#"{"path":"/a?b=c#d"}"#,
        ] {
            let url = handshake_url(
                "ws://localhost:8080/?x=1",
                &[("tags", tags), ("key", "k y")],
            )
            .unwrap();
            assert!(!url.contains(' '), "{url}");
            assert_eq!(
                query_of(&url),
                pairs(&[("x", "1"), ("tags", tags), ("key", "k y")]),
                "{url}"
            );
        }
    }

    #[test]
    fn hosts_are_ascii_or_punycode() {
        assert_eq!(
            handshake_url("wss://xn--bcher-kva.example/ws", &[]).unwrap(),
            "wss://xn--bcher-kva.example/ws"
        );
        // Cargo.lock pins idna_adapter 1.0 (no Unicode back end) to keep the browser SDK small:
        // a Unicode host is refused rather than converted. With idna_adapter 1.2 (ICU4X) this
        // would give the Punycode host above; see the comment on `url` in the root Cargo.toml.
        assert!(matches!(
            handshake_url("wss://bücher.example/ws", &[]),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn only_ws_and_wss_urls() {
        for bad in [
            "http://host:8080",
            "https://host",
            "host:8080",
            "localhost:8080",
            "/relative",
            "",
            "ws://",
            "ws://exa mple.com",
        ] {
            match handshake_url(bad, &[("key", "k")]) {
                Err(Error::InvalidUrl { url, reason }) => {
                    assert_eq!(url, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = handshake_url("http://host", &[]).unwrap_err().to_string();
        assert!(err.contains("ws or wss"), "{err}");
    }
}
