//! `lb-server ctl …`: the operator CLI, a thin client of the `Admin` service.
//!
//! One file per command group behind this small dispatcher (mini-redis's
//! `cmd/`): [`services`] (`services`, `get`, `delete-service`), [`policy`]
//! (`set-policy`), [`cluster`] (`set-cluster`), [`rules`] (`set-rule`,
//! `delete-rule`), [`instances`] (`set-weight`, `drain`, `undrain`,
//! `put-static`, `remove-static`), [`token`] (`token create|list|revoke`);
//! [`show`] renders what the daemon answers.
//!
//! What an operator can count on:
//! - a change changes only what it names: `set-policy` and `set-cluster`
//!   send the parameters given, the daemon applies them to the settings in
//!   force (its one writer does, so two operators' changes to different
//!   settings both hold), and ctl prints only what changed, before → after;
//! - a write never makes a service by accident: on a service with no
//!   instance and no settings it is refused unless `--create`;
//! - durations need a unit (`1.5s`, `250ms`, `100us`, `2m`);
//! - every flag that says where and as whom to connect (`--server`,
//!   `--data-dir`, `--token-file`, `--ca`, `--cert`, `--key`,
//!   `--tls-domain`) also reads an `LB_*` variable (`--help` names it); the
//!   flags that say what to change or how to print it (`--output`) never
//!   do, so an environment cannot change what a command does or what a
//!   script reads;
//! - a refusal exits non-zero with the daemon's message and, where a flag
//!   explains it, a hint; a daemon that cannot be reached is named with the
//!   reason (`connection refused`);
//! - `--output json`: every command prints one JSON document on stdout,
//!   the daemon's answer message (mapped as `lb_proto::json` says: enums by
//!   name), or for an answer that does not say what it is about, that
//!   answer with the names the command gave ([`About`]); a failure is one
//!   JSON object on stderr, `{"error": {"code": …, "message": …}}`
//!   ([`Failure`]), without the hints.

mod cluster;
mod instances;
mod policy;
mod rules;
mod services;
mod show;
mod token;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use lb_client::credentials::{Authorize, Credentials};
use lb_core::status::Code;
use lb_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::token as tokens;

/// Prints one line of output. A closed stdout (`ctl services | head -1`)
/// ends the command quietly, as a Unix tool does, instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::ctl::emit(format_args!($($arg)*))
    };
}
pub(crate) use say;

pub(crate) fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Where the daemon listens unless told otherwise (its `--listen` default).
pub const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// How ctl prints what the daemon answers (`--output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and lines for people.
    #[default]
    Text,
    /// One JSON document on stdout: the daemon's whole answer (failures:
    /// one JSON object on stderr).
    Json,
}

