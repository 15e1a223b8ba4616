//! Signed tags (PROTOCOL.md §5.1): tokens minted here with HMAC-SHA256 directly (independent
//! of the SDK's signer), by query or subprotocol, every refusal reason, the subset rule.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tagcast_server::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::util::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT with the given header and claims, signed with `secret`.
fn jwt(header: &Value, claims: &Value, secret: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn token(key: &str, secret: &str, tags: Value, exp: u64) -> String {
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"key": key, "tags": tags, "exp": exp}),
        secret,
    )
}

async fn signed_server() -> TestServer {
    TestServer::with_config(Config {
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open: false,
        signed_tags: true,
        ..Config::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sets_the_tags_of_the_connection() {
    let server = signed_server().await;
    // application2 cannot open with its key alone, but its token opens (authorize-open false).
    let user42 = token("application2", SECRET2, json!({"user": 42}), now() + 60);
    let mut listener = raw(&format!("{}/?token={user42}", server.url)).await;

    // The subprotocol form keeps the token out of the URL; with tagcast.v1 it gets envelopes.
    let user7 = token("application1", SECRET1, json!({"user": 7}), now() + 60);
    let mut request = server.url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("tagcast.v1, tagcast.token.{user7}")).unwrap(),
    );
    let (mut other, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "tagcast.v1");
    assert_eq!(recv_json(&mut other).await["type"], "position");
    server.wait_connections(2).await;

    let publish = format!(
        r#"{{"message":"for 42","tags":{{"user":"42"}},"metadata":{{"key":"application1","secret":"{SECRET1}"}}}}"#
    );
    assert_eq!(
        http_post(server.addr, "/publish", &publish)
            .await
            .body
            .trim(),
        r#"{"delivered":1}"#
    );
    assert_eq!(recv_text(&mut listener).await, r#""for 42""#);
    // User 7 got nothing: its next message is one sent to it after.
    let for7 = format!(
        r#"{{"message":"for 7","tags":{{"user":"7"}},"metadata":{{"key":"application1","secret":"{SECRET1}"}}}}"#
    );
    assert_eq!(
        http_post(server.addr, "/publish", &for7).await.body.trim(),
        r#"{"delivered":1}"#
    );
    assert_marker_next(&mut other, "for 7").await;

    // A browser offering only its token protocol gets it selected back.
    let mut request = server.url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("tagcast.token.{user42}")).unwrap(),
    );
    let (_, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"]
            .to_str()
            .unwrap(),
        format!("tagcast.token.{user42}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_says_which_check_failed() {
    let server = signed_server().await;
    let good = json!({"user": 42, "room": "a"});
    let cases = [
        (String::new(), "missing"),
        ("token=not-a-jwt".to_owned(), "malformed"),
        (
            format!(
                "token={}",
                jwt(
                    &json!({"alg": "HS512"}),
                    &json!({"key": "application1", "tags": good, "exp": now() + 60}),
                    SECRET1
                )
            ),
            "malformed",
        ),
        (
            format!(
                "token={}",
                jwt(
                    &json!({"alg": "HS256"}),
                    &json!({"key": "application1", "exp": now() + 60}),
                    SECRET1
                )
            ),
            "malformed",
        ),
        (
            format!(
                "token={}",
                token("application1", SECRET1, good.clone(), now() - 1)
            ),
            "expired",
        ),
        (
            format!(
                "token={}",
                jwt(
                    &json!({"alg": "HS256", "typ": "JWT"}),
                    &json!({"key": "application1", "tags": good, "exp": now() + 7200, "nbf": now() + 3600}),
                    SECRET1
                )
            ),
            "expired",
        ),
        (
            format!(
                "token={}",
                token("nobody", SECRET1, good.clone(), now() + 60)
            ),
            "unknown application",
        ),
        (
            format!(
                "token={}",
                token("application1", SECRET2, good.clone(), now() + 60)
            ),
            "signature",
        ),
        (
            format!(
                "token={}&tags={}",
                token("application1", SECRET1, good.clone(), now() + 60),
                encode(r#"{"user":43}"#)
            ),
            "subset",
        ),
    ];
    for (query, reason) in cases {
        let (status, body) = refused(&format!("{}/?{query}", server.url)).await;
        assert_eq!(status, 401, "{query}");
        assert!(body.starts_with(reason), "{query}: {body}");
    }
    // A subset is fine; invalid tags are a 400 as in §2.
    let t = token("application1", SECRET1, good, now() + 60);
    let mut ws = raw(&format!(
        "{}/?token={t}&tags={}",
        server.url,
        encode(r#"{"room":"a"}"#)
    ))
    .await;
    send_text(&mut ws, &format!(r#"{{"message":"x","tags":{{"room":"a"}},"metadata":{{"key":"application1","secret":"{SECRET1}"}}}}"#)).await;
    assert_eq!(recv_text(&mut ws).await, r#""x""#);
    let (status, _) = refused(&format!(
        "{}/?token={t}&tags={}",
        server.url,
        encode(r#"{"room":1.5}"#)
    ))
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_the_cli_mint_tokens_the_server_accepts() {
    let server = signed_server().await;
    let tags = tagcast::Tags::new().with("user", 42);
    let sdk = tagcast::sign_tags(
        "application1",
        SECRET1,
        &tags,
        std::time::Duration::from_secs(60),
    );
    let mut by_sdk = raw(&format!("{}/?token={sdk}", server.url)).await;
    // Through the binary as a user runs it (no TAGCAST_* variable of the test's own).
    let (status, stdout, stderr) = super::cli::run(
        &[
            "token",
            "--key",
            "application2",
            "--secret",
            SECRET2,
            "--tags",
            r#"{"user":42}"#,
            "--ttl",
            "60",
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{status}: {stderr}");
    let cli = stdout.trim();
    assert_eq!(cli.split('.').count(), 3, "one JWT on stdout: {stdout}");
    assert!(!cli.contains(SECRET2), "{stdout}");
    let mut by_cli = raw(&format!("{}/?token={cli}", server.url)).await;
    server.wait_connections(2).await;
    // Both tokens gave their connection the tags {"user":42}: a message for user 42 reaches both.
    let publish = format!(
        r#"{{"message":"for 42","tags":{{"user":42}},"metadata":{{"key":"application1","secret":"{SECRET1}"}}}}"#
    );
    let answer = http_post(server.addr, "/publish", &publish).await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":2}"#)
    );
    assert_eq!(recv_text(&mut by_sdk).await, r#""for 42""#);
    assert_eq!(recv_text(&mut by_cli).await, r#""for 42""#);
}

#[test]
fn signed_tags_need_auth() {
    let err = tagcast_server::Server::builder()
        .config(Config {
            signed_tags: true,
            ..Config::default()
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("--signed-tags needs --auth"), "{err}");
}

/// PROTOCOL.md §13 with signed tags: a retag stays within the token's tags, a retag may carry a
/// newer token, and that token then bounds later retags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retag_commands_stay_within_the_token() {
    let server = signed_server().await;
    let granted = token(
        "application1",
        SECRET1,
        json!({"user": 42, "room": 1}),
        now() + 60,
    );
    let (mut ws, _) = envelope_at(&format!(
        "{}/?token={granted}&tags={}",
        server.url,
        encode(r#"{"user":42}"#)
    ))
    .await;
    let retag = |id: u32, tags: Value, token: Option<&str>| {
        let mut frame = json!({"type": "retag", "id": id, "tags": tags});
        if let Some(t) = token {
            frame["token"] = json!(t);
        }
        frame.to_string()
    };

    // Within the opening token: granted.
    send_text(&mut ws, &retag(1, json!({"user": 42, "room": 1}), None)).await;
    let answer = recv_json(&mut ws).await;
    assert_eq!(
        (&answer["type"], &answer["id"], &answer["tags"]),
        (&json!("tags"), &json!(1), &json!({"room": 1, "user": 42}))
    );
    // Outside it: refused, the tags stay.
    send_text(&mut ws, &retag(2, json!({"room": 2}), None)).await;
    let answer = recv_json(&mut ws).await;
    assert_eq!(
        (&answer["type"], &answer["id"], &answer["code"]),
        (&json!("error"), &json!(2), &json!("unauthorized"))
    );
    assert!(
        answer["error"].as_str().unwrap().starts_with("subset"),
        "{answer}"
    );
    // A newer token for room 2 is accepted, and bounds the next retags.
    let room2 = token("application1", SECRET1, json!({"room": 2}), now() + 60);
    send_text(&mut ws, &retag(3, json!({"room": 2}), Some(&room2))).await;
    assert_eq!(recv_json(&mut ws).await["tags"], json!({"room": 2}));
    send_text(&mut ws, &retag(4, json!({"room": 1}), None)).await;
    assert_eq!(recv_json(&mut ws).await["code"], "unauthorized");
    // A forged token is refused as such.
    let forged = token(
        "application1",
        "not the secret",
        json!({"room": 9}),
        now() + 60,
    );
    send_text(&mut ws, &retag(5, json!({"room": 9}), Some(&forged))).await;
    let answer = recv_json(&mut ws).await;
    assert!(
        answer["error"].as_str().unwrap().starts_with("signature"),
        "{answer}"
    );

    // Routing follows the last granted retag.
    let publish = |room: u32| {
        format!(
            r#"{{"message":"to {room}","tags":{{"room":{room}}},"metadata":{{"key":"application1","secret":"{SECRET1}"}}}}"#
        )
    };
    assert_eq!(
        http_post(server.addr, "/publish", &publish(1))
            .await
            .body
            .trim(),
        r#"{"delivered":0}"#
    );
    assert_eq!(
        http_post(server.addr, "/publish", &publish(2))
            .await
            .body
            .trim(),
        r#"{"delivered":1}"#
    );
    assert_eq!(recv_message(&mut ws).await.0["message"], "to 2");
}

/// README "Signed tags": an `nbf` still in the future is refused as `expired` by the binary's
/// server, and `tagcast listen` says so (exit 1); the same claims without it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_valid_yet_is_refused_as_expired_by_the_binary() {
    let auth = temp_file("auth.yml", AUTH_YAML);
    let server = super::cli::serve(
        &[
            "--auth",
            auth.to_str().unwrap(),
            "--authorize-open",
            "false",
            "--signed-tags",
        ],
        &[],
    )
    .await;
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let later = now() + 3600;
    let early = jwt(
        &header,
        &json!({"key": "application1", "tags": {"user": 42}, "exp": later + 3600, "nbf": later, "iat": now()}),
        SECRET1,
    );
    let (status, body) = refused(&format!("{}/?token={early}", server.url())).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.starts_with("expired"), "{body}");
    let (status, stdout, stderr) = super::cli::run(
        &[
            "listen",
            "--url",
            &format!("{}/?token={early}", server.url()),
        ],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("expired"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&early),
        "the token is not echoed: {stderr}"
    );

    let valid = jwt(
        &header,
        &json!({"key": "application1", "tags": {"user": 42}, "exp": later + 3600, "iat": now()}),
        SECRET1,
    );
    let mut ws = raw(&format!("{}/?token={valid}", server.url())).await;
    server.wait_connections(1).await;
    let publish = format!(
        r#"{{"message":"for 42","tags":{{"user":42}},"metadata":{{"key":"application1","secret":"{SECRET1}"}}}}"#
    );
    let answer = http_post(server.addr(), "/publish", &publish).await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":1}"#)
    );
    assert_eq!(recv_text(&mut ws).await, r#""for 42""#);
}

/// README "The server API": an API retag of a connection opened with a token sends, in its
/// `tags` frame, a token for the new tags (same application and expiry), signed with the
/// application's secret: the client's next handshake with its new tags would be refused
/// (`subset`) with its old token. What the connection may retag to moves the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_retag_sends_a_token_for_the_new_tags() {
    let key = "signed-api-key";
    let server = TestServer::with_config(Config {
        auth_file: Some(temp_file("auth.yml", AUTH_YAML)),
        authorize_open: false,
        signed_tags: true,
        api_key: Some(tagcast_server::api::ApiKey(key.into())),
        ..Config::default()
    })
    .await;
    let exp = now() + 600;
    let own = token("application1", SECRET1, json!({"user": 42, "room": 1}), exp);
    // It listens to part of what its token grants.
    let (mut ws, _) = envelope_at(&format!(
        "{}/?token={own}&tags={}",
        server.url,
        encode(r#"{"user":42}"#)
    ))
    .await;
    let retag = |body: Value| {
        let headers = format!("Authorization: Bearer {key}\r\nContent-Type: application/json\r\n");
        async move {
            let answer = http_request(
                server.addr,
                "POST",
                "/retag",
                &headers,
                body.to_string().as_bytes(),
            )
            .await;
            (answer.status, answer.body)
        }
    };

    let (status, body) = retag(json!({"tags": {"user": 42}, "set": {"room": 2, "seat": 7}})).await;
    assert_eq!(status, 200, "{body}");
    let frame = recv_json(&mut ws).await;
    assert_eq!(frame["type"], "tags", "{frame}");
    assert_eq!(frame["tags"], json!({"user": 42, "room": 2, "seat": 7}));
    let sent = frame["token"].as_str().expect("a token in the tags frame");
    let secret_of = |k: &str| (k == "application1").then_some(SECRET1);
    let claims = tagcast::token::verify(sent, now(), secret_of).expect("signed by application1");
    assert_eq!(claims.key, "application1");
    assert_eq!(claims.exp, exp, "the token's own expiry, not a longer one");
    // What the token granted, moved as the tags were.
    assert_eq!(
        serde_json::to_value(&claims.tags).unwrap(),
        json!({"user": 42, "room": 2, "seat": 7})
    );

    // The next handshake with the new tags: refused with the old token, opened with the new.
    let tags = encode(r#"{"user":42,"room":2,"seat":7}"#);
    let (status, text) = refused(&format!("{}/?token={own}&tags={tags}", server.url)).await;
    assert_eq!(status, 401);
    assert!(text.starts_with("subset"), "{text}");
    let _again = raw(&format!("{}/?token={sent}&tags={tags}", server.url)).await;

    // Its own retags are bounded by what it was moved to.
    send_text(&mut ws, r#"{"type":"retag","id":1,"tags":{"room":1}}"#).await;
    assert_eq!(recv_json(&mut ws).await["code"], "unauthorized");
    send_text(&mut ws, r#"{"type":"retag","id":2,"tags":{"room":2}}"#).await;
    let answer = recv_json(&mut ws).await;
    assert_eq!(
        (&answer["id"], &answer["tags"]),
        (&json!(2), &json!({"room": 2}))
    );
    assert!(answer.get("token").is_none(), "{answer}");

    // `unset` takes the name out of the token too.
    let (status, body) = retag(json!({"tags": {"room": 2}, "unset": ["room"]})).await;
    assert_eq!(status, 200, "{body}");
    let frame = recv_json(&mut ws).await;
    assert_eq!(frame["tags"], json!({}));
    let claims =
        tagcast::token::verify(frame["token"].as_str().unwrap(), now(), secret_of).unwrap();
    assert_eq!(
        serde_json::to_value(&claims.tags).unwrap(),
        json!({"user": 42, "seat": 7})
    );
}
