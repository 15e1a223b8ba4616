//! Every option of `tagcast serve` in one struct, validated once at start.

use std::net::IpAddr;
use std::path::PathBuf;

use tagcast::tags::DEFAULT_MAX_TAGS;

/// How the server reads a request's `message` (PROTOCOL.md §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MessageMode {
    /// Only JSON strings, as the original server (the default).
    #[default]
    String,
    /// Any JSON value.
    Json,
    /// Values valid against the JSON Schema in this file.
    Schema(PathBuf),
}

/// The configuration of one server. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on (`--host`, default `0.0.0.0`).
    pub host: IpAddr,
    /// Port to listen on (`--port`, default 8080; 0 lets the OS pick).
    pub port: u16,
    /// How `message` is parsed (`--messages`, `--message-schema`).
    pub messages: MessageMode,
    /// The applications YAML file (`--auth`); `None` authorizes everything.
    pub auth_file: Option<PathBuf>,
    /// Whether anyone may open a connection when `auth_file` is set (`--authorize-open`).
    pub authorize_open: bool,
    /// Outgoing queue length of each connection, in messages (`--queue-size`).
    pub queue_size: usize,
    /// Largest accepted message, in bytes, after fragments are joined (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Most open WebSocket connections; `None` is unlimited (`--max-connections`).
    pub max_connections: Option<usize>,
    /// Most tags of a connection or a request (`--max-tags`).
    pub max_tags: usize,
    /// A folder served on plain GET requests, `index.html` at `/` (`--static`).
    pub static_dir: Option<PathBuf>,
    /// PEM certificate chain and private key: serve `wss://` and `https://` (`--tls-cert`,
    /// `--tls-key`).
    pub tls: Option<TlsFiles>,
    /// The Redis of the cluster (`--redis redis://HOST:PORT`); `None` for a lone node.
    pub redis: Option<String>,
    /// The pub/sub channel shared by the nodes of one cluster (`--redis-channel`).
    pub redis_channel: String,
    /// How long a connection may stay silent before the server pings it (`--ping-interval`);
    /// `None` never pings.
    pub ping_interval: Option<std::time::Duration>,
    /// How long a connection may stay silent, pings unanswered, before it is dropped
    /// (`--idle-timeout`); `None` never drops.
    pub idle_timeout: Option<std::time::Duration>,
    /// How long a client may take to send its request head, TLS handshake apart
    /// (`--handshake-timeout`).
    pub handshake_timeout: std::time::Duration,
    /// Connections' tags come from tokens signed by an application (`--signed-tags`, needs
    /// `auth_file`).
    pub signed_tags: bool,
    /// Requests per second each connection may send, with a burst of as many (`--rate-limit`);
    /// `None` is no limit.
    pub rate_limit: Option<u32>,
    /// Whether the router may write a frame straight into a quiet recipient's plain TCP socket
    /// (`--direct-writes`, default on); off, every frame goes through the recipient's queue
    /// (for debugging, and for benchmarks that compare both paths).
    pub direct_writes: bool,
    /// Most routed requests kept for resume (`--history`); 0 turns the history off.
    pub history: usize,
    /// Most bytes of kept frames (`--history-bytes`).
    pub history_bytes: usize,
    /// Oldest kept request (`--history-ttl`).
    pub history_ttl: std::time::Duration,
    /// The secret of the server API (`--api-key`); `None` turns the API off.
    pub api_key: Option<crate::api::ApiKey>,
    /// How long a SIGTERM drains before closing what is left (`--shutdown-grace`).
    pub shutdown_grace: std::time::Duration,
}

/// Default `--shutdown-grace`.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Default `--handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Default `--ping-interval`.
pub const DEFAULT_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Default `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// Default `--history`: routed requests kept for resume.
pub const DEFAULT_HISTORY: usize = 10_000;
/// Default `--history-bytes` (64 MiB).
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Default `--history-ttl`.
pub const DEFAULT_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Default `--redis-channel`.
pub const DEFAULT_REDIS_CHANNEL: &str = "tagcast";

/// The two PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
}

/// Default outgoing queue length.
pub const DEFAULT_QUEUE_SIZE: usize = 1024;
/// Default message size bound (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_576;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            messages: MessageMode::String,
            auth_file: None,
            authorize_open: true,
            queue_size: DEFAULT_QUEUE_SIZE,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: None,
            max_tags: DEFAULT_MAX_TAGS,
            static_dir: None,
            tls: None,
            redis: None,
            redis_channel: DEFAULT_REDIS_CHANNEL.to_owned(),
            rate_limit: None,
            signed_tags: false,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            direct_writes: true,
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            history_ttl: DEFAULT_HISTORY_TTL,
            api_key: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// A configuration that cannot run; the text names the option or file and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The auth file is missing, unreadable or invalid.
    #[error(transparent)]
    AuthFile(#[from] crate::auth::AuthFileError),
    /// The JSON Schema file is missing, unreadable or not a valid schema.
    #[error("{path}: {reason}")]
    SchemaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A TLS file is missing, unreadable or does not match its pair.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The cluster's bus cannot start (bad `--redis` URL, Redis unreachable).
    #[error(transparent)]
    Bus(#[from] crate::cluster::BusError),
    /// An option has a value that cannot work.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Checks the values that do not need files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queue_size == 0 {
            return Err(ConfigError::Invalid(
                "--queue-size must be at least 1".into(),
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(ConfigError::Invalid(
                "--max-message-bytes must be at least 1".into(),
            ));
        }
        if self.rate_limit == Some(0) {
            return Err(ConfigError::Invalid(
                "--rate-limit must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        if self.api_key.as_ref().is_some_and(|k| k.0.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "--api-key must not be empty (leave it out to turn the server API off)".into(),
            ));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::Invalid(
                "--max-connections must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        Ok(())
    }
}
