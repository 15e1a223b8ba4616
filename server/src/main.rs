//! The `tagcast` binary: `serve`, `send` and `listen` (PROTOCOL.md §9).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tagcast::api::ApiClient;
use tagcast::{Tags, WebSocketClient, WebSocketRequest};
use tagcast_server::config::TlsFiles;
use tagcast_server::{Config, MessageMode, Server};

mod config_file;

/// Tagcast: a WebSocket server that forwards each message to the connections whose tags match.
#[derive(Debug, Parser)]
#[command(
    name = "tagcast",
    version,
    about,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Send one message and print how many connections it was delivered to.
    Send(SendArgs),
    /// Open a connection and print every message it receives, one per line.
    Listen(ListenArgs),
    /// Print a signed-tags token (see "Signed tags" in the README) for a backend to hand to one user.
    Token(TokenArgs),
    /// Exit 0 when the local server answers GET /healthz with 200 (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Count the open connections whose tags contain --tags, and per value of --by (server API).
    Presence(PresenceArgs),
    /// Close the connections whose tags contain --tags with 4001 (server API).
    Disconnect(DisconnectArgs),
    /// Check everything `serve` would (files, TLS pair, Redis reachable) without opening a port.
    CheckConfig(ServeArgs),
    /// Write a self-signed certificate and key for local TLS (cert.pem, key.pem).
    DevCert(DevCertArgs),
}

/// Where the server API is and its key.
#[derive(Debug, Args)]
struct ApiArgs {
    /// Server URL, e.g. http://localhost:8080 (ws:// and wss:// work too).
    #[arg(long, env = "TAGCAST_URL")]
    url: String,
    /// The server's --api-key secret.
    #[arg(long, env = "TAGCAST_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Also trust this PEM certificate for https:// (a self-signed server or a private CA).
    #[arg(long, env = "TAGCAST_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PresenceArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Count the connections whose tags contain these (a JSON object; default: everyone).
    #[arg(long, value_name = "JSON")]
    tags: Option<String>,
    /// Also count them per value of this tag.
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
}

#[derive(Debug, Args)]
struct DisconnectArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Close the connections whose tags contain these (a JSON object; {} closes everyone).
    #[arg(long, value_name = "JSON")]
    tags: String,
    /// The close reason the clients receive.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct DevCertArgs {
    /// The host name the certificate is for (also valid for 127.0.0.1 and ::1).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// The folder to write cert.pem and key.pem into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The application's key.
    #[arg(long)]
    key: String,
    /// The application's secret (it signs the token and never appears in it).
    #[arg(long, env = "TAGCAST_SECRET")]
    secret: String,
    /// The tags the token grants, as a JSON object.
    #[arg(long, value_name = "JSON")]
    tags: String,
    /// Seconds the token stays valid.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Debug, Args)]
