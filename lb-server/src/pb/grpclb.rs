//! `grpc.lb.v1` ⇄ domain: a stock client's initial request names a
//! service, its `ClientStats` become [`GrpclbStats`], and a plan becomes one
//! client's list of servers (addresses as bytes, tokens, drop entries).
//! See [`crate::api::grpclb`] for the protocol.

use std::net::{IpAddr, SocketAddr};

use lb_core::model::{check_service, ClientIdentity, FieldError, GrpclbStats, DROP_TOKEN};
use lb_core::policy::view::client_view;
use lb_core::replan::Published;
use lb_proto::grpclb as pb;

/// Longest initial-request name accepted (grpclb: "less than 256 bytes").
pub const MAX_NAME_LEN: usize = 255;

/// The service an initial request's `name` selects: the name without a
/// trailing `:port`, which must then be a valid service name.
pub fn service_for(name: &str) -> Result<String, FieldError> {
    service_named(name, "initial_request.name")
}

/// The service a target's `name` (`host` or `host:port`, as a stock client
/// dials it) selects, with `field` naming it in errors: the name without a
/// trailing `:port`, which must then be a valid service name.
pub fn service_named(name: &str, field: &str) -> Result<String, FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "missing (empty)"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("{} bytes, longer than {MAX_NAME_LEN}", name.len()),
        ));
    }
    let host = match name.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(FieldError::new(
                    field,
                    format!("port {port:?} is not in 1..=65535"),
                ));
            }
            host
        }
        _ => name,
    };
    check_service(host).map_err(|e| {
        FieldError::new(
            field,
            format!("{name:?} does not name a service (after dropping \":port\": {e})"),
        )
    })?;
    Ok(host.to_string())
}

/// A grpclb `ClientStats` message, validated.
pub fn stats(s: pb::ClientStats) -> Result<GrpclbStats, FieldError> {
    let count = |v: i64, name: &str| {
        u64::try_from(v).map_err(|_| FieldError::new(name, format!("{v} is negative")))
    };
    let mut dropped_by_token = Vec::with_capacity(s.calls_finished_with_drop.len());
    for (i, d) in s.calls_finished_with_drop.into_iter().enumerate() {
        let n = count(d.num_calls, "num_calls")
            .map_err(|e| e.within(&format!("calls_finished_with_drop[{i}]")))?;
        dropped_by_token.push((d.load_balance_token, n));
    }
    let st = GrpclbStats {
        calls_started: count(s.num_calls_started, "num_calls_started")?,
        calls_finished: count(s.num_calls_finished, "num_calls_finished")?,
        failed_to_send: count(
            s.num_calls_finished_with_client_failed_to_send,
            "num_calls_finished_with_client_failed_to_send",
        )?,
        known_received: count(
            s.num_calls_finished_known_received,
            "num_calls_finished_known_received",
        )?,
        dropped_by_token,
    };
    st.check()?;
    Ok(st)
}

/// The IP address and port of `address` (`ip:port`), without DNS.
pub fn literal(address: &str) -> Option<SocketAddr> {
    address.parse().ok()
}