/// Flags shared by every `ctl` command: where the daemon is and how to
/// authenticate to it (each also reads an `LB_*` environment variable), and
/// how to print the answer (never from the environment).
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Address of the lb-server to talk to.
    #[arg(long, global = true, env = "LB_SERVER", help_heading = "Connection", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The daemon's data directory: on the daemon's machine, its generated
    /// admin token (`admin.token`) is used when no other token is given.
    #[arg(
        long,
        global = true,
        env = "LB_DATA_DIR",
        help_heading = "Connection",
        default_value = "lb-data"
    )]
    pub data_dir: PathBuf,
    /// A file holding the bearer token to send (else `LB_TOKEN`, else the
    /// data directory's admin token).
    #[arg(
        long,
        global = true,
        env = "LB_TOKEN_FILE",
        help_heading = "Connection"
    )]
    pub token_file: Option<PathBuf>,
    /// Dial the daemon over TLS, trusting this CA certificate (PEM).
    #[arg(long, global = true, env = "LB_CA", help_heading = "Connection")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for a daemon that requires one (mTLS).
    #[arg(long, global = true, env = "LB_CERT", help_heading = "Connection", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The key of `--cert` (PEM).
    #[arg(
        long,
        global = true,
        env = "LB_KEY",
        help_heading = "Connection",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Check the daemon's certificate against this name instead of the
    /// `--server` host.
    #[arg(
        long,
        global = true,
        env = "LB_TLS_DOMAIN",
        help_heading = "Connection",
        requires = "ca"
    )]
    pub tls_domain: Option<String>,
    /// Give up on a command the daemon has not answered within this long
    /// (etcdctl's `--command-timeout`; a daemon whose store is failing
    /// answers within its own 5 s store timeout).
    #[arg(
        long,
        global = true,
        env = "LB_CTL_TIMEOUT",
        help_heading = "Connection",
        default_value = "15s",
        value_parser = lb_core::duration::parse
    )]
    pub timeout: Duration,
    /// How to print the answer: text for people, or json (one JSON
    /// document: the daemon's whole answer, enums by name; `get --all`
    /// changes nothing there). With json a failure is one JSON object on
    /// stderr: {"error": {"code": "NOT_FOUND", "message": "…"}}.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = Output::Text,
        help_heading = "Output"
    )]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Create, list and revoke the tokens callers authenticate with.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List services with their policy, instances, subscribers and list
    /// version (generation.sequence).
    Services,
    /// Show a service: its policy (parameters not at their default; --all
    /// for every one), clients, rules, cluster modes, and each instance's
    /// zone, labels, load and the age of its last report, effective weight
    /// and share.
    Get(services::Get),
    /// Remove a service: its policy, rules, cluster modes, overrides and
    /// static instances. Refused while backends are registered in it
    /// (they are named), unless --force.
    DeleteService(services::DeleteService),
    /// Change a service's balancing policy and the parameters given; the
    /// others keep their values (--reset: take their defaults). Prints what
    /// changed. Persisted; pushed to clients at once.
    ///
    /// Policies: round_robin, weighted_round_robin, random, weighted_random,
    /// hash, consistent_hash, least_connections, least_active,
    /// fastest_response, load_aware (the default).
    #[command(after_help = lb_core::policy::config::params_help())]
    SetPolicy(policy::SetPolicy),
    /// Override an instance's registered weight (0 clears the override).
    SetWeight(instances::SetWeight),
    /// Take an instance out of every list and ask its backend to drain.
    Drain(instances::Instance),
    /// Put a drained instance back (it ramps up with slow start if configured).
    Undrain(instances::Instance),
    /// Add a routing rule, or replace the rule of the same name (persisted;
    /// pushed to clients at once). Rules are tried in order; the first whose
    /// conditions all hold picks the instances.
    ///
    /// Example (A/B test): `ctl set-rule shop ab --when group=B --select group=B --exclusive`
    SetRule(rules::SetRule),
    /// Remove a routing rule.
    DeleteRule(rules::DeleteRule),
    /// Change what a failed call does next (cluster mode), for the whole
    /// service or one method: only the settings given change (--reset: the
    /// others take their defaults). Prints what changed. Executed by
    /// lb-client's `Subscription::call`.
    ///
    /// Modes: failover (default: --attempts 3, --backoff 10ms), failfast,
    /// failsafe, forking (--forks K), broadcast, multicast (--route RULE).
    ///
    /// Examples: `ctl set-cluster shop failover --attempts 5`, then
    /// `ctl set-cluster shop --backoff 50ms` (still 5 attempts);
    /// `ctl set-cluster shop --method /shop.v1.Shop/GetPrice --clear`.
    SetCluster(cluster::SetCluster),
    /// Add or update a static instance: one with no backend process behind
    /// it (persisted; never expires; removed only by remove-static).
    ///
    /// Example: `ctl put-static echo.example.com legacy-1 10.0.0.7:50051 --weight 2`
    PutStatic(instances::PutStatic),
    /// Remove a static instance.
    RemoveStatic(instances::Instance),
}

/// The Admin client every command uses.
pub(crate) type Admin = AdminClient<InterceptedService<Channel, Authorize>>;

/// What a command runs with: the client, how to print, and what the hints
/// need to know.
pub(crate) struct Ctx {
    pub(crate) admin: Admin,
    /// `--output`.
    output: Output,
    /// Whether ctl dials over TLS (a refusal from a TLS daemon to a
    /// plaintext ctl looks like a transport error).
    tls: bool,
}

impl Ctx {
    /// What to print for a refused call: the code and message, and a hint
    /// for the refusals a flag explains.
    pub(crate) fn refused(&self, s: tonic::Status) -> Failure {
        let text = refusal(&s, self.tls);
        Failure::refused(&s, text)
    }

    /// Prints a command's answer: with `--output json`, `json` as one JSON
    /// document (the only place ctl prints JSON); else what `text` prints.
    pub(crate) fn answer<T: Serialize + ?Sized>(
        &self,
        json: &T,
        text: impl FnOnce(),
    ) -> Result<(), Failure> {
        match self.output {
            Output::Text => text(),
            Output::Json => {
                let doc = serde_json::to_string_pretty(json).map_err(|e| Failure {
                    code: Code::Internal.name(),
                    message: format!("cannot write the answer as JSON: {e}"),
                    text: None,
                })?;
                say!("{doc}");
            }
        }
        Ok(())
    }
}

