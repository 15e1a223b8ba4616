//! # tagcast-server: the Tagcast server as a library
//!
//! The `tagcast` binary is a thin shell over this crate; embed it to plug in your own
//! [`MessageParser`] or [`AuthManager`], as the
//! original server's `server.php` did with PHP objects.
//!
//! Layout, following one request: [`http`] (the only module that names axum: upgrade, API,
//! probes) hands a WebSocket handshake to [`handshake`] (who may open, with which tags), then
//! the connection's task in [`connection`] reads its requests; [`router`] parses, authorizes,
//! puts each one on the [`cluster`] bus and delivers it through [`registry`] (open connections
//! by tags) into each recipient's [`outbox`] (queue, or a direct write into its socket).
//! [`config`] holds every option, [`auth`] who may open and send, [`refusal`] and [`close`] the
//! codes that tell a refusal.
//!
//! [`Server::builder`] is the entry point.

pub mod api;
pub mod auth;
pub mod close;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod handshake;
pub mod history;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod refusal;
pub mod registry;
pub mod router;
#[cfg(test)]
mod testing;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tagcast::{JsonParser, MessageParser, SchemaParser, StringParser};

use crate::auth::{AllowAll, ApplicationsAuthManager, AuthManager};
use crate::cluster::local::LocalBus;
use crate::cluster::redis::RedisBus;
use crate::cluster::Bus;
pub use crate::config::{Config, ConfigError, MessageMode};
use crate::connection::Settings;
use crate::handshake::Admission;
use crate::http::AppState;
use crate::registry::Registry;
use crate::router::{Fanout, Router};

/// How long a shutdown waits for connections to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A configured server, ready to [`run`](Server::run) on a listener.
pub struct Server {
    state: Arc<AppState>,
    /// Whether the bus was started (by [`Server::connect_cluster`] or [`Server::run`]).
    bus_started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Server`]: a [`Config`], and optionally a message parser and an auth manager that
/// replace what the configuration would choose.
#[derive(Default)]
pub struct ServerBuilder {
    config: Config,
    parser: Option<Arc<dyn MessageParser>>,
    auth: Option<Arc<dyn AuthManager>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Uses this configuration (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Parses messages with `parser` instead of `config.messages`.
    pub fn message_parser(mut self, parser: impl MessageParser) -> Self {
        self.parser = Some(Arc::new(parser));
        self
    }

    /// Authorizes with `auth` instead of `config.auth_file`.
    pub fn auth_manager(mut self, auth: impl AuthManager) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Validates the configuration and loads its files (auth YAML, JSON Schema).
    pub fn build(self) -> Result<Server, ConfigError> {
        let config = self.config;
        config.validate()?;
        let parser: Arc<dyn MessageParser> = match self.parser {
            Some(p) => p,
            None => match &config.messages {
                MessageMode::String => Arc::new(StringParser),
                MessageMode::Json => Arc::new(JsonParser),
                MessageMode::Schema(path) => Arc::new(load_schema(path)?),
            },
        };
        let tokens =
            match (&config.auth_file, config.signed_tags) {
                (Some(path), true) => Some(Arc::new(ApplicationsAuthManager::from_file(
                    path,
                    config.authorize_open,
                )?)),
                (None, true) => return Err(ConfigError::Invalid(
                    "--signed-tags needs --auth: tokens are signed with the applications' secrets"
                        .into(),
                )),
                _ => None,
            };
        let auth: Arc<dyn AuthManager> = match self.auth {
            Some(a) => a,
            None => match &config.auth_file {
                Some(path) => Arc::new(ApplicationsAuthManager::from_file(
                    path,
                    config.authorize_open,
                )?),
                None => Arc::new(AllowAll),
            },
        };
        let tls = match &config.tls {
            Some(files) => Some(tls::load(&files.cert, &files.key)?),
            None => None,
        };
        let bus: Arc<dyn Bus> = match &config.redis {
            Some(url) => Arc::new(RedisBus::new(url, &config.redis_channel)?),
            None => Arc::new(LocalBus),
        };
        let metrics = Arc::new(metrics::Metrics::new());
        let registry = Arc::new(Registry::new(config.direct_writes));
        let router = Arc::new(Router {
            parser,
            auth: auth.clone(),
            max_tags: config.max_tags,
            metrics: metrics.clone(),
            bus: bus.clone(),
            fanout: Arc::new(
                Fanout::new(
                    registry.clone(),
                    metrics.clone(),
                    Some(history::Limits {
                        requests: config.history,
                        bytes: config.history_bytes,
                        ttl: config.history_ttl,
                    }),
                )
                .with_tokens(tokens.clone()),
            ),
            tokens: tokens.clone(),
            refusals: Default::default(),
        });
        let static_files = match &config.static_dir {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(ConfigError::Invalid(format!(
                        "--static {}: not a readable folder",
                        dir.display()
                    )));
                }
                Some(tower_http::services::ServeDir::new(dir))
            }
            None => None,
        };
        let admission = Admission {
            registry: registry.clone(),
            max_connections: config.max_connections,
            max_tags: config.max_tags,
            auth,
            tokens,
        };
        let settings = Settings {
            rate_limit: config.rate_limit,
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
        };
        Ok(Server {
            state: Arc::new(AppState {
                config,
                registry,
                router,
                admission,
                settings,
                static_files,
                metrics,
                tls,
                bus,
                draining: Default::default(),
            }),
            bus_started: Default::default(),
        })
    }
}

fn load_schema(path: &std::path::Path) -> Result<SchemaParser, ConfigError> {
    let error = |reason: String| ConfigError::SchemaFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(format!("cannot read the schema file: {e}")))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| error(format!("not valid JSON: {e}")))?;
    SchemaParser::new(&schema).map_err(|e| error(format!("not a valid JSON Schema: {e}")))
}

impl Server {
    /// Starts building a server: give it a [`Config`], and optionally your own message parser
    /// or auth manager, then [`run`](Server::run) it on a listener until a shutdown future ends.
    ///
    /// ```
    /// use tagcast::{Tags, WebSocketClient, WebSocketRequest};
    /// use tagcast_server::{Config, MessageMode, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::builder()
    ///     .config(Config { messages: MessageMode::Json, ..Config::default() })
    ///     .message_parser(tagcast::JsonParser) // or your own MessageParser
    ///     .build()?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let url = format!("ws://{}", listener.local_addr()?);
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let running = tokio::spawn(server.run(listener, async { let _ = stopped.await; }));
    ///
    /// let client = WebSocketClient::connect(url, Tags::new().with("user", 42)).await?;
    /// let request = WebSocketRequest::new(serde_json::json!({"text": "hi"}))
    ///     .with_tags(Tags::new().with("user", "42"));
    /// assert_eq!(client.send(request).await?, 1);
    ///
    /// stop.send(()).unwrap(); // closes every connection with 1001
    /// running.await??;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A handle that drains the server (see [`Drainer::drain`]), for a graceful shutdown.
    pub fn drainer(&self) -> Drainer {
        Drainer {
            state: self.state.clone(),
        }
    }

