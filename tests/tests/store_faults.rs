//! The store failing, with the real daemon: a full disk puts it in degraded
//! mode (changes refused with the cause, lists and reads still served, the
//! mode visible in `/metrics` and the log) and it leaves that mode by itself
//! when space returns; a write error sled cannot take back leaves it degraded
//! but answering, SIGTERM still ends it, and a restart brings back every
//! acknowledged change; a damaged store is refused at start instead of being
//! served in part.
//!
//! The full-disk tests mount a tmpfs as the data directory, which needs root;
//! where mounting is not possible they say so and skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lb_proto::v1::{self as pb, admin_client::AdminClient};
use lb_tests::harness::{sample, scrape, wait_until, Daemon, WAIT};
use tonic::transport::Channel;
use tonic::Code;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `at` (created); `None` where that is not
    /// allowed.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The quotas out of the way of [`heavy`] instances (the hard limits'
/// widest labels), so that the disk fills before a quota refuses one.
const NO_QUOTAS: [&str; 6] = [
    "--max-labels",
    "64",
    "--max-label-bytes",
    "318",
    "--max-list-bytes",
    "1GiB",
];

/// A static instance with 64 labels of 255 bytes (about 16 KB stored).
fn heavy(id: &str, n: u32) -> pb::PutStaticRequest {
    pb::PutStaticRequest {
        instance: Some(pb::Instance {
            service: "fill".into(),
            instance_id: id.into(),
            address: format!("10.0.{}.{}:80", n / 250, n % 250 + 1),
            weight: 1,
            labels: (0..64)
                .map(|k| (format!("k{k}"), "v".repeat(255)))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }),
        create: true,
    }
}

async fn admin(d: &Daemon) -> AdminClient<Channel> {
    AdminClient::connect(format!("http://{}", d.addr()))
        .await
        .expect("admin")
}

async fn instances(admin: &mut AdminClient<Channel>) -> Vec<String> {
    let s = admin
        .get_service(pb::GetServiceRequest {
            service: "fill".into(),
        })
        .await
        .expect("GetService answers")
        .into_inner();
    let mut ids: Vec<String> = s.instances.into_iter().map(|i| i.instance_id).collect();
    ids.sort();
    ids
}

/// Puts instances until one is refused; returns the acknowledged ids and
/// the refusal.
async fn fill(admin: &mut AdminClient<Channel>) -> (Vec<String>, tonic::Status) {
    let mut acked = Vec::new();
    loop {
        let n = acked.len() as u32;
        assert!(n < 2000, "the disk never filled");
        let id = format!("s{n:04}");
        match admin.put_static(heavy(&id, n)).await {
            Ok(_) => acked.push(id),
            Err(s) => return (acked, s),
        }
    }
}

/// Waits until the daemon's log holds `needle`.
async fn logged(d: &Daemon, needle: &str) -> bool {
    wait_until(WAIT, || d.proc.log().contains(needle)).await
}

/// While degraded: changes are refused with the cause, what was
/// acknowledged is read back and listed to clients (the subscription is
/// returned open).
async fn serves_while_degraded(
    d: &Daemon,
    admin: &mut AdminClient<Channel>,
    acked: &[String],
) -> lb_client::Subscription {
    let again = admin.put_static(heavy("later", 1999)).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");
    assert!(again.message().contains("store is failing"), "{again:?}");
    assert_eq!(instances(admin).await, acked);
    let sub = lb_client::subscribe("fill", lb_client::ClientOptions::new(d.addr()))
        .await
        .expect("subscribe");
    sub.wait_for(WAIT, |l| l.len() == acked.len())
        .await
        .expect("the acknowledged instances are listed");
    sub
}

