//! TLS (`--tls-cert`, `--tls-key`): `wss://` and `https://` with a self-signed certificate made
//! by rcgen; a bad pair stops the server at start naming the file.

use tagcast::{Tags, WebSocketClient, WebSocketRequest};
use tagcast_server::config::TlsFiles;
use tagcast_server::{Config, Server};

use super::util::*;

fn self_signed() -> (TlsFiles, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = pem("CERTIFICATE", certified.cert.der());
    let cert = temp_file("cert.pem", &cert_pem);
    let key = temp_file(
        "key.pem",
        &pem("PRIVATE KEY", &certified.signing_key.serialize_der()),
    );
    (TlsFiles { cert, key }, cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_talks_wss() {
    let (files, cert_pem) = self_signed();
    let server = TestServer::with_config(Config {
        tls: Some(files),
        ..Config::default()
    })
    .await;
    let url = format!("wss://localhost:{}", server.addr.port());
    let listener = WebSocketClient::builder(url.clone())
        .tags(Tags::new().with("language", "FR"))
        .trust_pem(cert_pem.as_bytes())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let sender = WebSocketClient::builder(url.clone())
        .trust_pem(cert_pem.as_bytes())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = WebSocketRequest::new("secure").with_tags(Tags::new().with("language", "FR"));
    assert_eq!(sender.send(request).await.unwrap(), 1);
    assert_eq!(listener.recv().await.unwrap().message, "secure");

    // Without trusting the certificate, the client refuses the server.
    let err = WebSocketClient::connect(url, Tags::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Plain ws:// to a TLS port does not open.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}", server.addr))
            .await
            .is_err()
    );
    listener.close().await;
    sender.close().await;
}

#[test]
fn a_bad_tls_pair_is_a_configuration_error_naming_the_file() {
    let (good, _) = self_signed();
    let (other, _) = self_signed();
    let not_pem = temp_file("garbage.pem", "not a certificate");
    let missing = std::path::PathBuf::from("/nonexistent/tagcast/cert.pem");
    for (files, named) in [
        (
            TlsFiles {
                cert: missing.clone(),
                key: good.key.clone(),
            },
            missing.clone(),
        ),
        (
            TlsFiles {
                cert: not_pem.clone(),
                key: good.key.clone(),
            },
            not_pem.clone(),
        ),
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: not_pem.clone(),
            },
            not_pem.clone(),
        ),
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: other.key.clone(),
            },
            other.key.clone(),
        ),
    ] {
        let err = Server::builder()
            .config(Config {
                tls: Some(files),
                ..Config::default()
            })
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&named.display().to_string()), "{err}");
    }
}

/// The PEM text of a DER block (rcgen's own `pem` feature would bring a second base64).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
