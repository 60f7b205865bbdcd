//! Real processes for end-to-end tests and probes.
//!
//! Binaries are found next to the running executable (`target/<profile>/`), so
//! `cargo test --workspace` (which builds `lb-server` and this crate's binaries)
//! is all a test needs. Every child's stderr goes to a log file in its own
//! directory; [`Proc::log`] reads it back for failure messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use lb_client::{subscribe, ClientOptions, PickList, Subscription};

use crate::echo::echo_client::EchoClient;
use crate::echo::WhoamiRequest;

/// The repository's root (this crate's parent).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The python of the stock-client virtualenv (`scripts/python-env.sh`
/// makes it on first use, from `tests/python/requirements.txt`).
pub fn stock_python() -> String {
    let env = Command::new("bash")
        .arg(repo_root().join("scripts/python-env.sh"))
        .output()
        .expect("run scripts/python-env.sh");
    assert!(
        env.status.success(),
        "scripts/python-env.sh failed (it needs python3 with venv, and PyPI): {}",
        String::from_utf8_lossy(&env.stderr)
    );
    String::from_utf8_lossy(&env.stdout).trim().to_string()
}

/// Where the workspace's binaries of the running profile are.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// The path of workspace binary `name`, checked to exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not found; build it first (`cargo build --workspace`, or `cargo test --workspace` which builds it)",
            p.display()
        );
    }
    Ok(p)
}

/// A running child process that announced its address.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// The address it printed.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args…`, waits (up to `wait`) for a stdout line
    /// containing `listening on ADDR`, and returns with that address.
    pub fn spawn(program: &Path, args: &[String], log: PathBuf, wait: Duration) -> Result<Proc> {
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create log {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("LB_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout for the whole life of the child so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(a) = line.split("listening on ").nth(1) {
                        let _ = tx.send(a.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(wait) {
            Ok(a) => a.parse().with_context(|| format!("bad address {a:?}"))?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not announce its address within {wait:?}; log:\n{}",
                    program.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Ok(Proc { child, addr, log })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `wait` for a clean exit; returns its success.
    pub fn terminate(&mut self, wait: Duration) -> Result<bool> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.success());
            }
            if std::time::Instant::now() >= deadline {
                self.kill9();
                bail!("did not exit within {wait:?} of SIGTERM");
            }
            // Polling a child's exit has no async notification in std; a short
            // poll bounded by the deadline above is the standard way.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGSTOP, and waits (up to 10 s) until every thread of the process
    /// is stopped: it freezes, its sockets stay open (the kernel still
    /// accepts connections and data for it). [`Proc::cont`] resumes it;
    /// dropping the `Proc` kills it stopped or not (SIGKILL needs no CONT).
    pub fn stop(&self) -> Result<()> {
        self.signal("-STOP")?;
        // kill(2) returns before the threads have stopped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.all_threads_stopped() {
            if std::time::Instant::now() >= deadline {
                bail!("process {} did not stop within 10 s", self.pid());
            }
            // No notification exists for another process's state; a short
            // poll bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Whether every thread's state in `/proc` is stopped (`T`).
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // "tid (comm) S ...": the state follows the last ')'.
                    let after = stat.rsplit_once(')')?.1;
                    after.trim_start().chars().next()
                })
                .is_some_and(|state| state == 'T')
        })
    }

    /// SIGCONT: resumes a process [`Proc::stop`] froze.
    pub fn cont(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {sig} failed");
        }
        Ok(())
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An `lb-server` child with its data directory.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub proc: Proc,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
}

