//! The browser SDK in headless Chromium against a real server (`tagcast-testbed`, started by
//! `scripts/test-browser`, which passes its addresses at build time).

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Reflect};
use serde_json::json;
use tagcast_wasm::{connect, TagcastClient};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const SERVER: Option<&str> = option_env!("TAGCAST_TEST_URL");
const CONTROL: Option<&str> = option_env!("TAGCAST_TEST_CONTROL");

fn server() -> String {
    SERVER
        .expect("TAGCAST_TEST_URL is not set: run scripts/test-browser")
        .to_owned()
}

fn js(value: serde_json::Value) -> JsValue {
    js_sys::JSON::parse(&value.to_string()).unwrap()
}

fn auth_options(extra: serde_json::Value) -> JsValue {
    let mut options = json!({
        "defaultMetadata": {"key": "application1", "secret": "B4ajW3P7jfWEYPZsQV8mnteHg97G67uW"},
        "minDelayMs": 50,
        "maxDelayMs": 300
    });
    if let (Some(o), Some(e)) = (options.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    js(options)
}

async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        web_sys::window()
            .unwrap()
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .unwrap();
    });
    JsFuture::from(promise).await.unwrap();
}

/// Collects what a client receives: `(message, tags)` as JSON text.
fn record_messages(client: &TagcastClient) -> Rc<RefCell<Vec<(String, String)>>> {
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    let callback = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |m: JsValue, t: JsValue| {
        let m: String = js_sys::JSON::stringify(&m).unwrap().into();
        let t: String = js_sys::JSON::stringify(&t).unwrap().into();
        sink.borrow_mut().push((m, t));
    });
    client.on_message(callback.as_ref().unchecked_ref::<Function>().clone());
    callback.forget();
    got
}

fn record_states(client: &TagcastClient) -> Rc<RefCell<Vec<String>>> {
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    let callback = Closure::<dyn FnMut(JsValue)>::new(move |s: JsValue| {
        sink.borrow_mut().push(s.as_string().unwrap());
    });
    client.on_state_change(callback.as_ref().unchecked_ref::<Function>().clone());
    callback.forget();
    got
}

async fn send(client: &TagcastClient, message: JsValue, tags: JsValue) -> Result<f64, JsValue> {
    let result = JsFuture::from(client.send(message, Some(tags), None)).await?;
    Ok(Reflect::get(&result, &"delivered".into())?
        .as_f64()
        .unwrap())
}

fn code(error: &JsValue) -> String {
    Reflect::get(error, &"code".into())
        .unwrap()
        .as_string()
        .unwrap_or_default()
}

fn text(error: &JsValue) -> String {
    Reflect::get(error, &"message".into())
        .unwrap()
        .as_string()
        .unwrap_or_default()
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if done() {
            return;
        }
        sleep(50).await;
    }
    panic!("timed out waiting for {what}");
}

