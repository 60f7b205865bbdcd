//! The sled store under crashes: the real daemon is killed with -9 100 times
//! while writers stream acknowledged writes at it (lease registrations,
//! static instances and weight overrides, several in flight at once). Each
//! time the daemon must open its data directory again, and every write it
//! had acknowledged before the kill must be there; writes that were in
//! flight may or may not have landed, but never half.
//!
//! The kill point is a seeded draw of how many acknowledgements to wait
//! for (1..=24), so the run is the same every time and needs no sleep.

use std::collections::{BTreeMap, BTreeSet};

use lb_proto::v1::{self as pb, admin_client::AdminClient, registry_client::RegistryClient};
use lb_tests::harness::Daemon;
use tokio::sync::mpsc;

const KILLS: usize = 100;
/// Longest wait for one write's answer. A request in flight when the daemon
/// dies normally fails at once (the connection resets), but tonic's client
/// was once seen to leave one pending forever, with no socket and no timer
/// left (at kill 79 of a CI run); a write not answered by then counts as
/// not acknowledged, which is what it is.
const RPC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const SERVICES: u64 = 4;

/// One acknowledged write.
#[derive(Debug, Clone)]
enum Acked {
    /// A lease registration of `(service, instance)`.
    Registered(String, String),
    /// A static instance.
    Static(String, String),
    /// A weight override on a static instance (each is set once).
    Weight(String, String, u32),
}

/// xorshift64*: the kill points, seeded.
fn draw(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn instance(service: &str, id: &str, port: u64) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        instance_id: id.into(),
        address: format!("127.0.0.1:{}", 1024 + port % 60_000),
        weight: 1,
        ..Default::default()
    }
}

/// Registers leases `r-<n>` until the daemon goes away; reports each ack.
async fn registrations(addr: String, first: u64, acks: mpsc::UnboundedSender<Acked>) {
    let Ok(mut c) = RegistryClient::connect(format!("http://{addr}")).await else {
        return;
    };
    for n in first.. {
        let service = format!("crash-{}", n % SERVICES);
        let id = format!("r-{n}");
        let req = pb::RegisterRequest {
            instance: Some(instance(&service, &id, n)),
            ttl_ms: 3_600_000,
        };
        let answered = tokio::time::timeout(RPC_WAIT, c.register(req)).await;
        if !matches!(answered, Ok(Ok(_))) || acks.send(Acked::Registered(service, id)).is_err() {
            return;
        }
    }
}

/// Puts static instances `s-<n>` and overrides each one's weight once,
/// until the daemon goes away; reports each ack.
async fn admin_writes(addr: String, first: u64, acks: mpsc::UnboundedSender<Acked>) {
    let Ok(mut c) = AdminClient::connect(format!("http://{addr}")).await else {
        return;
    };
    for n in first.. {
        let service = format!("crash-{}", n % SERVICES);
        let id = format!("s-{n}");
        let put = pb::PutStaticRequest {
            instance: Some(instance(&service, &id, 30_000 + n)),
            create: true,
        };
        let answered = tokio::time::timeout(RPC_WAIT, c.put_static(put)).await;
        if !matches!(answered, Ok(Ok(_)))
            || acks
                .send(Acked::Static(service.clone(), id.clone()))
                .is_err()
        {
            return;
        }
        let weight = 2 + (n % 97) as u32;
        let set = pb::SetWeightRequest {
            service: service.clone(),
            instance_id: id.clone(),
            weight,
        };
        let answered = tokio::time::timeout(RPC_WAIT, c.set_weight(set)).await;
        if !matches!(answered, Ok(Ok(_))) || acks.send(Acked::Weight(service, id, weight)).is_err()
        {
            return;
        }
    }
}

/// Every acknowledged write is in the daemon at `addr`.
async fn check(addr: &str, acked: &[Acked], kill: usize) {
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin connects");
    let services: BTreeSet<&str> = acked
        .iter()
        .map(|a| match a {
            Acked::Registered(s, _) | Acked::Static(s, _) | Acked::Weight(s, _, _) => s.as_str(),
        })
        .collect();
    // (service, instance) → (attachment, weight override)
    let mut found: BTreeMap<(String, String), (String, u32)> = BTreeMap::new();
    for s in services {
        let status = admin
            .get_service(pb::GetServiceRequest { service: s.into() })
            .await
            .unwrap_or_else(|e| panic!("after kill {kill}: get {s}: {e}"))
            .into_inner();
        for i in status.instances {
            found.insert(
                (s.to_string(), i.instance_id),
                (i.attachment, i.weight_override),
            );
        }
    }
    for a in acked {
        match a {
            Acked::Registered(s, id) => {
                let (attachment, _) = found
                    .get(&(s.clone(), id.clone()))
                    .unwrap_or_else(|| panic!("after kill {kill}: registration {s}/{id} lost"));
                assert_eq!(attachment, "restored", "{s}/{id}");
            }
            Acked::Static(s, id) => {
                let (attachment, _) = found
                    .get(&(s.clone(), id.clone()))
                    .unwrap_or_else(|| panic!("after kill {kill}: static {s}/{id} lost"));
                assert_eq!(attachment, "static", "{s}/{id}");
            }
            Acked::Weight(s, id, w) => {
                let (_, over) = found[&(s.clone(), id.clone())];
                assert_eq!(over, *w, "after kill {kill}: weight of {s}/{id}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_kill_9s_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Restored leases stay for the whole run (nobody renews them).
    let flags = ["--restore-grace", "1h"];
    let mut daemon = Daemon::start(&data, "127.0.0.1:0", &flags).expect("first start");
    let mut acked: Vec<Acked> = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = 0u64;
    for kill in 1..=KILLS {
        let addr = daemon.addr();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Two registration streams and one admin stream, each numbering its
        // writes from its own block so no two writes share a key.
        let base = next;
        next += 3_000;
        let writers = [
            tokio::spawn(registrations(addr.clone(), base, tx.clone())),
            tokio::spawn(registrations(addr.clone(), base + 1_000, tx.clone())),
            tokio::spawn(admin_writes(addr.clone(), base + 2_000, tx)),
        ];
        let target = 1 + draw(&mut seed) % 24;
        let mut got = 0;
        while got < target {
            let a = rx
                .recv()
                .await
                .expect("the writers run while the daemon does");
            acked.push(a);
            got += 1;
        }
        // Writes are still in flight: kill now.
        daemon.proc.kill9();
        for w in writers {
            let _ = w.await;
        }
        // Acknowledged between our last receive and the kill: they count too.
        while let Ok(a) = rx.try_recv() {
            acked.push(a);
        }
        daemon = Daemon::start(&data, "127.0.0.1:0", &flags)
            .unwrap_or_else(|e| panic!("the store did not open after kill {kill}: {e:#}"));
        check(&daemon.addr(), &acked, kill).await;
    }
    assert!(acked.len() >= KILLS, "{} writes acknowledged", acked.len());
}
