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
/// The test bed's proxy to the same server: `POST {CONTROL}/cut` drops its connections.
const PROXY: Option<&str> = option_env!("TAGCAST_TEST_PROXY");
const CONTROL: Option<&str> = option_env!("TAGCAST_TEST_CONTROL");

fn server() -> String {
    SERVER
        .expect("TAGCAST_TEST_URL is not set: run scripts/test-browser")
        .to_owned()
}

fn proxy() -> String {
    PROXY
        .expect("TAGCAST_TEST_PROXY is not set: run scripts/test-browser")
        .to_owned()
}

/// `POST`s to a control route of the test bed (`/restart`, `/cut`, `/mend`, ...).
async fn control(route: &str) {
    let control = CONTROL.expect("TAGCAST_TEST_CONTROL is not set: run scripts/test-browser");
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let window = web_sys::window().unwrap();
    let response =
        JsFuture::from(window.fetch_with_str_and_init(&format!("{control}{route}"), &init))
            .await
            .unwrap();
    let response: web_sys::Response = response.dyn_into().unwrap();
    assert!(response.ok(), "{route}: HTTP {}", response.status());
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

/// What `on` handlers received, in order: `(event name, event as JSON text)`.
type Log = Rc<RefCell<Vec<(String, String)>>>;

/// Records the events named in `events` into one log, with `on`; returns the log and the
/// removers `on` returned.
fn record_events(client: &TagcastClient, events: &[&str]) -> (Log, Vec<Function>) {
    let log: Log = Rc::default();
    let mut removers = Vec::new();
    for event in events {
        let (sink, name) = (log.clone(), event.to_string());
        let handler = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let text: String = js_sys::JSON::stringify(&e).unwrap().into();
            sink.borrow_mut().push((name.clone(), text));
        });
        let handler: Function = handler.into_js_value().unchecked_into();
        removers.push(client.on(event, handler.into()).unwrap());
    }
    (log, removers)
}

fn count(log: &Log, event: &str) -> usize {
    log.borrow()
        .iter()
        .filter(|(name, _)| name == event)
        .count()
}

