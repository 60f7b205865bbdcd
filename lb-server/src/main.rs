//! `lb-server`: parse flags, set up logging, run the daemon until SIGINT/SIGTERM;
//! or, as `lb-server ctl …`, run one operator command against a daemon.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb_core::access::Pattern;
use lb_core::cluster::MAX_RETRY_ON;
use lb_core::duration::{parse as parse_duration, Span};
use lb_core::model::MAX_LABELS;
use lb_core::policy::PolicyKind;
use lb_core::quota::{self, Quotas, MAX_LABEL_BYTES};
use lb_core::routing::MAX_RULES;
use lb_core::size::Bytes;
use lb_server::auth::{
    TokenLimits, DEFAULT_ADMIN_WRITE_RATE, DEFAULT_CONNECTIONS_PER_TOKEN, DEFAULT_STREAMS_PER_TOKEN,
};
use lb_server::config::{
    AuthConfig, Config, DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT, DEFAULT_XDS_ACK_TIMEOUT,
};
use lb_server::ctl::CtlArgs;
use lb_server::listen::{ConnLimits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
use lb_server::store::sled::DEFAULT_MIN_FREE;
use lb_server::tls::TlsFiles;

fn parse_policy(s: &str) -> Result<PolicyKind, String> {
    PolicyKind::parse(s).ok_or_else(|| format!("unknown policy {s:?}"))
}

/// The lb daemon: a lookaside load balancer. Backends register and report load;
/// clients subscribe and receive ordered server lists.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Operator commands against a running lb-server (`lb-server ctl --help`).
    Ctl(Box<CtlArgs>),
    /// Prints a shell completion script (e.g. `lb-server completions bash >
    /// /etc/bash_completion.d/lb-server`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// The daemon's flags.
#[derive(Debug, clap::Args)]
struct Args {
    /// Address to serve gRPC on (port 0 picks a free port; the bound address is
    /// printed on stdout as `lb-server listening on ADDR`).
    #[arg(long, env = "LB_LISTEN", default_value = "127.0.0.1:7400")]
    listen: String,
    /// Directory of the embedded sled store (created if missing); with
    /// `--store etcd://…`, it keeps only this replica's cache of load
    /// reports and its generated admin token.
    #[arg(long, env = "LB_DATA_DIR", default_value = "./lb-data")]
    data_dir: PathBuf,
    /// Where the durable state lives: `sled` (embedded, under --data-dir)
    /// or `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`, an etcd cluster that
    /// several lb-server replicas share (README: "Running several
    /// replicas").
    #[arg(long, env = "LB_STORE", default_value = "sled")]
    store: lb_server::config::StoreChoice,
    /// Reads flags from this TOML file (keys are the flags' long names, e.g.
    /// `report-interval = "250ms"`; `lb.example.toml` shows them). Flags
    /// and `LB_*` variables override the file.
    #[arg(long, env = "LB_CONFIG")]
    config: Option<PathBuf>,
    /// Prints the effective configuration (every flag, its value and where
    /// it came from: flag, environment, file or default) as TOML, and exits.
    #[arg(long)]
    print_config: bool,
    /// Log format: `text` or `json` (one object per line).
    #[arg(long, env = "LB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// How often backends should report load (e.g. 250ms, 1s).
    #[arg(long, env = "LB_REPORT_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    report_interval: Duration,
    /// TTL for registrations that do not ask for one: a streamed backend
    /// silent this long, or a lease not renewed, leaves the lists.
    #[arg(long, env = "LB_DEFAULT_TTL", default_value = "5s", value_parser = parse_duration)]
    default_ttl: Duration,
    /// After a restart, how long persisted instances stay listed while their
    /// backends reconnect.
    #[arg(long, env = "LB_RESTORE_GRACE", default_value = "15s", value_parser = parse_duration)]
    restore_grace: Duration,
    /// How often clients should send call statistics.
    #[arg(long, env = "LB_STATS_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Policy of services nobody set one for (see `lb-server ctl set-policy --help`).
    #[arg(long, env = "LB_DEFAULT_POLICY", default_value = "load_aware", value_parser = parse_policy)]
    default_policy: PolicyKind,
    /// Longest list (entries in one period) sent to clients.
    #[arg(long, env = "LB_MAX_LIST_LEN", default_value_t = lb_core::policy::DEFAULT_MAX_LIST_LEN,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_list_len: u32,
    /// How long a graceful shutdown waits for open calls.
    #[arg(long, env = "LB_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Address of the HTTP listener: `/metrics` (Prometheus), `/healthz`,
    /// `/readyz` and the JSON API (`/api/services`); off unless given.
    /// `--metrics-listen` (and `LB_METRICS_LISTEN`) is its former name.
    #[arg(long, env = "LB_HTTP_LISTEN", visible_alias = "metrics-listen")]
    http_listen: Option<std::net::SocketAddr>,
    /// Accept backends registering link-local addresses (169.254.0.0/16,
    /// fe80::/10; refused by default: cloud metadata services live there).
    #[arg(long, env = "LB_ALLOW_LINK_LOCAL")]
    allow_link_local: bool,
    /// Free disk space the store keeps: below it, changes are refused
    /// (`unavailable`, degraded mode) until space is freed (e.g. 4MiB, 512k;
    /// 0 turns the check off).
    #[arg(long, env = "LB_STORE_MIN_FREE", default_value_t = Bytes(DEFAULT_MIN_FREE))]
    store_min_free: Bytes,

    /// Require a token (or a bound client certificate) on every call; the
    /// admin token is generated into the data directory (admin.token, mode
    /// 0600) at the first start. On by itself when that file exists or with
    /// --admin-token-file.
    #[arg(long, env = "LB_AUTH", help_heading = "Security")]
    auth: bool,
    /// File holding the admin token itself (turns authentication on).
    #[arg(long, env = "LB_ADMIN_TOKEN_FILE", help_heading = "Security")]
    admin_token_file: Option<PathBuf>,
    /// Services (names or globs, comma-separated) whose lists grpclb serves
    /// without a token.
    #[arg(long, env = "LB_GRPCLB_ANONYMOUS", value_delimiter = ',', value_parser = parse_pattern, help_heading = "Security")]
    grpclb_anonymous: Vec<Pattern>,
    /// PEM certificate chain: serve TLS on every listener (with --tls-key).
    #[arg(
        long,
        env = "LB_TLS_CERT",
        requires = "tls_key",
        help_heading = "Security"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "LB_TLS_KEY",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: client certificates signed by them are required
    /// (mTLS).
    #[arg(
        long,
        env = "LB_TLS_CLIENT_CA",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Listen beyond loopback without TLS and authentication anyway.
    #[arg(long, env = "LB_INSECURE", help_heading = "Security")]
    insecure: bool,

    /// Connections open at once; more are closed at accept.
    #[arg(long, env = "LB_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, help_heading = "Limits")]
    max_connections: usize,
    /// Time a connection has for its TLS handshake and HTTP/2 preface.
    #[arg(long, env = "LB_HANDSHAKE_TIMEOUT", default_value_t = Span(DEFAULT_HANDSHAKE_TIMEOUT), help_heading = "Limits")]
    handshake_timeout: Span,
    /// Time a new stream has to send its first message (registration,
    /// subscription); then it is closed.
    #[arg(long, env = "LB_FIRST_MESSAGE_TIMEOUT", default_value_t = Span(DEFAULT_FIRST_MESSAGE_TIMEOUT), help_heading = "Limits")]
    first_message_timeout: Span,
    /// Time an xDS client has to acknowledge (or reject) an answer; then its
    /// stream is closed.
    #[arg(long, env = "LB_XDS_ACK_TIMEOUT", default_value_t = Span(DEFAULT_XDS_ACK_TIMEOUT), help_heading = "Limits")]
    xds_ack_timeout: Span,
    /// Largest request message decoded.
    #[arg(long, env = "LB_MAX_MESSAGE_SIZE", default_value_t = Bytes(DEFAULT_MAX_MESSAGE_SIZE as u64), help_heading = "Limits")]
    max_message_size: Bytes,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, env = "LB_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS, help_heading = "Limits")]
    max_concurrent_streams: u32,
    /// Connections one token may use at once.
    #[arg(long, env = "LB_MAX_CONNECTIONS_PER_TOKEN", default_value_t = DEFAULT_CONNECTIONS_PER_TOKEN, help_heading = "Limits")]
    max_connections_per_token: usize,
    /// Calls (streams included) one token may have open at once.
    #[arg(long, env = "LB_MAX_STREAMS_PER_TOKEN", default_value_t = DEFAULT_STREAMS_PER_TOKEN, help_heading = "Limits")]
    max_streams_per_token: usize,
    /// Admin changes per second per token, and the burst (with
    /// authentication on; the bootstrap admin token shares one budget).
    #[arg(long, env = "LB_ADMIN_WRITE_RATE", default_value_t = DEFAULT_ADMIN_WRITE_RATE, help_heading = "Limits")]
    admin_write_rate: f64,
    /// Subscriptions one client id may have open at once.
    #[arg(long, env = "LB_MAX_SUBSCRIPTIONS_PER_CLIENT", default_value_t = DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT, help_heading = "Limits")]
    max_subscriptions_per_client: usize,

    // Last: its help heading would apply to the flags after it.
    #[command(flatten)]
    quotas: QuotaArgs,
}

/// Pending connections the kernel queues for the accept loop (std's
/// default is 128, which a burst of connects overflows into one-second SYN
/// retries; nginx uses 511, Go the system's `somaxconn`). Linux caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn parse_pattern(s: &str) -> Result<Pattern, String> {
    Pattern::parse(s, "--grpclb-anonymous").map_err(|e| e.to_string())
}

