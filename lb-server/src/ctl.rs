//! `lb-server ctl …`: the operator CLI, a thin client of the `Admin` service.
//!
//! Every command prints a human-readable table (or `--json`-free plain
//! lines), and exits non-zero with the daemon's message when it refuses.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use lb_proto::v1::{self as pb, admin_client::AdminClient};

use lb_client::credentials::{Authorize, Credentials};
use lb_core::cluster::{Collect, Kind, Mode};
use lb_core::policy::config::params_help;

use crate::auth::token;
use crate::pb::v1::{cluster_mode, cluster_mode_pb};

/// Prints one line of output. A closed stdout (`ctl services | head -1`)
/// ends the command quietly, as a Unix tool does, instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Flags shared by every `ctl` command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Address of the lb-server to talk to.
    #[arg(long, global = true, default_value = "127.0.0.1:7400")]
    pub server: String,
    /// The daemon's data directory: on the daemon's machine, its generated
    /// admin token (`admin.token`) is used when no other token is given.
    #[arg(long, global = true, default_value = "lb-data")]
    pub data_dir: PathBuf,
    /// A file holding the bearer token to send (else `LB_TOKEN`, else the
    /// data directory's admin token).
    #[arg(long, global = true, env = "LB_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Dial the daemon over TLS, trusting this CA certificate (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for a daemon that requires one (mTLS).
    #[arg(long, global = true, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The key of `--cert` (PEM).
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Check the daemon's certificate against this name instead of the
    /// `--server` host.
    #[arg(long, global = true, requires = "ca")]
    pub tls_domain: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Create, list and revoke the tokens callers authenticate with.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List services with their policy, instance count and list version.
    Services,
    /// Show a service: its policy with every parameter, and each instance's
    /// live load, effective weight and share of the list.
    Get {
        /// Service name.
        service: String,
    },
    /// Set a service's balancing policy (persisted; pushed to clients at once).
    ///
    /// Policies: round_robin, weighted_round_robin, random, weighted_random,
    /// hash, consistent_hash, least_connections, least_active,
    /// fastest_response, load_aware (the default).
    #[command(after_help = params_help())]
    SetPolicy {
        /// Service name.
        service: String,
        /// Policy name.
        policy: String,
        /// A parameter, `name=value` (repeatable; see below).
        #[arg(long = "param", short = 'p', value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// Override an instance's registered weight (0 clears the override).
    SetWeight {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
        /// 1..=10000, or 0 to go back to the registered weight.
        weight: u32,
    },
    /// Take an instance out of every list and ask its backend to drain.
    Drain {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
    },
    /// Put a drained instance back (it ramps up with slow start if configured).
    Undrain {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
    },
    /// Add a routing rule, or replace the rule of the same name (persisted;
    /// pushed to clients at once). Rules are tried in order; the first whose
    /// conditions all hold picks the instances.
    ///
    /// Example (A/B test): `ctl set-rule shop ab --when group=B --select group=B --exclusive`
    SetRule {
        /// Service name.
        service: String,
        /// Rule name (unique in the service).
        name: String,
        /// Request label the call must carry, `key=value` (repeatable).
        #[arg(long = "when", value_parser = parse_param)]
        when: Vec<(String, String)>,
        /// Subscriber label the client must have, `key=value` (repeatable;
        /// `zone=` matches the client's zone).
        #[arg(long = "when-client", value_parser = parse_param)]
        when_client: Vec<(String, String)>,
        /// Only this client id.
        #[arg(long = "client-id", default_value = "")]
        client_id: String,
        /// Instance label to select, `key=value` (repeatable; `zone=` matches
        /// the instance's zone).
        #[arg(long = "select", value_parser = parse_param, conflicts_with = "instance")]
        select: Vec<(String, String)>,
        /// One instance id (direct routing, for debugging).
        #[arg(long)]
        instance: Option<String>,
        /// The selected instances serve only traffic matching this rule.
        #[arg(long)]
        exclusive: bool,
        /// When nothing is selected, fail the call instead of using the default list.
        #[arg(long)]
        strict: bool,
        /// Position in the rule order (0 = first).
        #[arg(long)]
        position: Option<u32>,
    },
    /// Remove a routing rule.
    DeleteRule {
        /// Service name.
        service: String,
        /// Rule name.
        name: String,
    },
    /// Set what a failed call does next (cluster mode), for the whole service
    /// or one method; executed by lb-client's `Subscription::call`.
    ///
    /// Modes: failover (default: --attempts 3), failfast, failsafe,
    /// forking (--forks K), broadcast, multicast (--route RULE).
    SetCluster {
        /// Service name.
        service: String,
        /// Mode: failover, failfast, failsafe, forking, broadcast, multicast.
        mode: String,
        /// Only for this method ("/package.Service/Method"); default: the service.
        #[arg(long)]
        method: Option<String>,
        /// The mode's settings.
        #[command(flatten)]
        flags: ModeFlags,
        /// Retry budget: retries may add this % of calls (0..=100).
        #[arg(long)]
        budget_percent: Option<u32>,
        /// Retry budget: plus this many retries per second.
        #[arg(long)]
        budget_min_per_sec: Option<u32>,
        /// Default deadline of a call whose caller set none (`2s`, `500ms`;
        /// `0`: none); covers retries and hedges; a caller's own wins.
        #[arg(long, value_parser = lb_core::duration::parse)]
        deadline: Option<std::time::Duration>,
        /// Remove the method's own mode (it follows the service's again).
        #[arg(long, requires = "method")]
        clear: bool,
    },
    /// Add or update a static instance: one with no backend process behind
    /// it (persisted; never expires; removed only by remove-static).
    ///
    /// Example: `ctl put-static echo.example.com legacy-1 10.0.0.7:50051 --weight 2`
    PutStatic {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
        /// Where clients connect: host:port.
        address: String,
        /// Weight (1..=10000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Zone.
        #[arg(long, default_value = "")]
        zone: String,
        /// Label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_param)]
        labels: Vec<(String, String)>,
        /// Token sent to the backend as `lb-token` (default: derived from
        /// the service and instance id).
        #[arg(long, default_value = "")]
        token: String,
    },
    /// Remove a static instance.
    RemoveStatic {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
    },
}

