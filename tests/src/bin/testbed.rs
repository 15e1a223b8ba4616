//! `tagcast-testbed`: a Tagcast server for browser tests, with a control port to stop and start
//! it on the same address (for reconnect tests), and a TCP proxy in front of it whose
//! connections can be cut while the server (and its history) stays up (for resume tests).
//!
//! The server's listening socket is bound once and kept open for the test bed's whole life
//! (issue 17: a released port may be taken by anyone before it is bound again): each server run
//! gets a clone of it. While the server is stopped, the kernel still completes connections to
//! it; they wait in the listen backlog and the next run serves them (or they end when the test
//! bed exits), so a stopped server looks slow, not refusing. `/cut` is for refusing.
//!
//! Prints three lines on stdout, `server ws://127.0.0.1:PORT`, `proxy ws://127.0.0.1:PORT` and
//! `control http://127.0.0.1:PORT`, then serves until stdin closes. The server authorizes
//! opening for anyone and sends with the applications of `AUTH_YAML` (so `unauthorized` can be
//! tested). Control routes, CORS-open: `POST /stop`, `POST /start`, `POST /restart`; `POST /cut`
//! drops every connection through the proxy (no close frame: the TCP connection just ends, on
//! both sides) and refuses new ones until `POST /mend`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderValue, Method};
use axum::routing::post;
use tagcast_server::auth::ApplicationsAuthManager;
use tagcast_server::Server;
use tokio::sync::{oneshot, watch, Mutex};

/// The applications of the browser tests (the same as PROTOCOL.md §5's example).
const AUTH_YAML: &str = "applications:
  - key: application1
    secret: B4ajW3P7jfWEYPZsQV8mnteHg97G67uW
    authorizeOpen: true
  - key: application2
    secret: 33yLWdynhaqm9tYjDFKf8gB8zmAPKdDP
    authorizeOpen: false
";

/// The server currently running, if any.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

struct Testbed {
    /// The server's listening socket, bound once: every run serves a clone of it.
    listener: std::net::TcpListener,
    running: Mutex<Option<Running>>,
}

impl Testbed {
    async fn start(&self) -> Result<(), String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let auth =
            ApplicationsAuthManager::from_yaml(AUTH_YAML, true).map_err(|e| e.to_string())?;
        let server = Server::builder()
            .auth_manager(auth)
            .build()
            .map_err(|e| e.to_string())?;
        // A new descriptor for the same socket: the run closes it when it ends, the socket stays.
        let listener = self
            .listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("cannot reuse the server's socket: {e}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        *running = Some(Running { stop, task });
        Ok(())
    }

    async fn stop(&self) {
        if let Some(r) = self.running.lock().await.take() {
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
    }
}

/// The TCP proxy in front of the server.
struct Proxy {
    /// While set, new connections are dropped at once (their handshake fails).
    refusing: AtomicBool,
    /// Bumped by a cut: every proxied connection watches it and ends.
    cuts: watch::Sender<u64>,
}

impl Proxy {
    /// Accepts on `listener` and forwards each connection to `upstream`.
    fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, upstream: SocketAddr) {
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if self.refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = self.cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
    }

    /// Drops every proxied connection and refuses new ones.
    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts new connections again.
    fn mend(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server's socket, for every run; non-blocking, as tokio needs (clones share the mode).
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let testbed = Arc::new(Testbed {
        listener,
        running: Mutex::new(None),
    });
    testbed.start().await?;

    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let proxy = Arc::new(Proxy {
        refusing: AtomicBool::new(false),
        cuts: watch::channel(0).0,
    });
    proxy.clone().serve(proxy_listener, addr);

    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = control.local_addr()?;
    let (a, b, c) = (testbed.clone(), testbed.clone(), testbed.clone());
    let (cutting, mending) = (proxy.clone(), proxy);
    let app = axum::Router::new()
        .route(
            "/stop",
            post(move || async move {
                a.stop().await;
                "stopped"
            }),
        )
        .route(
            "/start",
            post(move || async move { b.start().await.map(|()| "started") }),
        )
        .route(
            "/restart",
            post(move || async move {
                c.stop().await;
                c.start().await.map(|()| "restarted")
            }),
        )
        .route(
            "/cut",
            post(move || async move {
                cutting.cut();
                "cut"
            }),
        )
        .route(
            "/mend",
            post(move || async move {
                mending.mend();
                "mended"
            }),
        )
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                // Test pages are served from another origin (the test runner's).
                let headers = response.headers_mut();
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(Method::POST.as_str()),
                );
                response
            },
        ));

    let mut out = std::io::stdout().lock();
    writeln!(out, "server ws://{addr}")?;
    writeln!(out, "proxy ws://{proxy_addr}")?;
    writeln!(out, "control http://{control_addr}")?;
    out.flush()?;
    drop(out);

    // Serve until whoever started us closes our stdin.
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    };
    axum::serve(control, app)
        .with_graceful_shutdown(stdin_closed)
        .await?;
    testbed.stop().await;
    Ok(())
}
