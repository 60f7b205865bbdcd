//! `lb-server ctl …`: the operator CLI, a thin client of the `Admin` service.
//!
//! Every command prints a human-readable table (or `--json`-free plain
//! lines), and exits non-zero with the daemon's message when it refuses.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use lb_proto::v1::{self as pb, admin_client::AdminClient};

use crate::policy::config::PARAMS_HELP;

/// Flags shared by every `ctl` command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Address of the lb-server to talk to.
    #[arg(long, global = true, default_value = "127.0.0.1:7400")]
    pub server: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
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
    #[command(after_help = PARAMS_HELP)]
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
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

/// Runs one ctl command; the error is what to print.
pub async fn run(args: CtlArgs) -> Result<(), String> {
    let uri = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut client = AdminClient::connect(uri)
        .await
        .map_err(|e| format!("cannot reach lb-server at {}: {e}", args.server))?;
    let refused = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let drain = matches!(args.command, CtlCommand::Drain { .. });
    match args.command {
        CtlCommand::Services => {
            let r = client
                .list_services(pb::ListServicesRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            println!(
                "{:<32} {:<22} {:>9} {:>22}",
                "SERVICE", "POLICY", "INSTANCES", "VERSION"
            );
            for s in r.services {
                println!(
                    "{:<32} {:<22} {:>9} {:>22}",
                    s.name, s.policy, s.instances, s.version
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
    }
    Ok(())
}

fn print_service(s: &pb::ServiceStatus) {
    let policy = s.policy.clone().unwrap_or_default();
    println!("service   {}", s.name);
    println!("policy    {}", policy.name);
    let params: BTreeMap<_, _> = policy.params.into_iter().collect();
    for (k, v) in params {
        println!("  {k} = {v}");
    }
    println!(
        "list      version {}, {} entries, max share error {:.2}%",
        s.version,
        s.list_len,
        s.max_share_error * 100.0
    );
    println!(
        "clients   {} dropped, {} with no backend",
        s.dropped, s.no_backend
    );
    print_instances(&s.instances);
}

fn print_instances(list: &[pb::InstanceStatus]) {
    println!(
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
        println!(
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
            if i.drained { "  DRAINED" } else { "" }
        );
    }
}