struct HealthcheckArgs {
    /// Port of the local server.
    #[arg(long, env = "TAGCAST_PORT", default_value_t = 8080)]
    port: u16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Messages {
    /// Only JSON strings (as the original server).
    String,
    /// Any JSON value.
    Json,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TAGCAST_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on (0 lets the OS pick; the `listening on` log line tells which).
    #[arg(long, env = "TAGCAST_PORT", default_value_t = 8080)]
    port: u16,
    /// What a request's `message` may be.
    #[arg(long, env = "TAGCAST_MESSAGES", value_enum, default_value = "string")]
    messages: Messages,
    /// Accept messages valid against this JSON Schema file (takes precedence over --messages).
    #[arg(long, env = "TAGCAST_MESSAGE_SCHEMA", value_name = "FILE")]
    message_schema: Option<PathBuf>,
    /// Applications YAML file (key, secret, authorizeOpen); without it everything is authorized.
    #[arg(long, env = "TAGCAST_AUTH", value_name = "FILE")]
    auth: Option<PathBuf>,
    /// With --auth: whether anyone may open a connection (false: only with an application's key).
    /// Booleans take true/false, 1/0, yes/no or on/off.
    #[arg(long, env = "TAGCAST_AUTHORIZE_OPEN", default_value = "true", value_name = "true|false",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), hide_possible_values = true)]
    authorize_open: bool,
    /// Outgoing queue of each connection, in messages; a full queue disconnects a slow consumer.
    #[arg(long, env = "TAGCAST_QUEUE_SIZE", default_value_t = tagcast_server::config::DEFAULT_QUEUE_SIZE)]
    queue_size: usize,
    /// Largest message in bytes (after fragments are joined); larger closes with 1009.
    #[arg(long, env = "TAGCAST_MAX_MESSAGE_BYTES", default_value_t = tagcast_server::config::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Most open WebSocket connections; past it the handshake answers 503 [default: unlimited].
    #[arg(long, env = "TAGCAST_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most tags of a connection or a request.
    #[arg(long, env = "TAGCAST_MAX_TAGS", default_value_t = tagcast::tags::DEFAULT_MAX_TAGS)]
    max_tags: usize,
    /// Requests per second each connection may send (burst as many); past it raw senders are
    /// closed with 1008 `rate limited`, envelope senders get `rate_limited` [default: off].
    #[arg(long, env = "TAGCAST_RATE_LIMIT", value_name = "N")]
    rate_limit: Option<u32>,
    /// Seconds a client may take to send its request head (a slowloris is dropped after it).
    #[arg(
        long,
        env = "TAGCAST_HANDSHAKE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    handshake_timeout: u64,
    /// Seconds of silence after which the server pings a connection (0: never).
    #[arg(
        long,
        env = "TAGCAST_PING_INTERVAL",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    ping_interval: u64,
    /// Seconds of silence (pings unanswered) after which a connection is dropped (0: never).
    #[arg(
        long,
        env = "TAGCAST_IDLE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 75
    )]
    idle_timeout: u64,
    /// Routed requests kept so that a client that reconnects with `since` gets what it missed
    /// (0: history off).
    #[arg(long, env = "TAGCAST_HISTORY", value_name = "N",
          default_value_t = tagcast_server::config::DEFAULT_HISTORY)]
    history: usize,
    /// Most bytes of kept requests (their message frames: payload, tags and position).
    #[arg(long, env = "TAGCAST_HISTORY_BYTES", value_name = "N",
          default_value_t = tagcast_server::config::DEFAULT_HISTORY_BYTES)]
    history_bytes: usize,
    /// Seconds a routed request is kept for resume.
    #[arg(
        long,
        env = "TAGCAST_HISTORY_TTL",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    history_ttl: u64,
    /// Turns the server API on (/presence, /disconnect, /retag, /history): requests carry
    /// `Authorization: Bearer SECRET`; with --auth, /publish with it needs no metadata key.
    #[arg(
        long,
        env = "TAGCAST_API_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Write a frame straight into a quiet recipient's socket instead of waking its task (plain
    /// TCP only); false queues every frame (for debugging, and to compare both paths).
    #[arg(long, env = "TAGCAST_DIRECT_WRITES", default_value = "true", value_name = "true|false",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), hide_possible_values = true)]
    direct_writes: bool,
    /// Connections' tags come from tokens signed by an application's backend (needs --auth).
    #[arg(long, env = "TAGCAST_SIGNED_TAGS", value_parser = clap::builder::BoolishValueParser::new())]
    signed_tags: bool,
    /// A TOML or YAML file with serve options (the flags' names as keys); flags and
    /// TAGCAST_* variables win over it.
    #[arg(long, env = "TAGCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// How log lines are written to stderr.
    #[arg(long, env = "TAGCAST_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// On SIGTERM: seconds to drain (readiness 503, new connections refused) before closing
    /// what is left with 1001 (SIGINT closes at once).
    #[arg(
        long,
        env = "TAGCAST_SHUTDOWN_GRACE",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    shutdown_grace: u64,
    /// Serve this folder on plain GET requests (index.html at /), e.g. the web demo.
    #[arg(long = "static", env = "TAGCAST_STATIC", value_name = "DIR")]
    static_dir: Option<PathBuf>,
    /// Redis URL shared by the nodes of a cluster (redis://HOST:PORT); without it the node is alone.
    #[arg(long, env = "TAGCAST_REDIS", value_name = "URL")]
    redis: Option<String>,
    /// Pub/sub channel of the cluster: clusters sharing one Redis use different channels.
    #[arg(long, env = "TAGCAST_REDIS_CHANNEL", value_name = "NAME",
          default_value = tagcast_server::config::DEFAULT_REDIS_CHANNEL)]
    redis_channel: String,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(
        long,
        env = "TAGCAST_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (needs --tls-cert).
    #[arg(
        long,
        env = "TAGCAST_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> Config {
        Config {
            host: self.host,
            port: self.port,
            messages: match (self.message_schema, self.messages) {
                (Some(path), _) => MessageMode::Schema(path),
                (None, Messages::String) => MessageMode::String,
                (None, Messages::Json) => MessageMode::Json,
            },
            auth_file: self.auth,
            authorize_open: self.authorize_open,
            queue_size: self.queue_size,
            max_message_bytes: self.max_message_bytes,
            max_connections: self.max_connections,
            max_tags: self.max_tags,
            static_dir: self.static_dir,
            redis: self.redis,
            redis_channel: self.redis_channel,
            rate_limit: self.rate_limit,
            signed_tags: self.signed_tags,
            direct_writes: self.direct_writes,
            api_key: self.api_key.map(tagcast_server::api::ApiKey),
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace),
            history: self.history,
            history_bytes: self.history_bytes,
            history_ttl: std::time::Duration::from_secs(self.history_ttl),
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout.max(1)),
            ping_interval: (self.ping_interval > 0)
                .then(|| std::time::Duration::from_secs(self.ping_interval)),
            idle_timeout: (self.idle_timeout > 0)
                .then(|| std::time::Duration::from_secs(self.idle_timeout)),
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Server URL, e.g. ws://localhost:8080 (with ?key=…&secret=… when opening needs them).
    #[arg(long, env = "TAGCAST_URL")]
    url: String,
    /// Tags of the request, as a JSON object: who receives it (default: everyone).
    #[arg(long, value_name = "JSON")]
    tags: Option<String>,
    /// Metadata of the request, as a JSON object (with --auth: {"key": …, "secret": …}).
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Parse MESSAGE as JSON instead of sending it as a string.
    #[arg(long)]
    json: bool,
    /// Also trust this PEM certificate for wss:// (a self-signed server or a private CA).
    #[arg(long, env = "TAGCAST_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The server's --api-key secret: with --auth, it authorizes the send without metadata.
    #[arg(long, env = "TAGCAST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The message.
    message: String,
}