/// Why a command failed, for either output: text prints `error: ` and the
/// text (hints included) on stderr; json prints
/// `{"error": {"code": CODE, "message": MESSAGE}}` on stderr.
#[derive(Debug)]
pub struct Failure {
    /// The gRPC code name of a refusal (`"NOT_FOUND"`); `"connection"`
    /// when the daemon could not be reached; `"INVALID_ARGUMENT"` when ctl
    /// itself cannot use its arguments (a file it cannot read, a malformed
    /// flag value).
    code: &'static str,
    /// What failed, without hints: the daemon's own message for a refusal.
    message: String,
    /// What text output prints, when it is more than the message: the
    /// message as ctl words it, with hints.
    text: Option<String>,
}

impl Failure {
    /// The daemon refused: its code and message; `text` for text output.
    pub(crate) fn refused(s: &tonic::Status, text: String) -> Failure {
        Failure {
            code: Code::from_number(s.code() as u32)
                .unwrap_or(Code::Unknown)
                .name(),
            message: s.message().to_string(),
            text: Some(text),
        }
    }

    /// Prints the failure on stderr as `output` says.
    pub fn report(&self, output: Output) {
        match output {
            Output::Text => eprintln!("error: {}", self.text.as_deref().unwrap_or(&self.message)),
            Output::Json => eprintln!(
                "{}",
                serde_json::json!({"error": {"code": self.code, "message": self.message}})
            ),
        }
    }
}

/// ctl's own errors (before or instead of a call): its arguments.
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            code: Code::InvalidArgument.name(),
            message,
            text: None,
        }
    }
}

/// An answer that does not say what it is about (`{"existed": true}`),
/// with the names the command gave: `{"instance_id": "s1", "service":
/// "shop", "existed": true}`.
#[derive(Serialize)]
pub(crate) struct About<'a, T: Serialize> {
    /// The request's names, by the request's field names.
    #[serde(flatten)]
    names: BTreeMap<&'static str, &'a str>,
    /// The daemon's answer.
    #[serde(flatten)]
    answer: &'a T,
}

impl<'a, T: Serialize> About<'a, T> {
    /// `answer`, about `names` (`[("service", "shop")]`).
    pub(crate) fn new(names: &[(&'static str, &'a str)], answer: &'a T) -> Self {
        About {
            names: names.iter().copied().collect(),
            answer,
        }
    }
}

