//! `lb-hop`: what the proxy hop costs. The same unary `Whoami` calls go
//! (a) directly from the client to the backend, picked by `lb-client` (the
//! lookaside path: the balancer is not in the request path), and (b) through
//! an nginx gRPC proxy on loopback, what many users would deploy instead.
//!
//! nginx runs twice in one process: once as its best configuration (an
//! `upstream` block with `keepalive`, connections to the backend reused) and
//! once as the plain `grpc_pass grpc://host:port;` (a new upstream connection
//! per call). Calls are sequential (one in flight) so each figure is a
//! latency, not a queue. The paths take turns in blocks, so a slow moment of
//! the machine hits every path alike.
//!
//! nginx is found on `PATH` or at `/usr/sbin/nginx` (`--nginx` overrides);
//! `scripts/bench.sh` installs it. Prints a Markdown table and writes
//! `OUT/hop.json` in the benchmarks' common format.
//!
//! `target/release/lb-hop --calls 5000 --out bench/results`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_bench::machine::machine;
use lb_bench::stats::{nearest_rank, round};
use lb_client::{subscribe, ClientOptions};
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;
use lb_tests::harness::{BackendSpec, Daemon};
use tonic::transport::{Channel, Endpoint};

/// Measures the latency of a proxy hop against the direct (lookaside) path.
#[derive(Debug, Parser)]
struct Args {
    /// Measured calls per path.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Unmeasured warm-up calls per path.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Calls per turn: the paths alternate in blocks of this size.
    #[arg(long, default_value_t = 250)]
    block: usize,
    /// Smaller run (1,000 calls, 200 warm-up) for `scripts/bench.sh --quick`.
    #[arg(long)]
    quick: bool,
    /// The nginx binary (default: `nginx` on PATH, then /usr/sbin/nginx).
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// Directory for `hop.json`.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// Finds nginx, or says how to get it.
fn find_nginx(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        bail!("--nginx {}: no such file", p.display());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
    {
        let p = dir.join("nginx");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "nginx not found on PATH or in /usr/sbin; install it (`apt-get install -y nginx`, \
         which scripts/bench.sh does) or pass --nginx PATH"
    )
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether this process runs as root (nginx then needs `user root;` so its
/// worker can use the private temp directory).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// nginx's configuration: two listeners in front of one backend.
fn nginx_config(dir: &Path, backend: u16, keepalive_port: u16, plain_port: u16) -> String {
    let d = dir.display();
    let user = if is_root() { "user root;\n" } else { "" };
    format!(
        r#"# Written by lb-hop; nginx runs in the foreground as its child.
{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream echo_keepalive {{
        server 127.0.0.1:{backend};
        keepalive 16;
    }}
    # Best case: upstream connections are reused.
    server {{
        listen 127.0.0.1:{keepalive_port} http2;
        location / {{
            grpc_pass grpc://echo_keepalive;
        }}
    }}
    # The one-liner: a new upstream connection per call.
    server {{
        listen 127.0.0.1:{plain_port} http2;
        location / {{
            grpc_pass grpc://127.0.0.1:{backend};
        }}
    }}
}}
"#
    )
}

/// nginx as a child; stopped (its worker too) on drop, whatever happened.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path, config: &str) -> anyhow::Result<Nginx> {
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Nginx {
            child,
            dir: dir.to_path_buf(),
        })
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// Waits until every port accepts connections.
    async fn wait_ready(&mut self, ports: &[u16], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for &port in ports {
            loop {
                if let Some(status) = self.child.try_wait()? {
                    bail!("nginx exited ({status}) at start:\n{}", self.logs());
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "nginx did not listen on {port} within {timeout:?}:\n{}",
                        self.logs()
                    );
                }
                // Another process's readiness has no notification to wait on.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The master's children (its worker), from /proc.
    fn workers(&self) -> Vec<String> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers = self.workers();
        // SIGTERM is nginx's fast shutdown: the master stops its worker, then exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A worker outlives a master killed with -9; make sure none is left.
        for w in workers {
            if Path::new(&format!("/proc/{w}")).exists() {
                let _ = Command::new("kill").args(["-KILL", &w]).status();
            }
        }
    }
}

/// One path's client and its samples.
struct Route {
    name: &'static str,
    client: EchoClient<BoxChannel>,
    samples_us: Vec<f64>,
    errors: u64,
}

/// The two channel types behind one generated client.
type BoxChannel = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Box<dyn std::error::Error + Send + Sync>,
>;

fn boxed_tonic(ch: Channel) -> BoxChannel {
    use tower::ServiceExt;
    tower::util::BoxCloneSyncService::new(ch.map_err(|e| Box::new(e) as _))
}

fn boxed_lb(ch: lb_client::LbChannel) -> BoxChannel {
    tower::util::BoxCloneSyncService::new(ch)
}

async fn nginx_channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Makes `n` sequential calls on `p`; records them if `measure`.
async fn run_block(p: &mut Route, n: usize, measure: bool) {
    for _ in 0..n {
        let t0 = Instant::now();
        let r = p.client.whoami(WhoamiRequest {}).await;
        let us = t0.elapsed().as_secs_f64() * 1e6;
        match r {
            Ok(reply) if reply.get_ref().instance_id == "b1" => {
                if measure {
                    p.samples_us.push(us);
                }
            }
            _ => p.errors += 1,
        }
    }
}

/// p50, p99 (nearest rank) and mean; NaN when `v` is empty.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |q: f64| nearest_rank(&s, q).unwrap_or(f64::NAN);
    (q(0.5), q(0.99), s.iter().sum::<f64>() / s.len() as f64)
}