#[derive(Debug, Args)]
struct ListenArgs {
    /// Server URL, e.g. ws://localhost:8080.
    #[arg(long, env = "TAGCAST_URL")]
    url: String,
    /// Tags of the connection, as a JSON object: which messages it receives.
    #[arg(long, value_name = "JSON")]
    tags: Option<String>,
    /// Also trust this PEM certificate for wss:// (a self-signed server or a private CA).
    #[arg(long, env = "TAGCAST_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Before clap reads anything: a config file's values become TAGCAST_* variables where none
    // is set, so flags win over variables, which win over the file.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let from_file = match config_file::apply(args.clone()) {
        Ok(from_file) => from_file,
        Err(e) => {
            set_error_format(json_logs_asked(&args));
            print_error(&one_line_plain(&e.to_string()));
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version and a bare `tagcast` (its help) print as usual.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        // A bad flag or variable: clap's whole message (what is missing, tips, possible
        // values, usage) on one line, exit 2.
        Err(e) => {
            set_error_format(json_logs_asked(&args));
            // A refused value that came from the config file names the file and its key, not
            // a flag the operator never typed.
            let key = match (&from_file, e.get(clap::error::ContextKind::InvalidArg)) {
                (Some(file), Some(clap::error::ContextValue::String(arg))) => {
                    file.key_for(arg, &args).map(|key| (file, key))
                }
                _ => None,
            };
            match key {
                Some((file, key)) => {
                    let message = one_line_plain(&e.to_string());
                    let message = message.trim_start_matches("error: ");
                    print_error(&format!("{}: key '{key}': {message}", file.path.display()));
                }
                None => {
                    let line = one_line(&e.to_string(), subcommand(&args));
                    print_error(line.strip_prefix("error: ").unwrap_or(&line));
                }
            }
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let log_format = match &cli.command {
        Command::Serve(args) | Command::CheckConfig(args) => args.log_format,
        _ => LogFormat::Text,
    };
    init_tracing(log_format);
    set_error_format(log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_error(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Send(args) => report(runtime.block_on(send(args))),
        Command::Listen(args) => runtime.block_on(listen(args)),
        Command::Token(args) => report(token(args)),
        Command::Healthcheck(args) => report(runtime.block_on(healthcheck(args))),
        Command::CheckConfig(args) => runtime.block_on(check_config(args)),
        Command::Presence(args) => report(runtime.block_on(presence(args))),
        Command::Disconnect(args) => report(runtime.block_on(disconnect(args))),
        Command::DevCert(args) => report(dev_cert(args)),
    }
}

/// Clap's message as one line: its lines joined, blank ones and the `--help` hint left out.
/// The subcommand named in `args`, for the help hint of an error.
fn subcommand(args: &[std::ffi::OsString]) -> Option<&str> {
    let name = args.get(1)?.to_str()?;
    <Cli as clap::CommandFactory>::command()
        .find_subcommand(name)
        .is_some()
        .then_some(name)
}

/// clap's message on one line, with where to read more.
fn one_line(message: &str, subcommand: Option<&str>) -> String {
    let help = match subcommand {
        Some(name) => format!("tagcast {name} --help"),
        None => "tagcast --help".to_owned(),
    };
    format!("{} (see '{help}')", one_line_plain(message))
}

/// A message of several lines (clap's, a TOML parser's) on one line.
fn one_line_plain(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let mut line = String::new();
    for part in parts {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line
}

/// Whether `serve` and `check-config` print their startup errors as JSON log lines (set once
/// the log format is known): a log collector reading `--log-format json` then parses every
/// line, a refused start included.
static ERRORS_AS_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn set_error_format(json: bool) {
    ERRORS_AS_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
}

/// Prints a startup error: `error: MESSAGE`, or with JSON logs an `ERROR` log object whose
/// message is MESSAGE. Either way one line on stderr.
fn print_error(message: &str) {
    if ERRORS_AS_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        // Written here rather than through `tracing`: the log may not be set up yet (a refused
        // flag), and `RUST_LOG` must not hide why the server did not start. The fields are
        // those of the JSON log's own lines.
        use tracing_subscriber::fmt::time::FormatTime;
        let mut timestamp = String::new();
        let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
            &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
        );
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": "ERROR",
            "message": message,
            "target": "tagcast",
        });
        eprintln!("{line}");
    } else {
        eprintln!("error: {message}");
    }
}