impl Daemon {
    /// Starts `lb-server --listen LISTEN --data-dir DATA_DIR extra…`; logs go
    /// to `DATA_DIR.log`.
    pub fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Daemon> {
        let mut args = vec![
            "--listen".to_string(),
            listen.to_string(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = data_dir.with_extension("log");
        let proc = Proc::spawn(&bin("lb-server")?, &args, log, Duration::from_secs(20))?;
        Ok(Daemon {
            proc,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The daemon's address as lb-client wants it.
    pub fn addr(&self) -> String {
        self.proc.addr.to_string()
    }
}

/// Settings of one `echo-backend` child.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Service to register in.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Static weight.
    pub weight: u32,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl BackendSpec {
    /// A backend of `service` named `id` with `weight`.
    pub fn new(service: &str, id: &str, weight: u32) -> Self {
        BackendSpec {
            service: service.into(),
            id: id.into(),
            weight,
            extra: Vec::new(),
        }
    }

    /// Starts it against `daemon`, logging to `log_dir/ID.log`.
    pub fn start(&self, daemon: &str, log_dir: &Path) -> Result<Proc> {
        let mut args: Vec<String> = [
            "--daemon",
            daemon,
            "--service",
            &self.service,
            "--id",
            &self.id,
            "--weight",
            &self.weight.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let log = log_dir.join(format!("{}.log", self.id));
        Proc::spawn(&bin("echo-backend")?, &args, log, Duration::from_secs(20))
    }
}

/// `GET /metrics` from the address the daemon logged (it must run with
/// `--metrics-listen`), without a token; the whole response.
pub fn scrape(d: &Daemon) -> String {
    scrape_with(d, None).expect("scrape /metrics")
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
/// For conditions with no notification to wait on (another process's state).
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The instances of `service` as the daemon at `addr` shows them
/// (`Admin/GetService`); none if it cannot be asked or knows no such service.
pub async fn instances_of(addr: &str, service: &str) -> Vec<lb_proto::v1::InstanceStatus> {
    use lb_proto::v1::{admin_client::AdminClient, GetServiceRequest};
    let Ok(mut admin) = AdminClient::connect(format!("http://{addr}")).await else {
        return Vec::new();
    };
    admin
        .get_service(GetServiceRequest {
            service: service.into(),
        })
        .await
        .map(|s| s.into_inner().instances)
        .unwrap_or_default()
}

/// Runs `lb-server ctl --server DAEMON ARGS…`; returns its stdout, or an
/// error with its stderr when it fails.
pub fn ctl(daemon: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("lb-server")?)
        .arg("ctl")
        .args(["--server", daemon])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "lb-server ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `GET /metrics` from the address the daemon logged (`--metrics-listen`),
/// with `bearer` as its token if given; the whole response, head included.
pub fn scrape_with(d: &Daemon, bearer: Option<&str>) -> Result<String> {
    raw_get(d, "/metrics", bearer)
}

/// The address of the daemon's HTTP listener (`--http-listen`), from its
/// log.
pub fn http_addr(d: &Daemon) -> Result<String> {
    d.proc
        .log()
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the HTTP listener's address is not logged"))
}

/// The whole HTTP/1.0 response to `GET path` on the daemon's HTTP listener
/// (`--http-listen`, found in its log).
fn raw_get(d: &Daemon, path: &str, bearer: Option<&str>) -> Result<String> {
    let addr = http_addr(d)?;
    let mut conn = std::net::TcpStream::connect(addr)?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: lb\r\n{auth}\r\n")?;
    let mut page = String::new();
    conn.read_to_string(&mut page)?;
    Ok(page)
}

/// `GET path` on the daemon's HTTP listener: the status code and the body.
pub fn http_get(d: &Daemon, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
    let page = raw_get(d, path, bearer)?;
    let (head, body) = page
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP response: {page:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// The value of the first sample line of `page` that starts with `name`
/// (labels included in `name` if given).
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// TCP connections open to `port` on this host, counted at the server's
/// end: the ESTABLISHED sockets whose local port is `port` in
/// /proc/net/tcp and /proc/net/tcp6 (hex fields, state 01). For a daemon
/// on `127.0.0.1:0` that is its clients' connections, whatever process
/// holds them.
pub fn connections_to(port: u16) -> usize {
    let port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|l| {
                    let mut fields = l.split_whitespace().skip(1);
                    let local = fields.next().unwrap_or("");
                    let state = fields.nth(1).unwrap_or("");
                    state == "01" && local.rsplit(':').next() == Some(port.as_str())
                })
                .map(|_| ())
                .collect::<Vec<_>>()
        })
        .count()
}

/// How long e2e tests wait for a condition.
pub const WAIT: Duration = Duration::from_secs(10);

/// The distinct instance ids of a list.
pub fn ids(list: &PickList) -> BTreeSet<String> {
    list.servers()
        .iter()
        .map(|e| e.instance_id().to_string())
        .collect()
}

/// A set of names.
pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A daemon and its backends, in one temporary directory.
pub struct Cluster {
    /// Holds the data directory and the logs.
    pub dir: tempfile::TempDir,
    /// The lb-server.
    pub daemon: Daemon,
    /// echo-backends by instance id.
    pub backends: BTreeMap<String, Proc>,
}

impl Cluster {
    /// Starts lb-server with `daemon_flags`, then each backend.
    pub fn start(daemon_flags: &[&str], backends: &[BackendSpec]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", daemon_flags)
            .expect("start lb-server");
        let mut c = Cluster {
            dir,
            daemon,
            backends: BTreeMap::new(),
        };
        for b in backends {
            c.add(b);
        }
        c
    }

    /// Starts one more backend.
    pub fn add(&mut self, b: &BackendSpec) {
        let p = b
            .start(&self.daemon.addr(), self.dir.path())
            .expect("start echo-backend");
        self.backends.insert(b.id.clone(), p);
    }

    /// Subscribes to `service` on this daemon.
    pub async fn client(&self, service: &str) -> Subscription {
        subscribe(service, ClientOptions::new(self.daemon.addr()))
            .await
            .expect("subscribe")
    }
}

/// Waits until the list holds exactly `want`.
pub async fn wait_ids(sub: &Subscription, want: &BTreeSet<String>) -> Arc<PickList> {
    match sub.wait_for(WAIT, |l| ids(l) == *want).await {
        Ok(l) => l,
        Err(_) => panic!(
            "list never became {want:?}; last: {:?}",
            ids(&sub.current())
        ),
    }
}

/// Makes `n` sequential Whoami calls through lb-client; counts answers per instance.
pub async fn call(sub: &Subscription, n: usize) -> (BTreeMap<String, u64>, u64) {
    let mut client = EchoClient::new(sub.channel());
    let mut counts = BTreeMap::new();
    let mut errors = 0;
    for _ in 0..n {
        match client.whoami(WhoamiRequest {}).await {
            Ok(r) => *counts.entry(r.into_inner().instance_id).or_insert(0) += 1,
            Err(_) => errors += 1,
        }
    }
    (counts, errors)
}

/// A client's `stats` message saying that every one of `calls` calls to
/// `instance` failed, in one run (what a forging client sends).
pub fn failure_stats(instance: &str, calls: u64) -> lb_proto::v1::SubscribeRequest {
    use lb_proto::v1 as pb;
    pb::SubscribeRequest {
        msg: Some(pb::subscribe_request::Msg::Stats(pb::ClientStats {
            instances: vec![pb::InstanceStats {
                instance_id: instance.into(),
                calls_started: calls,
                calls_finished: calls,
                calls_failed: calls,
                latency_sum_us: calls.saturating_mul(1000),
                consecutive_failures: calls,
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// The line of `ctl get`'s output `shown` that describes `instance`.
pub fn instance_line(shown: &str, instance: &str) -> String {
    shown
        .lines()
        .find(|l| l.split_whitespace().next() == Some(instance))
        .unwrap_or_else(|| panic!("no line for {instance} in:\n{shown}"))
        .to_string()
}

/// `lb-server ctl --server SERVER --data-dir DATA_DIR` (so it finds the
/// daemon's generated admin token), with none of the `LB_*` variables of
/// the environment the tests run in: add the arguments and run it.
pub fn ctl_command(server: &str, data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin("lb-server").expect("lb-server is built"));
    cmd.args(["ctl", "--server", server, "--data-dir"])
        .arg(data_dir);
    for var in [
        "LB_TOKEN",
        "LB_TOKEN_FILE",
        "LB_SERVER",
        "LB_DATA_DIR",
        "LB_CA",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The stdout of a command that must have succeeded (`what` names it in
/// the panic, with its stderr).
pub fn succeeded(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