async fn measure(args: &Args, calls: usize, warmup: usize) -> anyhow::Result<()> {
    let nginx_bin = find_nginx(args.nginx.as_deref())?;
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[])?;
    let backend = BackendSpec::new("hop", "b1", 1).start(&daemon.addr(), dir.path())?;

    let ngx_dir = dir.path().join("nginx");
    std::fs::create_dir(&ngx_dir)?;
    let (ka_port, plain_port) = (free_port()?, free_port()?);
    let config = nginx_config(&ngx_dir, backend.addr.port(), ka_port, plain_port);
    let mut nginx = Nginx::start(&nginx_bin, &ngx_dir, &config)?;
    nginx
        .wait_ready(&[ka_port, plain_port], Duration::from_secs(10))
        .await?;

    let sub = subscribe("hop", ClientOptions::new(daemon.addr())).await?;
    sub.wait_for(Duration::from_secs(20), |l| !l.servers().is_empty())
        .await
        .context("the backend never appeared in the client's list")?;

    let mut paths = vec![
        Route {
            name: "direct (lb-client)",
            client: EchoClient::new(boxed_lb(sub.channel())),
            samples_us: Vec::with_capacity(calls),
            errors: 0,
        },
        Route {
            name: "via nginx (upstream keepalive)",
            client: EchoClient::new(boxed_tonic(nginx_channel(ka_port).await?)),
            samples_us: Vec::with_capacity(calls),
            errors: 0,
        },
        Route {
            name: "via nginx (plain grpc_pass)",
            client: EchoClient::new(boxed_tonic(nginx_channel(plain_port).await?)),
            samples_us: Vec::with_capacity(calls),
            errors: 0,
        },
    ];
    for p in &mut paths {
        run_block(p, warmup, false).await;
    }
    let block = args.block.max(1);
    let mut done = 0;
    let mut turn = 0;
    while done < calls {
        let n = block.min(calls - done);
        // Rotate who goes first, so no path always follows the same one.
        for k in 0..paths.len() {
            let i = (turn + k) % paths.len();
            run_block(&mut paths[i], n, true).await;
        }
        done += n;
        turn += 1;
    }
    drop(nginx);
    sub.close();

    for p in &paths {
        if p.samples_us.is_empty() {
            bail!("{}: every call failed ({} errors)", p.name, p.errors);
        }
    }
    let stats: Vec<(f64, f64, f64)> = paths.iter().map(|p| summary(&p.samples_us)).collect();
    let (d50, d99, dmean) = stats[0];
    let columns = [
        "path",
        "calls",
        "errors",
        "p50 µs",
        "p99 µs",
        "mean µs",
        "ratio p50 vs direct",
        "ratio p99 vs direct",
        "ratio mean vs direct",
    ];
    let mut rows = Vec::new();
    println!("| {} |", columns.join(" | "));
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (p, &(p50, p99, mean)) in paths.iter().zip(&stats) {
        let r = (p50 / d50, p99 / d99, mean / dmean);
        println!(
            "| {} | {} | {} | {p50:.1} | {p99:.1} | {mean:.1} | {:.2} | {:.2} | {:.2} |",
            p.name,
            p.samples_us.len(),
            p.errors,
            r.0,
            r.1,
            r.2
        );
        rows.push(serde_json::json!([
            p.name,
            p.samples_us.len(),
            p.errors,
            round(p50, 1),
            round(p99, 1),
            round(mean, 1),
            round(r.0, 2),
            round(r.1, 2),
            round(r.2, 2)
        ]));
    }
    let version = Command::new(&nginx_bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let command = format!(
        "target/release/lb-hop --calls {calls} --warmup {warmup} --out {}",
        args.out.display()
    );
    let json = serde_json::json!({
        "bench": "hop",
        "title": "Hop cost: direct (lookaside) vs nginx gRPC proxy",
        "command": command,
        "machine": machine(),
        "columns": columns,
        "rows": rows,
        "notes": [
            format!("Sequential unary Whoami calls (one in flight) over loopback to one echo-backend; {warmup} warm-up calls per path, then {calls} measured, the paths taking turns in blocks of {block}."),
            "direct: lb-client's channel picks the backend from the lb-server list and calls it; lb-server is not in the request path.".to_string(),
            format!("via nginx: a tonic channel to an nginx HTTP/2 listener that grpc_passes to the same backend ({version}, 1 worker). 'upstream keepalive' reuses upstream connections (nginx's best configuration); 'plain grpc_pass' opens a new upstream connection per call."),
            "Latency is client-side, from before the call to the decoded reply.".to_string(),
        ],
        "metrics": {
            "direct_p50_us": round(d50, 1),
            "direct_p99_us": round(d99, 1),
            "nginx_p50_ratio": round(stats[1].0 / d50, 2),
            "nginx_p99_ratio": round(stats[1].1 / d99, 2),
        },
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let file = args.out.join("hop.json");
    std::fs::write(&file, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    drop(backend);
    drop(daemon);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_tests::cli::init_tracing("warn");
    let args = Args::parse();
    let (calls, warmup) = if args.quick {
        (args.calls.min(1000), args.warmup.min(200))
    } else {
        (args.calls, args.warmup)
    };
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    // On SIGINT/SIGTERM the measurement future is dropped, and with it nginx,
    // the backend and the daemon (each stops its process on drop).
    tokio::select! {
        r = measure(&args, calls, warmup) => r,
        _ = lb_tests::cli::shutdown_signal() => bail!("interrupted"),
    }
}