/// Kills the daemon with -9, starts it again on `data` and returns what it
/// restored.
async fn restored(mut d: Daemon, data: &Path) -> Vec<String> {
    d.proc.kill9();
    let d = Daemon::start(data, "127.0.0.1:0", &["--restore-grace", "1h"]).expect("restart");
    instances(&mut admin(&d).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_the_daemon_until_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let Some(disk) = Tmpfs::mount(&data, "12m") else {
        eprintln!("skipped: cannot mount a tmpfs here (the test needs root)");
        return;
    };
    // Default flags: the store keeps 4 MiB free.
    let flags = [&["--metrics-listen", "127.0.0.1:0"][..], &NO_QUOTAS].concat();
    let d = Daemon::start(&data, "127.0.0.1:0", &flags).expect("daemon");
    let mut admin = admin(&d).await;

    let (mut acked, refused) = fill(&mut admin).await;
    assert!(acked.len() > 50, "only {} fitted", acked.len());
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("free on the disk"),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("--store-min-free"),
        "{refused:?}"
    );
    assert!(logged(&d, "store failing").await, "{}", d.proc.log());
    let page = scrape(&d);
    assert_eq!(sample(&page, "lb_store_degraded"), Some(1.0), "{page}");
    assert!(
        sample(&page, "lb_store_failures_total").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    serves_while_degraded(&d, &mut admin, &acked).await;

    // Space returns: the daemon recovers by itself.
    disk.resize("64m");
    let deadline = Instant::now() + WAIT;
    loop {
        match admin.put_static(heavy("after", 1998)).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(Instant::now() < deadline, "did not recover: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(logged(&d, "store recovered").await, "{}", d.proc.log());
    assert_eq!(sample(&scrape(&d), "lb_store_degraded"), Some(0.0));
    acked.push("after".into());
    acked.sort();

    // Everything acknowledged, and nothing else, survives a crash.
    assert_eq!(restored(d, &data).await, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_error_degrades_without_wedging_and_sigterm_still_ends_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let Some(disk) = Tmpfs::mount(&data, "2m") else {
        eprintln!("skipped: cannot mount a tmpfs here (the test needs root)");
        return;
    };
    // No free-space floor: sled itself runs into the full disk.
    let mut d = Daemon::start(
        &data,
        "127.0.0.1:0",
        &[
            &["--store-min-free", "0", "--drain-timeout", "2s"][..],
            &NO_QUOTAS,
        ]
        .concat(),
    )
    .expect("daemon");
    let mut admin = admin(&d).await;
    let (acked, refused) = fill(&mut admin).await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("No space left"), "{refused:?}");
    assert!(logged(&d, "store failing").await, "{}", d.proc.log());
    let _sub = serves_while_degraded(&d, &mut admin, &acked).await;

    // With space back, the daemon either reopens its store or says that it
    // needs a restart; either way it goes on answering.
    disk.resize("64m");
    let deadline = Instant::now() + WAIT;
    let recovered = loop {
        match admin.put_static(heavy("after", 1998)).await {
            Ok(_) => break true,
            Err(s) if s.message().contains("restart lb-server") => break false,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    Instant::now() < deadline,
                    "neither recovered nor said why: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!(
        "after the write error the store {}",
        if recovered {
            "reopened in place"
        } else {
            "asks for a restart"
        }
    );
    assert_eq!(
        instances(&mut admin).await.len(),
        acked.len() + usize::from(recovered)
    );

    // SIGTERM ends it within --drain-timeout (2 s) and a small bound, with a
    // client's stream still open.
    assert!(
        d.proc.terminate(Duration::from_secs(6)).expect("terminate"),
        "{}",
        d.proc.log()
    );
    let mut want = acked;
    if recovered {
        want.push("after".into());
        want.sort();
    }
    assert_eq!(restored(d, &data).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_at_start_with_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    {
        let d = Daemon::start(&data, "127.0.0.1:0", &NO_QUOTAS).expect("daemon");
        let mut admin = admin(&d).await;
        for n in 0..40 {
            admin
                .put_static(heavy(&format!("s{n:03}"), n))
                .await
                .expect("put-static");
        }
    }
    // Cut sled's log in half and drop its snapshots.
    let db = data.join("db");
    let len = std::fs::metadata(&db).expect("db").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    for e in std::fs::read_dir(&data).expect("data dir").flatten() {
        if e.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(e.path()).expect("remove snapshot");
        }
    }
    let start = || {
        Command::new(lb_tests::harness::bin("lb-server").expect("bin"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .output()
            .expect("lb-server runs")
    };
    let out = start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a damaged store: {stderr}"
    );
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(stderr.contains("committed-revision"), "{stderr}");

    // The documented way to accept what is left: remove the marker.
    std::fs::remove_file(data.join("committed-revision")).expect("marker");
    let d = Daemon::start(&data, "127.0.0.1:0", &["--restore-grace", "1h"]).expect("accepted");
    let kept = instances(&mut admin(&d).await).await;
    assert!(
        kept.len() < 40,
        "a truncated store kept {} of 40",
        kept.len()
    );
}