/// The grpclb entries of one client's view of `p` (client number `seq`), in
/// order. `resolve` gives the address of a hostname instance, `None` leaves
/// the instance out.
pub fn servers(
    p: &Published,
    seq: u64,
    resolve: impl Fn(&str) -> Option<SocketAddr>,
) -> Vec<pb::Server> {
    let view = client_view(&p.plan, p.version, seq, &ClientIdentity::default());
    let encoded: Vec<Option<pb::Server>> = p
        .plan
        .servers
        .iter()
        .map(|s| {
            if s.drop {
                return Some(pb::Server {
                    drop: true,
                    load_balance_token: DROP_TOKEN.to_string(),
                    ..pb::Server::default()
                });
            }
            let addr = literal(&s.address).or_else(|| resolve(&s.address))?;
            Some(pb::Server {
                ip_address: match addr.ip() {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                },
                port: i32::from(addr.port()),
                load_balance_token: s.token.clone(),
                drop: false,
            })
        })
        .collect();
    view.order
        .iter()
        .filter_map(|&i| encoded.get(i as usize).cloned().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::policy::{PlanServer, ServicePlan};
    use lb_core::replan::Published;

    #[test]
    fn names_map_to_services() {
        assert_eq!(service_for("echo.test:50051").unwrap(), "echo.test");
        assert_eq!(service_for("echo.test").unwrap(), "echo.test");
        assert_eq!(service_for("echo:1").unwrap(), "echo");
        let e = service_for("").unwrap_err();
        assert_eq!(e.field, "initial_request.name");
        assert!(e.reason.contains("missing"), "{e}");
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(service_for(&long).unwrap_err().reason.contains("longer"));
        // Not a port: kept, and then not a valid service name.
        assert!(service_for("echo:http").is_err());
        // A port out of range is refused, not dropped.
        for bad in ["echo:0", "echo:65536", "echo:999999"] {
            let e = service_for(bad).unwrap_err();
            assert!(e.reason.contains("1..=65535"), "{bad}: {e}");
        }
        assert!(service_for("[::1]:80").is_err());
        assert!(service_for("bad name:80").is_err());
    }

    #[test]
    fn stats_refuse_negative_counts_and_bad_tokens() {
        let ok = stats(pb::ClientStats {
            num_calls_started: 10,
            num_calls_finished: 9,
            num_calls_finished_with_client_failed_to_send: 1,
            num_calls_finished_known_received: 6,
            calls_finished_with_drop: vec![pb::ClientStatsPerToken {
                load_balance_token: DROP_TOKEN.into(),
                num_calls: 2,
            }],
            ..pb::ClientStats::default()
        })
        .unwrap();
        assert_eq!(ok.calls_started, 10);
        assert_eq!(ok.dropped(), 2);
        let e = stats(pb::ClientStats {
            num_calls_finished: -1,
            ..pb::ClientStats::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "num_calls_finished");
        let e = stats(pb::ClientStats {
            calls_finished_with_drop: vec![pb::ClientStatsPerToken {
                load_balance_token: "has space".into(),
                num_calls: 1,
            }],
            ..pb::ClientStats::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "calls_finished_with_drop[0].load_balance_token");
    }

    fn server(id: &str, address: &str) -> PlanServer {
        PlanServer {
            instance_id: id.into(),
            address: address.into(),
            zone: String::new(),
            tier: 0,
            drop: false,
            token: format!("tok-{id}"),
            labels: Default::default(),
        }
    }

    #[test]
    fn lists_carry_bytes_ports_tokens_and_drops_in_order() {
        let plan = ServicePlan {
            servers: vec![
                server("a", "127.0.0.11:81"),
                server("b", "[::1]:82"),
                server("c", "backend.internal:83"),
                PlanServer::drop_entry(),
            ],
            weights: vec![1.0; 4],
            order: vec![0, 1, 1, 2, 3],
            ..ServicePlan::default()
        };
        let p = Published { version: 1, plan };
        let resolve =
            |a: &str| (a == "backend.internal:83").then(|| "10.0.0.3:83".parse().unwrap());
        let list = servers(&p, 0, resolve);
        // Client 0 of version 1 follows some rotation of the period: every
        // entry is there, with its multiplicity.
        assert_eq!(list.len(), 5);
        let find = |tok: &str| {
            list.iter()
                .filter(|s| s.load_balance_token == tok)
                .collect::<Vec<_>>()
        };
        let a = find("tok-a");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ip_address, vec![127, 0, 0, 11]);
        assert_eq!(a[0].port, 81);
        let b = find("tok-b");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].ip_address, {
            let mut v = vec![0u8; 15];
            v.push(1);
            v
        });
        assert_eq!(find("tok-c")[0].ip_address, vec![10, 0, 0, 3]);
        let d = find(DROP_TOKEN);
        assert_eq!(d.len(), 1);
        assert!(d[0].drop && d[0].ip_address.is_empty());
        // An unresolvable hostname leaves its instance out.
        let list = servers(&p, 0, |_| None);
        assert_eq!(list.len(), 4);
        assert!(list.iter().all(|s| s.load_balance_token != "tok-c"));
    }
}
