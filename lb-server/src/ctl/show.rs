//! How ctl prints what the daemon answers: a service, its instances, its
//! routing, and a change as the lines it changed (before → after).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use lb_core::cluster::{Budget, Mode};
use lb_core::policy::config::Param;
use lb_core::replan::show_version;
use lb_proto::v1 as pb;

use super::say;
use crate::pb::v1::cluster_mode;

/// Milliseconds since the epoch as UTC time ("-" for 0: never).
pub(crate) fn time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    lb_core::duration::utc(Duration::from_millis(unix_ms))
}

/// An age, short: `250ms`, `3.2s`, `4m05s`, `2h10m`.
pub(crate) fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Labels as `k=v,k=v`, sorted ("-" for none).
pub(crate) fn labels(m: &HashMap<String, String>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    let sorted: BTreeMap<_, _> = m.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lines that differ between two renderings of the same settings, one
/// per name: `name: before → after` (`(none)` where a side lacks it).
pub(crate) fn diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    let none = "(none)".to_string();
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|k| {
            let (b, a) = (
                before.get(k).unwrap_or(&none),
                after.get(k).unwrap_or(&none),
            );
            (b != a).then(|| format!("{k}: {b} → {a}"))
        })
        .collect()
}

/// What a policy change changed: [`diff`] of the policy's name and every
/// parameter, leaving out a parameter of one policy only (e.g. load_aware's
/// `blackout` when the policy changes) that is at its default on the side
/// that has it: it says nothing the policy's name does not.
pub(crate) fn policy_diff(before: &pb::Policy, after: &pb::Policy) -> Vec<String> {
    let (b, a) = (policy_lines(before), policy_lines(after));
    let defaulted = |k: &String, lines: &BTreeMap<String, String>| {
        Param::named(k).is_some_and(|p| lines.get(k) == Some(&p.default_value()))
    };
    let noise = |k: &String| {
        (!a.contains_key(k) && defaulted(k, &b)) || (!b.contains_key(k) && defaulted(k, &a))
    };
    let (b, a): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        b.clone().into_iter().filter(|(k, _)| !noise(k)).collect(),
        a.clone().into_iter().filter(|(k, _)| !noise(k)).collect(),
    );
    diff(&b, &a)
}

/// A policy as the lines [`diff`] compares: the policy's name and every
/// parameter.
pub(crate) fn policy_lines(p: &pb::Policy) -> BTreeMap<String, String> {
    let mut lines: BTreeMap<String, String> = p.params.clone().into_iter().collect();
    lines.insert("policy".into(), p.name.clone());
    lines
}

/// Cluster settings as the lines [`diff`] compares: the service's mode,
/// each method's, and the retry budget.
pub(crate) fn cluster_lines(c: &pb::ClusterConfig) -> BTreeMap<String, String> {
    let mut lines = BTreeMap::new();
    let mode = c.default_mode.clone().unwrap_or_default();
    lines.insert("mode".to_string(), self::mode(&mode));
    for (m, mode) in &c.methods {
        lines.insert(format!("method {m}"), self::mode(mode));
    }
    lines.insert("retry budget".to_string(), budget(c));
    lines.insert(
        "deadline".to_string(),
        match c.deadline_ms {
            0 => "none".to_string(),
            ms => lb_core::duration::show(Duration::from_millis(u64::from(ms))),
        },
    );
    lines
}

fn budget(c: &pb::ClusterConfig) -> String {
    let d = Budget::default();
    format!(
        "{}% + {}/s",
        c.budget_percent.unwrap_or(d.percent),
        c.budget_min_per_sec.unwrap_or(d.min_per_sec)
    )
}

/// Prints a change to `service`'s `what`: the lines it changed, or that
/// nothing did.
pub(crate) fn change(service: &str, what: &str, lines: &[String]) {
    if lines.is_empty() {
        say!("{service} ({what}): nothing changed");
        return;
    }
    say!("{service} ({what}):");
    for l in lines {
        say!("  {l}");
    }
}

/// A mode as the daemon sent it, rendered from its domain value.
pub(crate) fn mode(m: &pb::ClusterMode) -> String {
    // Modes of a multicast name their route, which this conversion is not
    // asked to check against the service's rules.
    let route = [m.route.as_str()];
    match cluster_mode(m.clone(), &route) {
        Ok(mode) => Mode::to_string(&mode),
        Err(e) => format!("unreadable mode ({e})"),
    }
}