#[wasm_bindgen_test]
async fn connect_send_and_ack() {
    let client = connect(
        server(),
        Some(js(json!({"test": "ack"}))),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    assert_eq!(client.state(), "open");
    let got = record_messages(&client);
    let delivered = send(&client, "Bonjour !".into(), js(json!({"test": "ack"})))
        .await
        .unwrap();
    assert_eq!(delivered, 1.0);
    wait_for(|| !got.borrow().is_empty(), "the delivery").await;
    assert_eq!(
        got.borrow()[0],
        ("\"Bonjour !\"".to_owned(), r#"{"test":"ack"}"#.to_owned())
    );
    client.close();
    assert_eq!(client.state(), "closed");
}

#[wasm_bindgen_test]
async fn routing_between_two_clients() {
    let fr = connect(
        server(),
        Some(js(json!({"room": "r1", "language": "FR"}))),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    let en = connect(
        server(),
        Some(js(json!({"room": "r1", "language": "EN"}))),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    let fr_got = record_messages(&fr);
    let en_got = record_messages(&en);
    let delivered = send(
        &en,
        "Salut".into(),
        js(json!({"room": "r1", "language": "FR"})),
    )
    .await
    .unwrap();
    assert_eq!(delivered, 1.0);
    // An integer tag equals its decimal text, as on the server.
    let both = send(&fr, js(json!("everyone in r1")), js(json!({"room": "r1"})))
        .await
        .unwrap();
    assert_eq!(both, 2.0);
    wait_for(
        || fr_got.borrow().len() == 2 && en_got.borrow().len() == 1,
        "deliveries",
    )
    .await;
    assert_eq!(fr_got.borrow()[0].0, "\"Salut\"");
    assert_eq!(en_got.borrow()[0].0, "\"everyone in r1\"");
    fr.close();
    en.close();
}

#[wasm_bindgen_test]
async fn error_codes() {
    // A bad tag fails in the browser, before the network.
    let err = connect(server(), Some(js(json!({"flag": true}))), None)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "bad_request");
    assert!(text(&err).contains("flag"), "{}", text(&err));

    let client = connect(
        server(),
        Some(js(json!({"test": "errors"}))),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    // The server refuses a non-string message (string mode) with its own text.
    let err = send(&client, js(json!({"a": 1})), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "bad_request");
    assert!(text(&err).contains("is not a string"), "{}", text(&err));
    let err = send(&client, "x".into(), js(json!({"n": 1.5})))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "bad_request");

    // Without credentials in metadata the server refuses the send.
    let anonymous = connect(server(), Some(js(json!({"test": "errors"}))), None)
        .await
        .unwrap();
    let err = send(&anonymous, "hi".into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "unauthorized");
    assert!(text(&err).contains("key"), "{}", text(&err));
    // The connection stays usable after an error.
    assert_eq!(anonymous.state(), "open");

    // After close, sends reject with `closed`.
    client.close();
    let err = send(&client, "late".into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "closed");
    anonymous.close();

    // An unreachable server rejects `connect` with `closed`.
    let err = connect("ws://127.0.0.1:9".into(), None, None)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "closed");
}

#[wasm_bindgen_test]
async fn the_handshake_url_carries_any_tags_exactly() {
    // Spaces, quotes, `&`, `+`, `#` and non-ASCII text: the server must read the same tags back,
    // so a send to exactly those tags reaches this connection.
    let tags = json!({"name": "Jean \"JD\" Dupont", "ville": "Besançon", "math": "1+1=2 & #3"});
    // The server's URL with a query of its own: it stays, the pairs follow. (No fragment here:
    // browsers refuse a WebSocket URL that has one.)
    let client = connect(
        format!("{}/?extra=1", server().trim_end_matches('/')),
        Some(js(tags.clone())),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    let got = record_messages(&client);
    let delivered = send(&client, "exact".into(), js(tags)).await.unwrap();
    assert_eq!(delivered, 1.0);
    wait_for(|| !got.borrow().is_empty(), "the delivery").await;
    client.close();

    // A URL that is not ws:// or wss:// is the caller's mistake, found before the network.
    for bad in ["http://127.0.0.1:9", "127.0.0.1:9", "not a url"] {
        let err = connect(bad.into(), None, None).await.err().unwrap();
        assert_eq!(code(&err), "bad_request", "{bad}");
        assert!(text(&err).contains("invalid URL"), "{}", text(&err));
    }
}

#[wasm_bindgen_test]
async fn reconnects_after_the_server_restarts() {
    let control = CONTROL.expect("TAGCAST_TEST_CONTROL is not set: run scripts/test-browser");
    let client = connect(
        server(),
        Some(js(json!({"test": "reconnect"}))),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    let states = record_states(&client);
    let got = record_messages(&client);

    let window = web_sys::window().unwrap();
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    JsFuture::from(window.fetch_with_str_and_init(&format!("{control}/restart"), &init))
        .await
        .unwrap();
    wait_for(
        || states.borrow().iter().any(|s| s == "reconnecting") && client.state() == "open",
        "reconnecting, then open",
    )
    .await;
    // Same tags after the reconnect.
    let delivered = send(&client, "back".into(), js(json!({"test": "reconnect"})))
        .await
        .unwrap();
    assert_eq!(delivered, 1.0);
    wait_for(
        || !got.borrow().is_empty(),
        "the delivery after reconnecting",
    )
    .await;
    client.close();
}