/// The quotas (`lb_core::quota`): a change that would exceed one is refused
/// with `resource_exhausted`, naming the quota, its limit and the service.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Quotas")]
struct QuotaArgs {
    /// Most instances in one service.
    #[arg(long, env = "LB_MAX_INSTANCES_PER_SERVICE", default_value_t = quota::DEFAULT_MAX_INSTANCES_PER_SERVICE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_instances_per_service: u32,
    /// Most instances in all services together.
    #[arg(long, env = "LB_MAX_INSTANCES", default_value_t = quota::DEFAULT_MAX_INSTANCES as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: u32,
    /// Most labels on one instance (at most 64, the hard limit).
    #[arg(long, env = "LB_MAX_LABELS", default_value_t = quota::DEFAULT_MAX_LABELS as u32,
          value_parser = clap::value_parser!(u32).range(0..=MAX_LABELS as i64))]
    max_labels: u32,
    /// Most bytes of one label, key and value together (at most 318).
    #[arg(long, env = "LB_MAX_LABEL_BYTES", default_value_t = quota::DEFAULT_MAX_LABEL_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(1..=MAX_LABEL_BYTES as i64))]
    max_label_bytes: u32,
    /// Most routing rules in one service (at most 64, the hard limit).
    #[arg(long, env = "LB_MAX_RULES", default_value_t = quota::DEFAULT_MAX_RULES as u32,
          value_parser = clap::value_parser!(u32).range(0..=MAX_RULES as i64))]
    max_rules: u32,
    /// Most entries in one cluster mode's retry_on list (at most 16, the
    /// error codes there are).
    #[arg(long, env = "LB_MAX_RETRY_ON", default_value_t = quota::DEFAULT_MAX_RETRY_ON as u32,
          value_parser = clap::value_parser!(u32).range(1..=MAX_RETRY_ON as i64))]
    max_retry_on: u32,
    /// Most bytes one service's list, grpclb list or GetService answer may
    /// take encoded, as estimated from what was registered and set (e.g.
    /// 2MiB, 512k; at least 64KiB). Keep it under clients' receive limit
    /// (4 MiB by default in gRPC).
    #[arg(long, env = "LB_MAX_LIST_BYTES", default_value_t = Bytes(quota::DEFAULT_MAX_LIST_BYTES))]
    max_list_bytes: Bytes,
}

