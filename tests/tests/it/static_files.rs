//! `--static DIR` (PROTOCOL.md §2): a folder served on plain GET requests, index.html at `/`,
//! content types including `application/wasm`, no listing, nothing outside the folder.

use tagcast_server::Config;

use super::util::*;

fn site() -> std::path::PathBuf {
    let index = temp_file("site/index.html", "<!doctype html><title>demo</title>");
    let root = index.parent().unwrap().to_owned();
    std::fs::write(root.join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(root.join("app.js"), "export {}").unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    // A file next to the folder, which must stay out of reach.
    std::fs::write(root.parent().unwrap().join("secret.txt"), "top secret").unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_folder_is_served_beside_websockets() {
    let root = site();
    let server = TestServer::with_config(Config {
        static_dir: Some(root),
        ..Config::default()
    })
    .await;

    let index = http_get(server.addr, "/", "").await;
    assert_eq!(index.status, 200);
    assert!(index
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(index.body.contains("<title>demo</title>"));

    let wasm = http_get(server.addr, "/app.wasm", "").await;
    assert_eq!(wasm.status, 200);
    assert_eq!(wasm.header("content-type"), Some("application/wasm"));
    let js = http_get(server.addr, "/app.js", "").await;
    assert!(js.header("content-type").unwrap().contains("javascript"));

    assert_eq!(
        http_get(server.addr, "/empty/", "").await.status,
        404,
        "no listing"
    );
    assert_eq!(http_get(server.addr, "/missing.html", "").await.status, 404);
    for escape in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/empty/../../secret.txt",
    ] {
        let answer = http_get(server.addr, escape, "").await;
        assert_ne!(answer.status, 200, "{escape}");
        assert!(!answer.body.contains("top secret"), "{escape}");
    }
    assert_eq!(
        http_get(server.addr, "/healthz", "").await.body.trim(),
        "ok"
    );

    // WebSockets still open at `/` and any path.
    let mut ws = raw(&format!("{}/", server.url)).await;
    send_text(&mut ws, r#"{"message":"hi"}"#).await;
    assert_eq!(recv_text(&mut ws).await, r#""hi""#);
}

#[test]
fn a_missing_static_folder_is_a_configuration_error() {
    let err = tagcast_server::Server::builder()
        .config(Config {
            static_dir: Some("/nonexistent/tagcast-demo".into()),
            ..Config::default()
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tagcast-demo"), "{err}");
}
