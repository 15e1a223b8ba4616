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

/// `tagcast dev-cert`, `tagcast serve --tls-cert --tls-key` on the command line, and everything
/// on that one port over TLS: the probes and `/metrics` over `https://`, `POST /publish` over
/// `https://` (raw and with `tagcast send`), and `TAGCAST_CA_CERT` (the variable form of
/// `--ca-cert`) for `send` and `listen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_probes_metrics_and_publish_from_the_command_line() {
    let dir = temp_file("dev-cert/.keep", "");
    let dir = dir.parent().unwrap();
    let (status, _, stderr) =
        super::cli::run(&["dev-cert", "--out", dir.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = super::cli::serve(&["--tls-cert", cert, "--tls-key", key], &[]).await;
    let port = server.addr().port();

    for probe in ["/healthz", "/livez", "/readyz"] {
        let answer = https_request(port, &cert_pem, "GET", probe, "").await;
        assert_eq!(answer.status, 200, "{probe}: {}", answer.body);
    }
    let answer = https_request(port, &cert_pem, "GET", "/healthz", "").await;
    assert_eq!(answer.body.trim(), "ok");
    let metrics = https_request(port, &cert_pem, "GET", "/metrics", "").await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert_eq!(sample(&metrics.body, "tagcast_connections"), 0.0);
    assert!(
        metrics.body.trim_end().ends_with("# EOF"),
        "{}",
        metrics.body
    );

    // `listen` trusts the certificate through TAGCAST_CA_CERT alone.
    let url = format!("wss://localhost:{port}");
    let mut listener = super::cli::spawn_tagcast(
        &["listen", "--url", &url, "--tags", r#"{"room":1}"#],
        &[("TAGCAST_CA_CERT", cert)],
    );
    listener.stderr_line_with("connected").await;
    let answer = https_request(
        port,
        &cert_pem,
        "POST",
        "/publish",
        r#"{"message":"over https","tags":{"room":1}}"#,
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (200, r#"{"delivered":1}"#)
    );
    assert_eq!(listener.next_stdout_line().await, r#""over https""#);
    let metrics = https_request(port, &cert_pem, "GET", "/metrics", "").await;
    assert_eq!(sample(&metrics.body, "tagcast_connections"), 1.0);

    // `send` over https:// with the variable too.
    let https = format!("https://localhost:{port}");
    let (status, stdout, stderr) = super::cli::run(
        &[
            "send",
            "--url",
            &https,
            "--tags",
            r#"{"room":1}"#,
            "sent by send",
        ],
        &[("TAGCAST_CA_CERT", cert)],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "delivered 1");
    assert_eq!(listener.next_stdout_line().await, r#""sent by send""#);
    // Without it the self-signed certificate is refused: exit 1, nothing sent.
    let (status, stdout, stderr) = super::cli::run(
        &[
            "send",
            "--url",
            &https,
            "--tags",
            r#"{"room":1}"#,
            "untrusted",
        ],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "says why: {stderr}"
    );
    // The listener's next line is a marker sent after: the untrusted send reached nobody.
    let answer = https_request(
        port,
        &cert_pem,
        "POST",
        "/publish",
        r#"{"message":"marker","tags":{"room":1}}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(listener.next_stdout_line().await, r#""marker""#);
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port` as `localhost`, trusting only `ca_pem`;
/// the answer is read until the server closes (`Connection: close`).
async fn https_request(
    port: u16,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: &str,
) -> HttpAnswer {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        // A server may end TLS without close_notify after a `Connection: close` answer.
        let _ = tls.read_to_end(&mut bytes).await;
        bytes
    };
    let bytes = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an https answer in time");
    parse_http_answer(&bytes, true)
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&bytes)))
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