impl QuotaArgs {
    fn quotas(&self) -> anyhow::Result<Quotas> {
        let q = Quotas {
            instances_per_service: self.max_instances_per_service as usize,
            instances: self.max_instances as usize,
            labels: self.max_labels as usize,
            label_bytes: self.max_label_bytes as usize,
            rules: self.max_rules as usize,
            retry_on: self.max_retry_on as usize,
            list_bytes: self.max_list_bytes.0,
        };
        q.check().map_err(anyhow::Error::msg)?;
        Ok(q)
    }
}

/// The daemon's flags a configuration file may set: long name and
/// environment variable.
fn file_flags() -> Vec<(String, String)> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "config"))
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            let names = a
                .get_long()
                .into_iter()
                .chain(a.get_visible_aliases().into_iter().flatten());
            Some(
                names
                    .map(|n| (n.to_string(), env.clone()))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}

/// `--config FILE` (or `LB_CONFIG`) when the daemon is to run: applied to
/// the environment before anything parses it (see `lb_server::config::file`).
/// Returns the variables the file set.
fn apply_config_file() -> anyhow::Result<std::collections::BTreeSet<String>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| a == "ctl" || a == "completions" || a == "help")
    {
        return Ok(Default::default());
    }
    // The HTTP listener's former variable.
    if std::env::var_os("LB_HTTP_LISTEN").is_none() {
        if let Some(v) = std::env::var_os("LB_METRICS_LISTEN") {
            std::env::set_var("LB_HTTP_LISTEN", v);
        }
    }
    let mut path = std::env::var_os("LB_CONFIG").map(PathBuf::from);
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            path = args.get(i + 1).map(PathBuf::from);
        } else if let Some(v) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(v));
        }
    }
    match path {
        Some(p) => Ok(lb_server::config::file::apply(&p, &file_flags())?),
        None => Ok(Default::default()),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an
/// error.
fn emit(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, bytes)
        .and_then(|()| std::io::Write::flush(&mut out))
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Ok(()),
            _ => Err(e),
        })
        .context("cannot write to stdout")
}