/// `ctl token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once: the daemon keeps only its digest).
    ///
    /// Example: `ctl token create --role backend --service 'shop-*' --name shop-deploy`
    Create {
        /// backend (register and report), client (subscribe, grpclb),
        /// admin-read-only, or admin.
        #[arg(long)]
        role: String,
        /// A service it covers, a name or a glob such as `shop-*`
        /// (repeatable; backend and client roles need at least one).
        #[arg(long = "service")]
        services: Vec<String>,
        /// A unique name: what audit logs, `token list` and `token revoke`
        /// call it.
        #[arg(long)]
        name: String,
        /// Instead of a secret, grant the role to client certificates with
        /// this identity (SPIFFE ID or subject; mTLS).
        #[arg(long)]
        identity: Option<String>,
    },
    /// List tokens: name, role, services, created, last used.
    List,
    /// Revoke a token: calls with it are refused and the streams it opened
    /// end within a second.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// The credentials `ctl` sends: the token from `--token-file`, `LB_TOKEN`,
/// or the data directory's admin token (in that order), and TLS if `--ca`.
fn credentials(args: &CtlArgs) -> Result<Credentials, String> {
    let token = match (&args.token_file, std::env::var("LB_TOKEN")) {
        (Some(file), _) => Some(token::read_file(file)?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t),
        _ => {
            let local = token::admin_token_path(&args.data_dir);
            local
                .exists()
                .then(|| token::read_file(&local))
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
            "\nhint: if the daemon serves TLS, pass --ca FILE"
        }
        _ => "",
    };
    format!("{:?}: {}{hint}", s.code(), s.message())
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

/// Runs one ctl command; the error is what to print.
pub async fn run(args: CtlArgs) -> Result<(), String> {
    let creds = credentials(&args)?;
    let channel = lb_client::daemon::connect(&args.server, Duration::from_secs(5), &creds)
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("cannot reach lb-server at {}: {e}{cause}", args.server)
        })?;
    let mut client = AdminClient::with_interceptor(channel, Authorize::new(&creds));
    let tls = creds.uses_tls();
    let refused = |s: tonic::Status| refusal(&s, tls);
    let drain = matches!(args.command, CtlCommand::Drain { .. });
    match args.command {
        CtlCommand::Token(cmd) => token_command(&mut client, cmd).await.map_err(refused)?,
        CtlCommand::Services => {
            let r = client
                .list_services(pb::ListServicesRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            say!(
                "{:<32} {:<22} {:>9} {:>22}",
                "SERVICE",
                "POLICY",
                "INSTANCES",
                "VERSION"
            );
            for s in r.services {
                say!(
                    "{:<32} {:<22} {:>9} {:>22}",
                    s.name,
                    s.policy,
                    s.instances,
                    s.version
                );
            }
        }
        CtlCommand::Get { service } => {
            let s = client
                .get_service(pb::GetServiceRequest { service })
                .await
                .map_err(refused)?
                .into_inner();
            print_service(&s);
        }
        CtlCommand::SetPolicy {
            service,
            policy,
            params,
        } => {
            let s = client
                .set_policy(pb::SetPolicyRequest {
                    service,
                    policy: Some(pb::Policy {
                        name: policy,
                        params: params.into_iter().collect(),
                    }),
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_service(&s);
        }
        CtlCommand::SetWeight {
            service,
            instance,
            weight,
        } => {
            let i = client
                .set_weight(pb::SetWeightRequest {
                    service,
                    instance_id: instance,
                    weight,
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_instances(&[i]);
        }
        CtlCommand::Drain { service, instance } | CtlCommand::Undrain { service, instance } => {
            let i = client
                .set_drain(pb::SetDrainRequest {
                    service,
                    instance_id: instance,
                    drain,
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_instances(&[i]);
        }
        CtlCommand::SetRule {
            service,
            name,
            when,
            when_client,
            client_id,
            select,
            instance,
            exclusive,
            strict,
            position,
        } => {
            let s = client
                .put_rule(pb::PutRuleRequest {
                    service,
                    rule: Some(pb::Rule {
                        name,
                        when_request: when.into_iter().collect(),
                        when_client: when_client.into_iter().collect(),
                        when_client_id: client_id,
                        select: select.into_iter().collect(),
                        instance: instance.unwrap_or_default(),
                        exclusive,
                        strict,
                    }),
                    position,
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_service(&s);
        }
        CtlCommand::DeleteRule { service, name } => {
            let s = client
                .delete_rule(pb::DeleteRuleRequest { service, name })
                .await
                .map_err(refused)?
                .into_inner();
            print_service(&s);
        }
        CtlCommand::SetCluster {
            service,
            mode,
            method,
            flags,
            budget_percent,
            budget_min_per_sec,
            deadline,
            clear,
        } => {
            let current = client
                .get_service(pb::GetServiceRequest {
                    service: service.clone(),
                })
                .await
                .ok()
                .and_then(|s| s.into_inner().cluster)
                .unwrap_or_default();
            let m = mode_from_flags(&mode, flags)?;
            let mut cfg = current;
            match (method, clear) {
                (Some(method), true) => {
                    cfg.methods.remove(&method);
                }
                (Some(method), false) => {
                    cfg.methods.insert(method, m);
                }
                (None, _) => cfg.default_mode = Some(m),
            }
            if budget_percent.is_some() {
                cfg.budget_percent = budget_percent;
            }
            if budget_min_per_sec.is_some() {
                cfg.budget_min_per_sec = budget_min_per_sec;
            }
            if let Some(d) = deadline {
                // Out of range is sent as such, for the daemon to refuse.
                cfg.deadline_ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
            }
            let s = client
                .set_cluster(pb::SetClusterRequest {
                    service,
                    cluster: Some(cfg),
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_service(&s);
        }
        CtlCommand::PutStatic {
            service,
            instance,
            address,
            weight,
            zone,
            labels,
            token,
        } => {
            let i = client
                .put_static(pb::PutStaticRequest {
                    instance: Some(pb::Instance {
                        service,
                        instance_id: instance,
                        address,
                        zone,
                        weight,
                        labels: labels.into_iter().collect(),
                        version: String::new(),
                        token,
                    }),
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_instances(&[i]);
        }
        CtlCommand::RemoveStatic { service, instance } => {
            let r = client
                .remove_static(pb::RemoveStaticRequest {
                    service,
                    instance_id: instance.clone(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            if r.existed {
                say!("removed {instance}");
            } else {
                say!("no instance {instance}: nothing to remove");
            }
        }
    }
    Ok(())
}

async fn token_command<T>(
    client: &mut AdminClient<T>,
    cmd: TokenCommand,
) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    match cmd {
        TokenCommand::Create {
            role,
            services,
            name,
            identity,
        } => {
            let r = client
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    services,
                    identity: identity.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if r.token.is_empty() {
                if let Some(i) = &r.info {
                    say!("bound certificate identity {:?} to {}", i.identity, i.name);
                }
            } else {
                // Only the token on stdout, so that `> file` captures it.
                say!("{}", r.token);
                eprintln!("(shown once: the daemon keeps only its digest)");
            }
        }
        TokenCommand::List => {
            let r = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner();
            say!(
                "{:<24} {:<16} {:<28} {:<20} {:<20} {}",
                "NAME",
                "ROLE",
                "SERVICES",
                "CREATED",
                "LAST USED",
                "IDENTITY"
            );
            for t in r.tokens {
                say!(
                    "{:<24} {:<16} {:<28} {:<20} {:<20} {}",
                    t.name,
                    t.role,
                    if t.services.is_empty() {
                        "-".into()
                    } else {
                        t.services.join(",")
                    },
                    show_time(t.created_unix_ms),
                    show_time(t.last_used_unix_ms),
                    if t.identity.is_empty() {
                        "-"
                    } else {
                        &t.identity
                    },
                );
            }
        }
        TokenCommand::Revoke { name } => {
            let r = client
                .revoke_token(pb::RevokeTokenRequest { name: name.clone() })
                .await?
                .into_inner();
            if r.existed {
                say!("revoked {name}");
            } else {
                say!("no token named {name}");
            }
        }
    }
    Ok(())
}

/// Milliseconds since the epoch as UTC time ("-" for 0: never).
fn show_time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    lb_core::duration::utc(Duration::from_millis(unix_ms))
}

fn show_labels(m: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = m.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `ctl set-cluster`'s mode settings (unset ones take the mode's defaults).
#[derive(Debug, Args)]
pub struct ModeFlags {
    /// failover: total attempts (1..=10).
    #[arg(long)]
    pub attempts: Option<u32>,
    /// failover: base backoff in ms (doubling, jittered).
    #[arg(long)]
    pub backoff_ms: Option<u32>,
    /// failover: largest backoff in ms.
    #[arg(long)]
    pub backoff_max_ms: Option<u32>,
    /// failover: status names to retry (repeatable; default UNAVAILABLE).
    #[arg(long = "retry-on")]
    pub retry_on: Vec<String>,
    /// forking: instances at once (2..=10).
    #[arg(long)]
    pub forks: Option<u32>,
    /// broadcast/multicast: first, all or none.
    #[arg(long)]
    pub collect: Option<String>,
    /// broadcast/multicast: fail above this percentage of failures.
    #[arg(long)]
    pub max_failure_percent: Option<u32>,
    /// multicast: the routing rule whose instances are called.
    #[arg(long)]
    pub route: Option<String>,
}

/// The mode `name` with the flags given, on top of the mode's defaults. A
/// flag that does not belong to the mode is sent as given, and the daemon
/// refuses it naming the field.
fn mode_from_flags(name: &str, f: ModeFlags) -> Result<pb::ClusterMode, String> {
    use pb::cluster_mode::Collect as C;
    let kind = Kind::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown mode {name:?}: {}", known.join(", "))
    })?;
    let mut m = cluster_mode_pb(&Mode::of(kind));
    if let Some(v) = f.attempts {
        m.attempts = v;
    }
    if let Some(v) = f.backoff_ms {
        m.backoff_ms = v;
        // Unset, the ceiling follows the base (10 ×).
        m.backoff_max_ms = 0;
    }
    if let Some(v) = f.backoff_max_ms {
        m.backoff_max_ms = v;
    }
    if !f.retry_on.is_empty() {
        m.retry_on = f.retry_on;
    }
    if let Some(v) = f.forks {
        m.forks = v;
    }
    if let Some(c) = f.collect {
        m.collect = match Collect::parse(&c) {
            Some(Collect::First) => C::First,
            Some(Collect::All) => C::All,
            Some(Collect::None) => C::None,
            None => return Err(format!("--collect {c:?}: first, all or none")),
        } as i32;
    }
    if let Some(v) = f.max_failure_percent {
        m.max_failure_percent = v;
    }
    if let Some(r) = f.route {
        m.route = r;
    }
    Ok(m)
}

/// A mode as the daemon sent it, rendered from its domain value.
fn show_mode(m: &pb::ClusterMode) -> String {
    // Modes of a multicast name their route, which this conversion is not
    // asked to check against the service's rules.
    let route = [m.route.as_str()];
    match cluster_mode(m.clone(), &route) {
        Ok(mode) => mode.to_string(),
        Err(e) => format!("unreadable mode ({e})"),
    }
}

fn print_routing(s: &pb::ServiceStatus) {
    if let Some(c) = &s.cluster {
        let d = c.default_mode.clone().unwrap_or_default();
        let budget = lb_core::cluster::Budget::default();
        say!(
            "cluster   {} (retry budget {}% + {}/s){}",
            show_mode(&d),
            c.budget_percent.unwrap_or(budget.percent),
            c.budget_min_per_sec.unwrap_or(budget.min_per_sec),
            match c.deadline_ms {
                0 => String::new(),
                ms => format!(", deadline {}ms", ms),
            }
        );
        let methods: BTreeMap<_, _> = c.methods.iter().collect();
        for (m, mode) in methods {
            say!("  {m}: {}", show_mode(mode));
        }
    }
    if s.drop_fraction > 0.0 || s.utilization > 0.0 {
        say!(
            "shedding  utilization {:.1}%, backlog {:.0} ms, dropping {:.1}% of calls",
            s.utilization * 100.0,
            s.backlog_seconds * 1000.0,
            s.drop_fraction * 100.0
        );
    }
    if s.rules.is_empty() {
        return;
    }
    say!("rules     (first match wins)");
    for (i, rs) in s.rules.iter().enumerate() {
        let r = rs.rule.clone().unwrap_or_default();
        let mut when = Vec::new();
        if !r.when_request.is_empty() {
            when.push(format!("request {}", show_labels(&r.when_request)));
        }
        if !r.when_client.is_empty() {
            when.push(format!("client {}", show_labels(&r.when_client)));
        }
        if !r.when_client_id.is_empty() {
            when.push(format!("client_id {}", r.when_client_id));
        }
        let target = if r.instance.is_empty() {
            format!("select {}", show_labels(&r.select))
        } else {
            format!("instance {}", r.instance)
        };
        say!(
            "  {i}. {:<16} when {} -> {}{}{}  [{} instance(s){}]",
            r.name,
            when.join(" and "),
            target,
            if r.exclusive { " exclusive" } else { "" },
            if r.strict { " strict" } else { "" },
            rs.selected,
            if rs.selected == 0 {
                ": MATCHES NO INSTANCE"
            } else {
                ""
            }
        );
    }
}

fn print_service(s: &pb::ServiceStatus) {
    let policy = s.policy.clone().unwrap_or_default();
    say!("service   {}", s.name);
    say!("policy    {}", policy.name);
    let params: BTreeMap<_, _> = policy.params.into_iter().collect();
    for (k, v) in params {
        say!("  {k} = {v}");
    }
    say!(
        "list      version {}, {} entries, max share error {:.2}%",
        s.version,
        s.list_len,
        s.max_share_error * 100.0
    );
    say!(
        "clients   {} dropped, {} with no backend",
        s.dropped,
        s.no_backend
    );
    if let Some(g) = s
        .grpclb
        .as_ref()
        .filter(|g| g.streams > 0 || g.calls_started > 0)
    {
        let drops: BTreeMap<_, _> = g.dropped_by_token.iter().collect();
        let drops: Vec<String> = drops.iter().map(|(t, n)| format!("{t}:{n}")).collect();
        say!(
            "grpclb    {} stream(s); calls {} started, {} finished, {} known received, {} failed to send; dropped {}",
            g.streams,
            g.calls_started,
            g.calls_finished,
            g.calls_known_received,
            g.calls_failed_to_send,
            if drops.is_empty() { "0".to_string() } else { drops.join(" ") }
        );
    }
    print_routing(s);
    print_instances(&s.instances);
}

fn print_instances(list: &[pb::InstanceStatus]) {
    say!(
        "{:<20} {:<22} {:<9} {:>6} {:>8} {:>7} {:>6} {:>6} {:>7} {:>9} {:>8} {:>7}",
        "INSTANCE",
        "ADDRESS",
        "ATTACHED",
        "WEIGHT",
        "OVERRIDE",
        "EFFECT",
        "SHARE%",
        "CPU%",
        "ACTIVE",
        "CALLS",
        "FAILED",
        "EWMAms"
    );
    for i in list {
        let load = i.load.clone().unwrap_or_default();
        say!(
            "{:<20} {:<22} {:<9} {:>6} {:>8} {:>7.3} {:>6.1} {:>6.1} {:>7} {:>9} {:>8} {:>7.2}{}",
            i.instance_id,
            i.address,
            i.attachment,
            i.static_weight,
            if i.weight_override == 0 {
                "-".to_string()
            } else {
                i.weight_override.to_string()
            },
            i.effective_weight,
            i.share * 100.0,
            load.cpu_utilization * 100.0,
            load.active_requests,
            i.calls_finished,
            i.calls_failed,
            i.latency_ewma_ms,
            match (i.drained, i.health.as_str()) {
                (true, _) => "  DRAINED".to_string(),
                (false, "ejected") => format!(
                    "  EJECTED {:.1}s more ({}x)",
                    i.ejected_for_ms as f64 / 1000.0,
                    i.times_ejected
                ),
                (false, "circuit_open") => "  CIRCUIT OPEN".to_string(),
                _ => String::new(),
            }
        );
        say!("{:<20} token {}", "", i.token);
        if !i.failed_by_code.is_empty() {
            let codes: BTreeMap<_, _> = i.failed_by_code.iter().collect();
            let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            say!("{:<20} failures by status code: {}", "", codes.join(" "));
        }
    }
}