/// The credentials `ctl` sends: the token from `--token-file`, `LB_TOKEN`,
/// or the data directory's admin token (in that order), and TLS if `--ca`.
fn credentials(args: &CtlArgs) -> Result<Credentials, String> {
    let token = match (&args.token_file, std::env::var("LB_TOKEN")) {
        (Some(file), _) => Some(tokens::read_file(file)?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t),
        _ => {
            let local = tokens::admin_token_path(&args.data_dir);
            local
                .exists()
                .then(|| tokens::read_file(&local))
                .transpose()?
        }
    };
    let mut c = Credentials::default().with_token(token.unwrap_or_default());
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    if let Some(ca) = &args.ca {
        c = c.with_ca_pem(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        c = c.with_identity_pem(read(cert)?, read(key)?);
    }
    if let Some(d) = &args.tls_domain {
        c = c.with_domain_name(d.clone());
    }
    Ok(c)
}

/// What to print for a refused call: the code and message, and a hint for
/// the refusals a missing flag explains.
fn refusal(s: &tonic::Status, tls: bool) -> String {
    let hint = match s.code() {
        tonic::Code::Unauthenticated => {
            "\nhint: pass --token-file FILE or set LB_TOKEN (on the daemon's machine, --data-dir DIR finds its admin token)"
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal if !tls => {
            "\nhint: if the daemon serves TLS, pass --ca FILE (or set LB_CA)"
        }
        _ => "",
    };
    format!("{:?}: {}{hint}", s.code(), s.message())
}

/// Why a connection failed, in the words of the innermost error that says
/// so: `connection refused` rather than `transport error`. Walks the
/// error's source chain for the I/O error underneath.
fn unreachable(server: &str, e: &(dyn std::error::Error + 'static)) -> Failure {
    let mut io = None;
    let mut last = e;
    let mut next = Some(e);
    while let Some(err) = next {
        if io.is_none() {
            io = err.downcast_ref::<std::io::Error>();
        }
        last = err;
        next = err.source();
    }
    let (why, hint) = match io.map(std::io::Error::kind) {
        Some(std::io::ErrorKind::ConnectionRefused) => (
            "connection refused".to_string(),
            "is lb-server running there? Start it with `lb-server`, or name the daemon with --server ADDR (or LB_SERVER)",
        ),
        Some(std::io::ErrorKind::TimedOut) => (
            "timed out".to_string(),
            "check the address and that a firewall lets the port through",
        ),
        _ => (
            last.to_string(),
            "check --server ADDR (or LB_SERVER); if the daemon serves TLS, pass --ca FILE",
        ),
    };
    let message = format!("cannot reach lb-server at {server}: {why}");
    Failure {
        code: "connection",
        text: Some(format!("{message}\nhint: {hint}")),
        message,
    }
}

/// How long ctl waits for the daemon to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one ctl command; the error is what to print ([`Failure::report`],
/// with `args.output`).
pub async fn run(args: CtlArgs) -> Result<(), Failure> {
    let creds = credentials(&args)?;
    let channel = lb_client::daemon::connect(&args.server, CONNECT_TIMEOUT, &creds)
        .await
        .map_err(|e| unreachable(&args.server, &e))?;
    let mut ctx = Ctx {
        admin: AdminClient::with_interceptor(channel, Authorize::new(&creds)),
        output: args.output,
        tls: creds.uses_tls(),
    };
    let timeout = args.timeout;
    let command = async {
        match args.command {
            CtlCommand::Token(c) => token::run(&mut ctx, c).await,
            CtlCommand::Services => services::list(&mut ctx).await,
            CtlCommand::Get(c) => services::get(&mut ctx, c).await,
            CtlCommand::DeleteService(c) => services::delete(&mut ctx, c).await,
            CtlCommand::SetPolicy(c) => policy::set(&mut ctx, c).await,
            CtlCommand::SetWeight(c) => instances::set_weight(&mut ctx, c).await,
            CtlCommand::Drain(c) => instances::set_drain(&mut ctx, c, true).await,
            CtlCommand::Undrain(c) => instances::set_drain(&mut ctx, c, false).await,
            CtlCommand::SetRule(c) => rules::set(&mut ctx, c).await,
            CtlCommand::DeleteRule(c) => rules::delete(&mut ctx, c).await,
            CtlCommand::SetCluster(c) => cluster::set(&mut ctx, c).await,
            CtlCommand::PutStatic(c) => instances::put_static(&mut ctx, c).await,
            CtlCommand::RemoveStatic(c) => instances::remove_static(&mut ctx, c).await,
        }
    };
    tokio::time::timeout(timeout, command)
        .await
        .unwrap_or_else(|_| {
            Err(Failure {
                code: Code::DeadlineExceeded.name(),
                message: format!(
                    "lb-server at {} did not answer within {timeout:?} (--timeout)",
                    args.server
                ),
                text: None,
            })
        })
}

/// Parses `name=value` (a parameter, a label).
pub(crate) fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

/// A refusal of a write that would have created `service`: the daemon's
/// words, and (in text) what to do.
pub(crate) fn no_such_service(ctx: &Ctx, s: tonic::Status) -> Failure {
    match s.message().split_once(';') {
        Some((what, _)) if s.code() == tonic::Code::NotFound && what.starts_with("no service ") => {
            let text = format!(
                "{what}; pass --create to make it\nhint: a typo? `lb-server ctl services` lists the services there are"
            );
            Failure::refused(&s, text)
        }
        _ => ctx.refused(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_named_from_the_source_chain() {
        #[derive(Debug)]
        struct Transport(std::io::Error);
        impl std::fmt::Display for Transport {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Transport {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Transport(std::io::ErrorKind::ConnectionRefused.into());
        let failure = unreachable("127.0.0.1:9", &e);
        let text = failure.text.as_deref().unwrap_or_default();
        assert!(
            text.starts_with("cannot reach lb-server at 127.0.0.1:9: connection refused\nhint: "),
            "{text}"
        );
        assert_eq!(failure.code, "connection");
        assert_eq!(
            failure.message, "cannot reach lb-server at 127.0.0.1:9: connection refused",
            "no hint in the message"
        );
        let e = Transport(std::io::Error::other("no route to host"));
        assert!(unreachable("h:1", &e)
            .message
            .starts_with("cannot reach lb-server at h:1: no route to host"));
    }
}