/// What `ctl get` shows of a service.
pub(crate) fn service(s: &pb::ServiceStatus, all: bool) {
    let policy = s.policy.clone().unwrap_or_default();
    say!("service   {}", s.name);
    params(&policy, &s.non_default_params, all);
    say!(
        "list      version {}, {} entries, max share error {:.2}%",
        show_version(s.version),
        s.list_len,
        s.max_share_error * 100.0
    );
    let grpclb = s.grpclb.as_ref().map_or(0, |g| g.streams);
    say!(
        "clients   {} subscribed{}, {} calls dropped, {} with no backend",
        s.subscribers,
        if grpclb > 0 {
            format!(" (and {grpclb} grpclb stream(s))")
        } else {
            String::new()
        },
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
    routing(s);
    instances(&s.instances);
}

/// The policy and its parameters: those not at their default (marked `*`,
/// with the default), or with `all` every one.
fn params(policy: &pb::Policy, set: &[String], all: bool) {
    let params: BTreeMap<_, _> = policy.params.iter().collect();
    let hidden = params.len().saturating_sub(set.len());
    let note = match (all, set.is_empty(), hidden) {
        (true, _, _) => String::new(),
        (false, true, _) => "  (every parameter at its default; --all lists them)".into(),
        (false, false, 0) => String::new(),
        (false, false, n) => format!("  ({n} more at their defaults; --all lists them)"),
    };
    say!("policy    {}{note}", policy.name);
    let width = params
        .keys()
        .filter(|k| all || set.contains(k))
        .map(|k| k.len())
        .max()
        .unwrap_or(0);
    for (k, v) in params {
        let changed = set.contains(k);
        if !all && !changed {
            continue;
        }
        let mark = if changed { "*" } else { " " };
        let default = if !changed {
            String::new()
        } else if k == "max_list_len" {
            "  (default: the daemon's --max-list-len)".into()
        } else {
            Param::named(k).map_or(String::new(), |p| {
                format!("  (default {})", p.default_value())
            })
        };
        say!("  {mark} {k:<width$} = {v}{default}");
    }
}

/// The cluster modes, shedding and rules of a service.
pub(crate) fn routing(s: &pb::ServiceStatus) {
    if let Some(c) = &s.cluster {
        let d = c.default_mode.clone().unwrap_or_default();
        let deadline = match c.deadline_ms {
            0 => String::new(),
            ms => format!(
                ", deadline {}",
                lb_core::duration::show(Duration::from_millis(u64::from(ms)))
            ),
        };
        say!(
            "cluster   {} (retry budget {}){deadline}",
            mode(&d),
            budget(c)
        );
        let methods: BTreeMap<_, _> = c.methods.iter().collect();
        for (m, md) in methods {
            say!("  {m}: {}", mode(md));
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
    rules(&s.rules);
}

/// The rules of a service, in order, with what each selects now.
pub(crate) fn rules(rules: &[pb::RuleStatus]) {
    if rules.is_empty() {
        return;
    }
    say!("rules     (first match wins)");
    for (i, rs) in rules.iter().enumerate() {
        let r = rs.rule.clone().unwrap_or_default();
        let mut when = Vec::new();
        if !r.when_request.is_empty() {
            when.push(format!("request {}", labels(&r.when_request)));
        }
        if !r.when_client.is_empty() {
            when.push(format!("client {}", labels(&r.when_client)));
        }
        if !r.when_client_id.is_empty() {
            when.push(format!("client_id {}", r.when_client_id));
        }
        let target = if r.instance.is_empty() {
            format!("select {}", labels(&r.select))
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

/// The instances table: one line each, then its labels and token. The
/// columns scripts read come first, in the order they always had; zone and
/// the age of the last load report follow.
pub(crate) fn instances(list: &[pb::InstanceStatus]) {
    say!(
        "{:<20} {:<22} {:<9} {:>6} {:>8} {:>7} {:>6} {:>6} {:>7} {:>9} {:>8} {:>7} {:<12} {:>10}",
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
        "EWMAms",
        "ZONE",
        "REPORT_AGE"
    );
    for i in list {
        let load = i.load.clone().unwrap_or_default();
        let reported = match (&i.load, i.attachment.as_str()) {
            (Some(_), _) => age(i.load_age_ms),
            (None, "static") => "static".into(),
            (None, _) => "never".into(),
        };
        say!(
            "{:<20} {:<22} {:<9} {:>6} {:>8} {:>7.3} {:>6.1} {:>6.1} {:>7} {:>9} {:>8} {:>7.2} {:<12} {:>10}{}",
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
            if i.zone.is_empty() { "-" } else { &i.zone },
            reported,
            match (i.drained, i.health.as_str()) {
                (true, _) => "  DRAINED".to_string(),
                (false, "ejected") => format!(
                    "  EJECTED {:.1}s more ({}x)",
                    i.ejected_for_ms as f64 / 1000.0,
                    i.times_ejected
                ),
                (false, "circuit_open") => "  CIRCUIT OPEN".to_string(),
                _ if i.key_spill > 0.0 => format!(
                    "  KEYS SPILL {:.0}% (past load_bound)",
                    i.key_spill * 100.0
                ),
                _ => String::new(),
            }
        );
        say!("{:<20} labels {}  token {}", "", labels(&i.labels), i.token);
        if !i.failed_by_code.is_empty() {
            let codes: BTreeMap<_, _> = i.failed_by_code.iter().collect();
            let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            say!("{:<20} failures by status code: {}", "", codes.join(" "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_diff_lists_only_what_changed() {
        let before = lines(&[
            ("policy", "load_aware"),
            ("hysteresis", "0.05"),
            ("blackout", "2s"),
        ]);
        let after = lines(&[
            ("policy", "load_aware"),
            ("hysteresis", "0.1"),
            ("blackout", "2s"),
        ]);
        assert_eq!(diff(&before, &after), ["hysteresis: 0.05 → 0.1"]);
        assert!(diff(&before, &before).is_empty());
        // A policy change: the old policy's own parameters go, the new one's come.
        let rr = lines(&[("policy", "round_robin"), ("hysteresis", "0.1")]);
        assert_eq!(
            diff(&after, &rr),
            ["blackout: 2s → (none)", "policy: load_aware → round_robin"]
        );
        assert_eq!(
            diff(&rr, &after),
            ["blackout: (none) → 2s", "policy: round_robin → load_aware"]
        );
    }

    #[test]
    fn a_policy_change_leaves_out_the_defaults_of_the_old_policy() {
        let policy = |name: &str, kv: &[(&str, &str)]| pb::Policy {
            name: name.into(),
            params: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let la = policy(
            "load_aware",
            &[
                ("hysteresis", "0.05"),
                ("blackout", "2s"),
                ("expiry", "180s"),
            ],
        );
        let rr = policy("round_robin", &[("hysteresis", "0.05")]);
        assert_eq!(policy_diff(&la, &rr), ["policy: load_aware → round_robin"]);
        let tuned = policy(
            "load_aware",
            &[
                ("hysteresis", "0.05"),
                ("blackout", "5s"),
                ("expiry", "180s"),
            ],
        );
        assert_eq!(
            policy_diff(&tuned, &rr),
            ["blackout: 5s → (none)", "policy: load_aware → round_robin"]
        );
        assert_eq!(
            policy_diff(&tuned, &la),
            ["blackout: 5s → 2s"],
            "back to a default, in the same policy"
        );
    }

    #[test]
    fn cluster_changes_read_as_modes() {
        let failover = |attempts: u32| pb::ClusterMode {
            attempts,
            backoff_ms: 10,
            backoff_max_ms: 100,
            retry_on: vec!["UNAVAILABLE".into()],
            ..pb::ClusterMode::default()
        };
        let before = pb::ClusterConfig {
            default_mode: Some(failover(3)),
            budget_percent: Some(20),
            budget_min_per_sec: Some(10),
            ..pb::ClusterConfig::default()
        };
        let mut after = before.clone();
        after.default_mode = Some(failover(5));
        after.methods.insert(
            "/a.B/C".into(),
            pb::ClusterMode {
                kind: pb::cluster_mode::Kind::Failfast as i32,
                ..pb::ClusterMode::default()
            },
        );
        assert_eq!(
            diff(&cluster_lines(&before), &cluster_lines(&after)),
            [
                "method /a.B/C: (none) → failfast",
                "mode: failover attempts=3 backoff=10ms..100ms retry_on=UNAVAILABLE → failover attempts=5 backoff=10ms..100ms retry_on=UNAVAILABLE",
            ]
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(250), "250ms");
        assert_eq!(age(3_240), "3.2s");
        assert_eq!(age(245_000), "4m05s");
        assert_eq!(age(7_800_000), "2h10m");
    }
}