/// `--print-config`: every daemon flag with its value and its source, as
/// TOML that `--config` reads back.
fn print_config(
    matches: &clap::ArgMatches,
    from_file: &std::collections::BTreeSet<String>,
) -> String {
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    use std::fmt::Write as _;
    let mut text = String::from("# lb-server's effective configuration (a file --config reads)\n");
    for a in Cli::command().get_arguments() {
        let (Some(long), id) = (a.get_long(), a.get_id().as_str()) else {
            continue;
        };
        if matches!(long, "config" | "print-config" | "help" | "version") {
            continue;
        }
        let key = long;
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => {
                let env = a.get_env().and_then(|e| e.to_str()).unwrap_or("");
                if from_file.contains(env) {
                    "file"
                } else {
                    "environment"
                }
            }
            Some(ValueSource::DefaultValue) => "default",
            _ => "not set",
        };
        let raw: Option<Vec<String>> = matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect());
        let _ = match raw {
            Some(v) if !v.is_empty() => writeln!(
                text,
                "{key} = {}  # {source}",
                lb_server::config::file::toml_value(&v.join(","))
            ),
            _ => writeln!(text, "# {key} is not set"),
        };
    }
    text
}

fn main() {
    let from_file = match apply_config_file() {
        Ok(set) => set,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(daemon_or_ctl(from_file));
    // A store wait that never returns (a disk that hangs) must not hold up
    // the exit: everything acknowledged was flushed when it was acknowledged.
    runtime.shutdown_timeout(EXIT_GRACE);
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause only if the text so far
/// does not already say it (errors that quote their source would otherwise
/// print it two or three times).
fn one_line(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

/// How long the exit waits for blocking work (a store flush) left running.
const EXIT_GRACE: Duration = Duration::from_secs(1);

async fn daemon_or_ctl(from_file: std::collections::BTreeSet<String>) -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Some(Command::Ctl(ctl)) => {
            let output = ctl.output;
            if let Err(e) = lb_server::ctl::run(*ctl).await {
                e.report(output);
                std::process::exit(1);
            }
            return Ok(());
        }
        Some(Command::Completions { shell }) => {
            // Into memory first: the generator panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb-server", &mut script);
            return emit(&script);
        }
        None => {}
    }
    let args = cli.daemon;
    if args.print_config {
        return emit(print_config(&matches, &from_file).as_bytes());
    }
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
    if !from_file.is_empty() {
        tracing::info!(settings = from_file.len(), "configuration file read");
    }
    if args.report_interval.is_zero() || args.stats_interval.is_zero() {
        anyhow::bail!("--report-interval and --stats-interval must be greater than 0");
    }
    let mut config = Config::new(args.data_dir);
    config.store = args.store;
    config.report_interval = args.report_interval;
    config.default_ttl = args.default_ttl;
    config.restore_grace = args.restore_grace;
    config.stats_interval = args.stats_interval;
    config.max_list_len = args.max_list_len;
    config.quotas = args.quotas.quotas()?;
    config.default_policy = args.default_policy;
    config.drain_timeout = args.drain_timeout;
    config.http_listen = args.http_listen;
    config.allow_link_local = args.allow_link_local;
    config.store_min_free = args.store_min_free.0;
    config.auth = AuthConfig {
        required: args.auth,
        admin_token_file: args.admin_token_file,
        grpclb_anonymous: args.grpclb_anonymous,
        limits: TokenLimits {
            connections: args.max_connections_per_token,
            streams: args.max_streams_per_token,
            admin_writes_per_sec: args.admin_write_rate,
        },
    };
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }),
        _ => None,
    };
    config.insecure = args.insecure;
    config.conn_limits = ConnLimits {
        max_connections: args.max_connections,
        handshake_timeout: args.handshake_timeout.0,
    };
    config.first_message_timeout = args.first_message_timeout.0;
    config.xds_ack_timeout = args.xds_ack_timeout.0;
    config.max_message_size = usize::try_from(args.max_message_size.0).unwrap_or(usize::MAX);
    config.max_concurrent_streams = args.max_concurrent_streams;
    config.max_subscriptions_per_client = args.max_subscriptions_per_client;
    if !(args.admin_write_rate > 0.0 && args.admin_write_rate.is_finite()) {
        anyhow::bail!("--admin-write-rate must be a positive number");
    }
    config
        .quotas
        .check_default_policy(&config.default_service_policy())
        .map_err(anyhow::Error::msg)?;
    if config.quotas.list_bytes > quota::CLIENT_RECEIVE_LIMIT {
        tracing::warn!(
            max_list_bytes = config.quotas.list_bytes,
            "--max-list-bytes is above gRPC clients' default 4 MiB receive limit: such clients may refuse a large service's list"
        );
    }

    let targets: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&args.listen)
        .await
        .with_context(|| format!("cannot resolve --listen {}", args.listen))?
        .collect();
    for target in targets.iter().copied().chain(config.http_listen) {
        lb_server::server::check_listen(target, &config)?;
    }
    // The store first: a data directory another daemon holds stops the start
    // here, before anything listens or says it does.
    tracing::info!(data_dir = %config.data_dir.display(), "lb-server starting");
    let daemon = lb_server::server::Daemon::open(config).await?;
    let mut bound = Err(anyhow::anyhow!("{} resolves to no address", args.listen));
    for target in &targets {
        bound = bind(*target).with_context(|| format!("cannot listen on {target}"));
        if bound.is_ok() {
            break;
        }
    }
    let listener = bound?;
    let shutdown = lb_server::server::shutdown_signal();
    daemon
        .serve(listener, shutdown, |addr| {
            tracing::info!(%addr, "lb-server serving");
            // What scripts and tests wait for: printed only once it serves.
            println!("lb-server listening on {addr}");
        })
        .await?;
    Ok(())
}
