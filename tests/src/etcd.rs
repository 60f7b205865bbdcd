//! A real etcd cluster on loopback for the replica tests: `etcd` from
//! Debian's `etcd-server` package (`.ci/run` installs it), every member a
//! child process with its data in a temporary directory, killed with -9
//! and restarted on demand.
//!
//! Ports are picked by binding port 0 and letting go (etcd takes URLs, not
//! listeners); a start that loses the port to another process is retried.
//! Elections are made fast (heartbeat 50 ms, election timeout 500 ms;
//! etcd's tuning guide allows it on loopback), so a killed leader is
//! replaced in about a second.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `etcd` binary: `$LB_ETCD`, or `etcd` on the `PATH`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("LB_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// Whether an `etcd` binary can be run here.
pub fn available() -> bool {
    Command::new(etcd_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One member: its ports, data directory and process (if running).
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    _tmp: tempfile::TempDir,
    token: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits (up to 30 s) until the cluster has a
    /// leader and takes writes.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        if !available() {
            bail!(
                "no etcd binary ({}): install Debian's etcd-server (`.ci/run` does), or set LB_ETCD",
                etcd_binary().display()
            );
        }
        let mut last = None;
        for _attempt in 0..3 {
            match Self::try_start(n) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn try_start(n: usize) -> Result<EtcdCluster> {
        let tmp = tempfile::tempdir()?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                dir: tmp.path().join(format!("m{i}")),
                child: None,
            });
        }
        let token = format!("lb-test-{}-{}", std::process::id(), free_port()?);
        let mut cluster = EtcdCluster {
            members,
            _tmp: tmp,
            token,
        };
        for i in 0..n {
            cluster.spawn(i, "new")?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<()> {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(m.dir.with_extension("log"))?;
        let child = Command::new(etcd_binary())
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                &self.token,
                "--initial-cluster-state",
                state,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", etcd_binary().display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// The members' client addresses (`127.0.0.1:PORT`), in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    /// `etcd://` URL of every member, with `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints().join(","))
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].dir.with_extension("log")).unwrap_or_default()
    }

    /// `kill -9` member `i` (its data stays).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes member `i` (SIGSTOP): its connections stay open and
    /// unanswered, as behind a partition. [`EtcdCluster::cont`] resumes it.
    pub fn stop(&self, i: usize) -> Result<()> {
        self.signal(i, "-STOP")
    }

    /// Resumes a member [`EtcdCluster::stop`] froze.
    pub fn cont(&self, i: usize) -> Result<()> {
        self.signal(i, "-CONT")
    }

    fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let Some(child) = &self.members[i].child else {
            bail!("member {i} is not running");
        };
        let ok = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} member {i} failed");
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory (it rejoins).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill9(i);
        self.spawn(i, "existing")
    }

    /// Waits until the running members agree on a leader and a write
    /// through each of them succeeds.
    pub fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        loop {
            let healthy = running.iter().all(|e| {
                Command::new(etcd_binary().with_file_name("etcdctl"))
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        e,
                        "--command-timeout=1s",
                        "put",
                        "/lb-test/health",
                        "ok",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if healthy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not become healthy within {within:?}; first member's log:\n{}",
                    tail(&self.log(0), 4000)
                );
            }
            // etcd offers no readiness notification to a parent process; a
            // short poll bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