    /// The open connections (for embedding applications and tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    /// Connects to the cluster's Redis (`--redis`); an unreachable Redis is a configuration
    /// error. [`run`](Server::run) does it when it was not done before; call it first to tell
    /// a bad Redis apart from other failures. Without `--redis` it does nothing. When it returns
    /// `Ok`, the bus is up.
    pub async fn connect_cluster(&self) -> Result<(), ConfigError> {
        use std::sync::atomic::Ordering;
        if self.bus_started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let started = self
            .state
            .bus
            .clone()
            .start(self.state.router.fanout.clone())
            .await;
        if started.is_err() {
            self.bus_started.store(false, Ordering::Release);
        }
        Ok(started?)
    }

    /// Serves on `listener` until `shutdown` completes, then closes every connection with 1001
    /// and returns once they are closed (or after a 5 s grace).
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.connect_cluster()
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e))?;
        let addr = listener.local_addr()?;
        let scheme = if self.state.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        tracing::info!("listening on {addr} ({scheme}://)");
        let registry = self.state.registry.clone();
        let app = http::app(self.state.clone()).into_make_service_with_connect_info::<http::Peer>();
        let closing = registry.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: closing every connection with 1001");
            closing.close_all();
        };
        match &self.state.tls {
            Some(config) => {
                let listener = tls::TlsListener::new(
                    listener,
                    config.clone(),
                    self.state.config.handshake_timeout,
                )?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await?;
            }
            None => {
                axum::serve(
                    http::PlainListener(listener, self.state.config.handshake_timeout),
                    app,
                )
                .with_graceful_shutdown(signal)
                .await?;
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Drains a running server: `/readyz` and new WebSocket handshakes answer 503, and open
/// connections may finish until none is left or the grace ends.
#[derive(Clone)]
pub struct Drainer {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Drainer")
    }
}

impl Drainer {
    /// Starts draining and completes when no connection is left or `grace` has passed: use it
    /// in the shutdown future given to [`Server::run`], which then closes what is left with 1001.
    pub async fn drain(&self, grace: Duration) {
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(
            connections = self.state.registry.len(),
            "draining: refusing new connections for up to {} s",
            grace.as_secs_f64()
        );
        let deadline = tokio::time::Instant::now() + grace;
        while !self.state.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Builds a server from `config` and runs it on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let server = Server::builder().config(config).build()?;
    server.run(listener, shutdown).await?;
    Ok(())
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration cannot run.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}