/// Whether `serve` or `check-config` was asked for JSON logs, read from the raw arguments and
/// `TAGCAST_LOG_FORMAT` before clap has parsed them (for the errors clap itself refuses).
fn json_logs_asked(args: &[std::ffi::OsString]) -> bool {
    if !matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("serve" | "check-config")
    ) {
        return false;
    }
    let mut flag = None;
    let mut rest = args.iter().skip(2).filter_map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        } else if arg == "--log-format" {
            flag = rest.next();
        } else if let Some(value) = arg.strip_prefix("--log-format=") {
            flag = Some(value);
        }
    }
    match flag {
        Some(value) => value == "json",
        None => std::env::var("TAGCAST_LOG_FORMAT").is_ok_and(|v| v == "json"),
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Checks what `serve` would: the options, the files (auth, schema, TLS pair, static folder),
/// and Redis reachable; opens no port.
async fn check_config(args: ServeArgs) -> ExitCode {
    if let Err(code) = checked_server(args.into_config()).await {
        return code;
    }
    println!("configuration ok");
    ExitCode::SUCCESS
}

/// Writes a self-signed certificate for `--host` (and 127.0.0.1, ::1) and its key.
fn dev_cert(args: DevCertArgs) -> anyhow::Result<()> {
    let mut names = vec![args.host.clone()];
    for extra in ["127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let certified =
        rcgen::generate_simple_self_signed(names).context("cannot generate the certificate")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let cert = args.out.join("cert.pem");
    let key = args.out.join("key.pem");
    std::fs::write(&cert, pem("CERTIFICATE", certified.cert.der()))
        .with_context(|| format!("cannot write {}", cert.display()))?;
    let key_der = certified.signing_key.serialize_der();
    write_private(&key, pem("PRIVATE KEY", &key_der).as_bytes())
        .with_context(|| format!("cannot write {}", key.display()))?;
    println!("{}", cert.display());
    println!("{}", key.display());
    eprintln!(
        "for {}: tagcast serve --tls-cert {} --tls-key {}; clients: --ca-cert {}",
        args.host,
        cert.display(),
        key.display(),
        cert.display()
    );
    Ok(())
}

/// The PEM text of a DER block (RFC 7468): base64 in lines of 64 between the labels.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a file only its owner can read (a private key).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of a configuration error (PROTOCOL.md §9).
const CONFIG_ERROR: u8 = 2;

/// A server built from `config` with its cluster connected: what `serve` runs and
/// `check-config` checks. A problem is printed, and is exit 2.
async fn checked_server(config: Config) -> Result<Server, ExitCode> {
    let server = Server::builder().config(config).build().map_err(|e| {
        print_error(&e.to_string());
        ExitCode::from(CONFIG_ERROR)
    })?;
    if let Err(e) = server.connect_cluster().await {
        print_error(&e.to_string());
        return Err(ExitCode::from(CONFIG_ERROR));
    }
    Ok(server)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = args.into_config();
    let addr = (config.host, config.port);
    let grace = config.shutdown_grace;
    let server = match checked_server(config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            print_error(&format!("cannot listen on {}:{}: {e}", addr.0, addr.1));
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let drainer = server.drainer();
    let signal = shutdown_signal();
    let shutdown = async move {
        // SIGTERM drains first; SIGINT closes at once.
        if signal.await == Signal::Terminate {
            drainer.drain(grace).await;
        }
    };
    match server.run(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Interrupt,
    Terminate,
}

/// Listens for SIGINT and SIGTERM from now on and returns the first to come. The handlers are
/// installed when this is called, before `listening on` is printed: a signal sent as soon as
/// the server says it listens stops it cleanly instead of taking the default action (killing
/// the process without a close frame).
fn shutdown_signal() -> impl std::future::Future<Output = Signal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                _ = next(&mut interrupt) => Signal::Interrupt,
                _ = next(&mut terminate) => Signal::Terminate,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

/// The next delivery of `signal`, or never when it could not be listened for.
#[cfg(unix)]
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn trusting(
    builder: tagcast::ClientBuilder,
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<tagcast::ClientBuilder> {
    match ca_cert {
        None => Ok(builder),
        Some(path) => Ok(builder
            .trust_pem(&read_ca_cert(path)?)
            .with_context(|| format!("--ca-cert {}", path.display()))?),
    }
}

/// The PEM text of `--ca-cert`.
fn read_ca_cert(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read --ca-cert {}", path.display()))
}

fn parse_tags(tags: Option<&str>) -> anyhow::Result<Tags> {
    match tags {
        None => Ok(Tags::new()),
        Some(json) => Tags::parse(json).context("invalid --tags"),
    }
}

/// `POST /publish` on the server of the URL: no WebSocket, so the sender is never one of the
/// recipients it counts.
async fn send(args: SendArgs) -> anyhow::Result<()> {
    let tags = parse_tags(args.tags.as_deref())?;
    let message: serde_json::Value = if args.json {
        serde_json::from_str(&args.message).context("MESSAGE is not valid JSON (--json)")?
    } else {
        serde_json::Value::String(args.message)
    };
    let mut request = WebSocketRequest::new(message).with_tags(tags);
    if let Some(metadata) = args.metadata {
        match serde_json::from_str(&metadata).context("invalid --metadata")? {
            serde_json::Value::Object(map) => request = request.with_metadata(map),
            _ => anyhow::bail!("invalid --metadata: it must be a JSON object"),
        }
    }
    let mut api = api_client(&args.url, args.ca_cert.as_deref())?;
    if let Some(key) = args.api_key {
        api = api.api_key(key);
    }
    println!("delivered {}", api.publish(&request).await?);
    Ok(())
}

fn api_client(url: &str, ca_cert: Option<&std::path::Path>) -> anyhow::Result<ApiClient> {
    let api = ApiClient::new(url)?;
    match ca_cert {
        None => Ok(api),
        Some(path) => Ok(api
            .trust_pem(&read_ca_cert(path)?)
            .with_context(|| format!("--ca-cert {}", path.display()))?),
    }
}

async fn presence(args: PresenceArgs) -> anyhow::Result<()> {
    let tags = parse_tags(args.tags.as_deref())?;
    let api = api_client(&args.api.url, args.api.ca_cert.as_deref())?.api_key(args.api.api_key);
    let presence = api.presence(&tags, args.by.as_deref()).await?;
    let mut answer = serde_json::json!({ "connections": presence.connections });
    if args.by.is_some() {
        answer["values"] = serde_json::json!(presence.values);
        answer["truncated"] = serde_json::json!(presence.truncated);
    }
    answer["partial"] = serde_json::json!(presence.partial);
    println!("{answer}");
    Ok(())
}

async fn disconnect(args: DisconnectArgs) -> anyhow::Result<()> {
    let tags = parse_tags(Some(&args.tags))?;
    let api = api_client(&args.api.url, args.api.ca_cert.as_deref())?.api_key(args.api.api_key);
    let closed = api.disconnect(&tags, args.reason.as_deref()).await?;
    println!("disconnected {closed}");
    Ok(())
}

async fn listen(args: ListenArgs) -> ExitCode {
    let tags = match parse_tags(args.tags.as_deref()) {
        Ok(t) => t,
        Err(e) => return report(Err(e)),
    };
    let builder = match trusting(WebSocketClient::builder(args.url), args.ca_cert.as_deref()) {
        Ok(b) => b,
        Err(e) => return report(Err(e)),
    };
    let client = match builder.tags(tags).raw(true).connect().await {
        Ok(c) => c,
        Err(e) => return report(Err(e.into())),
    };
    eprintln!("connected");
    let mut stdout = std::io::stdout().lock();
    loop {
        tokio::select! {
            received = client.recv() => match received {
                Some(received) => {
                    if writeln!(stdout, "{}", received.text).and_then(|()| stdout.flush()).is_err() {
                        return ExitCode::SUCCESS; // stdout closed: nobody is listening any more
                    }
                }
                None => {
                    let reason = client.close_reason().unwrap_or_default();
                    eprintln!("closed: {reason}");
                    let normal = reason.starts_with("code 1000") || reason.starts_with("code 1001");
                    return if normal { ExitCode::SUCCESS } else { ExitCode::FAILURE };
                }
            },
            _ = shutdown_signal() => {
                client.close().await;
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// GET /healthz on 127.0.0.1 over plain HTTP/1.1: no HTTP client needed in the image.
async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", args.port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5 s")??;
    if !answer.starts_with(b"HTTP/") {
        anyhow::bail!(
            "the server on 127.0.0.1:{} did not answer plain HTTP: it serves TLS (--tls-cert), \
             which healthcheck does not speak; probe https://…/healthz (or /livez) instead",
            args.port
        );
    }
    let status_line = String::from_utf8_lossy(&answer);
    let status_line = status_line.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status_line.starts_with("HTTP/1.1 200"),
        "unhealthy: {status_line}"
    );
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let tags = Tags::parse(&args.tags).context("invalid --tags")?;
    let ttl = std::time::Duration::from_secs(args.ttl);
    println!(
        "{}",
        tagcast::sign_tags(&args.key, &args.secret, &tags, ttl)
    );
    Ok(())
}