fn parsed(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

async fn send(client: &TagcastClient, message: JsValue, tags: JsValue) -> Result<f64, JsValue> {
    let result = JsFuture::from(client.send(message, Some(tags), None, None)).await?;
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

    // An unreachable server rejects `connect` with `closed` (at once without reconnecting).
    let err = connect(
        "ws://127.0.0.1:9".into(),
        None,
        Some(js(json!({"reconnect": false}))),
    )
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
    let client = connect(
        server(),
        Some(js(json!({"test": "reconnect"}))),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    let states = record_states(&client);
    let got = record_messages(&client);
    let (log, _) = record_events(&client, &["state", "resumed"]);

    control("/restart").await;
    wait_for(
        || states.borrow().iter().any(|s| s == "reconnecting") && client.state() == "open",
        "reconnecting, then open",
    )
    .await;
    // A restarted server is a new history: the client resumes, but cannot be told it has all.
    wait_for(|| count(&log, "resumed") == 1, "the resumed event").await;
    let events: Vec<(String, serde_json::Value)> = log
        .borrow()
        .iter()
        .map(|(name, text)| (name.clone(), parsed(text)))
        .collect();
    assert_eq!(
        events,
        vec![
            (
                "state".to_owned(),
                json!({"state": "reconnecting", "code": 1001, "reason": "server shutting down"})
            ),
            ("state".to_owned(), json!({"state": "open"})),
            (
                "resumed".to_owned(),
                json!({"recovered": false, "missed": 0})
            ),
        ]
    );
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

#[wasm_bindgen_test]
async fn a_dropped_connection_resumes_with_what_it_missed() {
    let tags = json!({"test": "resume"});
    // Through the test bed's proxy, whose connections can be cut while the server stays up.
    let client = connect(
        proxy(),
        Some(js(tags.clone())),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    let publisher = connect(server(), None, Some(auth_options(json!({}))))
        .await
        .unwrap();
    let legacy = record_messages(&client);
    let (log, _) = record_events(&client, &["message", "resumed", "state"]);

    assert_eq!(
        send(&publisher, "m1".into(), js(tags.clone()))
            .await
            .unwrap(),
        1.0
    );
    wait_for(|| count(&log, "message") == 1, "m1").await;

    control("/cut").await;
    wait_for(|| client.state() == "reconnecting", "the drop").await;
    // Away: a send is refused at once, not queued.
    let err = send(&client, "never".into(), js(tags.clone()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "closed");
    assert!(text(&err).contains("not connected"), "{}", text(&err));
    for m in ["m2", "m3", "m4"] {
        send(&publisher, m.into(), js(tags.clone())).await.unwrap();
    }
    control("/mend").await;
    wait_for(|| count(&log, "resumed") == 1, "the resumed event").await;
    assert_eq!(
        send(&publisher, "m5".into(), js(tags.clone()))
            .await
            .unwrap(),
        1.0
    );
    wait_for(|| count(&log, "message") == 5, "m5").await;
    // A marker after m5: once it is here, so is anything the server sent before it (a replay
    // twice, a second resumed event), and the log below is complete.
    assert_eq!(
        send(&publisher, "marker".into(), js(tags.clone()))
            .await
            .unwrap(),
        1.0
    );
    wait_for(|| count(&log, "message") == 6, "the marker").await;

    let events: Vec<(String, serde_json::Value)> = log
        .borrow()
        .iter()
        .map(|(name, text)| (name.clone(), parsed(text)))
        .collect();
    let mut positions = Vec::new();
    let mut seen = Vec::new();
    for (name, event) in &events {
        match name.as_str() {
            "message" => {
                assert_eq!(event["tags"], tags);
                let pos = event["pos"].as_str().expect("a position").to_owned();
                assert!(!positions.contains(&pos), "{pos} twice");
                positions.push(pos);
                seen.push(event["message"].as_str().unwrap().to_owned());
            }
            "resumed" => seen.push(format!(
                "resumed recovered={} missed={}",
                event["recovered"], event["missed"]
            )),
            _ => {
                let state = event["state"].as_str().unwrap();
                if state == "reconnecting" {
                    // The proxy ended the TCP connection: no close frame.
                    assert_eq!(event["code"], 1006, "{event}");
                }
                seen.push(state.to_owned());
            }
        }
    }
    assert_eq!(
        seen,
        [
            "m1",
            "reconnecting",
            "open",
            "m2",
            "m3",
            "m4",
            "resumed recovered=true missed=3",
            "m5",
            "marker"
        ]
    );
    // The older callback gets the same messages, once each, with the position third.
    let legacy: Vec<String> = legacy.borrow().iter().map(|(m, _)| m.clone()).collect();
    assert_eq!(
        legacy,
        [
            r#""m1""#,
            r#""m2""#,
            r#""m3""#,
            r#""m4""#,
            r#""m5""#,
            r#""marker""#
        ]
    );
    client.close();
    publisher.close();
}

#[wasm_bindgen_test]
async fn handlers_come_and_go_and_throwing_ones_are_reported() {
    let tags = json!({"test": "handlers"});
    let client = connect(
        server(),
        Some(js(tags.clone())),
        Some(auth_options(json!({}))),
    )
    .await
    .unwrap();
    // An unknown event is the caller's mistake.
    let err = client
        .on("mesage", Function::new_no_args("").into())
        .err()
        .unwrap();
    assert_eq!(code(&err), "bad_request");
    assert!(text(&err).contains("mesage"), "{}", text(&err));
    let err = client.on("message", "not a function".into()).err().unwrap();
    assert_eq!(code(&err), "bad_request");

    let (log, removers) = record_events(&client, &["message", "error"]);
    // A handler that throws, added twice (kept once), and through the older API too.
    let thrower = Closure::<dyn FnMut(JsValue) -> Result<(), JsValue>>::new(|_: JsValue| {
        Err(JsValue::from_str("boom"))
    });
    let thrower: Function = thrower.into_js_value().unchecked_into();
    client.on("message", thrower.clone().into()).unwrap();
    let remove_thrower = client.on("message", thrower.clone().into()).unwrap();
    client.on_message(thrower.clone());

    send(&client, "one".into(), js(tags.clone())).await.unwrap();
    wait_for(
        || count(&log, "message") == 1 && count(&log, "error") == 2,
        "one",
    )
    .await;
    // Both throws were reported with the event they came from; the other handler still ran.
    for (name, event) in log.borrow().iter().filter(|(n, _)| n == "error") {
        assert_eq!(
            parsed(event),
            json!({"error": "boom", "event": "message"}),
            "{name}"
        );
    }

    // Removed by the function `on` returned, and by `off`: the recording handler stays.
    remove_thrower.call0(&JsValue::NULL).unwrap();
    remove_thrower.call0(&JsValue::NULL).unwrap(); // twice is harmless
    send(&client, "two".into(), js(tags.clone())).await.unwrap();
    // A later marker: once it is here, every error "two" could cause has been reported.
    send(&client, "marker".into(), js(tags.clone()))
        .await
        .unwrap();
    wait_for(|| count(&log, "message") == 3, "two, then the marker").await;
    assert_eq!(
        count(&log, "error"),
        4,
        "only the older callback threw, once for each of the two"
    );

    removers[0].call0(&JsValue::NULL).unwrap();
    client.off("error", &thrower).unwrap(); // not there: nothing happens
    send(&client, "three".into(), js(tags.clone()))
        .await
        .unwrap();
    // The older callback's throw is reported while "three" is handed to the handlers, before
    // the `on` listeners (the same call): once it is here, a listener left would have run.
    wait_for(|| count(&log, "error") == 5, "the older callback's throw").await;
    assert_eq!(count(&log, "message"), 3, "the message handler was removed");
    client.close();
}

/// Calls `connect` with these options; a `getToken` that counts its calls is added when
/// `count_tokens` is set.
fn token_counter() -> (Rc<RefCell<u32>>, Function) {
    let calls = Rc::new(RefCell::new(0));
    let sink = calls.clone();
    let get_token = Closure::<dyn FnMut() -> js_sys::Promise>::new(move || {
        *sink.borrow_mut() += 1;
        js_sys::Promise::resolve(&JsValue::NULL)
    });
    (calls, get_token.into_js_value().unchecked_into())
}

fn with(options: JsValue, name: &str, value: &JsValue) -> JsValue {
    Reflect::set(&options, &name.into(), value).unwrap();
    options
}

#[wasm_bindgen_test]
async fn errors_are_tagcast_error_instances() {
    let err = connect(server(), Some(js(json!({"flag": true}))), None)
        .await
        .err()
        .unwrap();
    assert!(err.is_instance_of::<js_sys::Error>());
    let constructor = Reflect::get(&err, &"constructor".into()).unwrap();
    assert_eq!(
        Reflect::get(&constructor, &"name".into()).unwrap(),
        "TagcastError"
    );
    assert_eq!(Reflect::get(&err, &"name".into()).unwrap(), "TagcastError");
    assert_eq!(code(&err), "bad_request");
    // Not a close: no close code or reason.
    assert!(Reflect::get(&err, &"closeCode".into())
        .unwrap()
        .is_undefined());
}

#[wasm_bindgen_test]
async fn the_first_connect_is_retried_then_gives_up_saying_why() {
    let (calls, get_token) = token_counter();
    let options = js(json!({"maxRetries": 2, "minDelayMs": 10, "maxDelayMs": 40}));
    let options = with(options, "getToken", &get_token);
    let err = connect("ws://127.0.0.1:9".into(), None, Some(options))
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "closed");
    assert!(
        text(&err).starts_with("gave up after 3 attempts: could not open"),
        "{}",
        text(&err)
    );
    assert_eq!(*calls.borrow(), 3, "getToken before each attempt");

    // Without reconnecting, one attempt.
    let (calls, get_token) = token_counter();
    let options = with(js(json!({"reconnect": false})), "getToken", &get_token);
    let err = connect("ws://127.0.0.1:9".into(), None, Some(options))
        .await
        .err()
        .unwrap();
    assert!(text(&err).starts_with("could not open"), "{}", text(&err));
    assert_eq!(*calls.borrow(), 1);

    // A getToken that throws fails the attempt, saying so.
    let throws = Function::new_no_args("throw new Error('no session')");
    let options = with(js(json!({"reconnect": false})), "getToken", &throws);
    let err = connect(server(), None, Some(options)).await.err().unwrap();
    assert_eq!(text(&err), "getToken failed: no session");
}

#[wasm_bindgen_test]
async fn a_first_connect_waits_for_a_server_that_comes() {
    // The proxy refuses connections until it is mended.
    control("/cut").await;
    let (calls, get_token) = token_counter();
    let options = with(
        auth_options(json!({"maxRetries": 1000})),
        "getToken",
        &get_token,
    );
    let tags = json!({"test": "first connect"});
    let connecting = connect(proxy(), Some(js(tags.clone())), Some(options));
    let mend = async {
        wait_for(|| *calls.borrow() >= 2, "a retry").await;
        control("/mend").await;
    };
    let (client, ()) = futures_util::join!(connecting, mend);
    let client = client.unwrap();
    assert_eq!(client.state(), "open");
    let (log, _) = record_events(&client, &["state", "resumed"]);
    let before = *calls.borrow();

    // A drop, then every attempt refused: after 1 + maxRetries attempts the client stops.
    let stopping = connect(proxy(), None, Some(auth_options(json!({"maxRetries": 1}))))
        .await
        .unwrap();
    let (stop_log, _) = record_events(&stopping, &["state"]);
    control("/cut").await;
    wait_for(|| stopping.state() == "closed", "giving up").await;
    let last = parsed(&stop_log.borrow().last().unwrap().1);
    assert_eq!(last["state"], "closed");
    assert_eq!(last["code"], 1006);
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.starts_with("gave up after 2 attempts"), "{reason}");

    // The patient client came back, asking for a fresh token first.
    control("/mend").await;
    wait_for(|| count(&log, "resumed") == 1, "the resume").await;
    assert!(*calls.borrow() > before, "getToken before reconnecting");
    assert_eq!(client.state(), "open");
    assert_eq!(
        stopping.state(),
        "closed",
        "a client that gave up stays closed"
    );
    client.close();
}

#[wasm_bindgen_test]
async fn set_tags_moves_the_connection_in_place() {
    let client = connect(
        server(),
        Some(js(json!({"room": "t1"}))),
        Some(auth_options(json!({"maxTags": 2}))),
    )
    .await
    .unwrap();
    let publisher = connect(server(), None, Some(auth_options(json!({}))))
        .await
        .unwrap();
    let (log, _) = record_events(&client, &["message", "tags", "state"]);
    assert_eq!(
        js_sys::JSON::stringify(&client.tags()).unwrap(),
        r#"{"room":"t1"}"#
    );

    let new = JsFuture::from(client.set_tags(js(json!({"room": "t2", "user": 7})), None))
        .await
        .unwrap();
    assert_eq!(
        parsed(&js_sys::JSON::stringify(&new).unwrap().as_string().unwrap()),
        json!({"room": "t2", "user": 7})
    );
    let tags_event = parsed(&log.borrow()[0].1);
    assert_eq!(log.borrow()[0].0, "tags");
    assert_eq!(tags_event["tags"], json!({"room": "t2", "user": 7}));
    assert!(tags_event["pos"].is_string(), "{tags_event}");
    assert_eq!(
        js_sys::JSON::stringify(&client.tags()).unwrap(),
        r#"{"room":"t2","user":7}"#
    );
    // Routed by the new tags, without a reconnect.
    assert_eq!(
        send(&publisher, "old".into(), js(json!({"room": "t1"})))
            .await
            .unwrap(),
        0.0
    );
    assert_eq!(
        send(&publisher, "new".into(), js(json!({"user": 7})))
            .await
            .unwrap(),
        1.0
    );
    wait_for(|| count(&log, "message") == 1, "the delivery").await;
    assert_eq!(count(&log, "state"), 0, "no reconnect");

    // Over `maxTags`, or not tags: refused before the network, the tags stay.
    let err = JsFuture::from(client.set_tags(js(json!({"a": 1, "b": 2, "c": 3})), None))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "bad_request");
    assert_eq!(text(&err), "invalid tags: too many tags: 3, the limit is 2");
    let err = JsFuture::from(client.set_tags(js(json!({"a": true})), None))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "bad_request");
    assert_eq!(count(&log, "tags"), 1);

    // `validateTags` takes the same limit.
    assert!(tagcast_wasm::validate_tags(js(json!({"a": 1, "b": 2})), Some(2.into())).is_ok());
    let err = tagcast_wasm::validate_tags(js(json!({"a": 1, "b": 2})), Some(1.into())).unwrap_err();
    assert_eq!(code(&err), "bad_request");
    client.close();
    publisher.close();
}
