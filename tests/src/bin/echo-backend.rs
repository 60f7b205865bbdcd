//! `echo-backend`: the example backend. Serves `lb.example.v1.Echo` (Whoami
//! answers with its instance id and the `lb-token` the call carried; Echo
//! and Collect do too, for a payload and a request stream; Calls counts
//! them),
//! registers with lb through the reporter in lb-client, counts in-flight
//! requests with its tower layer, and drains (deregisters) on SIGINT/SIGTERM
//! before exiting.
//!
//! `echo-backend --daemon 127.0.0.1:7400 --service echo --id b1 --weight 2`

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Parser;
use lb_client::{Credentials, Registration, Reporter, ReporterOptions};
use lb_tests::echo::echo_server::{Echo, EchoServer};
use lb_tests::echo::{CallsReply, CallsRequest, EchoRequest, WhoamiReply, WhoamiRequest};
use tonic::{Request, Response, Status};

/// An Echo backend that registers with lb and reports its load.
#[derive(Debug, Parser)]
struct Args {
    /// lb-server address; several (comma-separated) are replicas, each
    /// reported to.
    #[arg(long, default_value = "127.0.0.1:7400")]
    daemon: String,
    /// Service to register in.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Instance id (unique within the service).
    #[arg(long)]
    id: String,
    /// Static weight (1..=10000).
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Address to serve on (port 0 picks one; printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Zone to register with.
    #[arg(long, default_value = "")]
    zone: String,
    /// Labels to register with, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Fault injection: while this file exists, every call fails with
    /// UNAVAILABLE (tests of ejection and failover).
    #[arg(long)]
    fail_while: Option<std::path::PathBuf>,
    /// Fault injection: answer Whoami and Echo after this many ms (tests of
    /// hedging and deadlines).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// A file holding the backend token to register with (else `LB_TOKEN`).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Dial the daemon over TLS, trusting this CA (PEM).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present to a daemon that requires one.
    #[arg(long, requires_all = ["key", "ca"])]
    cert: Option<std::path::PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Serve Echo over TLS with this certificate (PEM; with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// The credentials the reporter presents to the daemon.
fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    let token = match &args.token_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        None => std::env::var("LB_TOKEN").unwrap_or_default(),
    };
    let mut c = Credentials::default().with_token(token);
    if let Some(ca) = &args.ca {
        c = c
            .with_ca_file(ca)
            .with_context(|| format!("cannot read {}", ca.display()))?;
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        c = c
            .with_identity_files(cert, key)
            .context("cannot read --cert or --key")?;
    }
    Ok(c)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

struct EchoService {
    id: String,
    fail_while: Option<std::path::PathBuf>,
    delay: std::time::Duration,
    calls: std::sync::atomic::AtomicU64,
}

impl EchoService {
    /// Counts the call, then fails it while the fault file exists.
    fn enter(&self) -> Result<(), Status> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.fail_while.as_ref().is_some_and(|p| p.exists()) {
            return Err(Status::unavailable(format!(
                "{}: injected failure",
                self.id
            )));
        }
        Ok(())
    }

    /// The answer to `metadata`'s call, after the configured delay.
    async fn answer(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Response<WhoamiReply>, Status> {
        let lb_token = metadata
            .get("lb-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Response::new(WhoamiReply {
            instance_id: self.id.clone(),
            lb_token,
        }))
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn whoami(&self, req: Request<WhoamiRequest>) -> Result<Response<WhoamiReply>, Status> {
        self.enter()?;
        self.answer(req.metadata()).await
    }

    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<WhoamiReply>, Status> {
        self.enter()?;
        self.answer(req.metadata()).await
    }

    async fn collect(
        &self,
        req: Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<Response<WhoamiReply>, Status> {
        self.enter()?;
        let metadata = req.metadata().clone();
        let mut stream = req.into_inner();
        while stream.message().await?.is_some() {}
        self.answer(&metadata).await
    }

    async fn calls(&self, _: Request<CallsRequest>) -> Result<Response<CallsReply>, Status> {
        Ok(Response::new(CallsReply {
            calls: self.calls.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_tests::cli::init_tracing("info");
    let args = Args::parse();
    let mut options = ReporterOptions::new("").with_credentials(credentials(&args)?);
    options.daemons = args.daemon.split(',').map(str::to_string).collect();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;

    let mut reg = Registration::new(&args.service, &args.id, addr.to_string());
    reg.instance.weight = args.weight;
    reg.instance.zone = args.zone;
    reg.instance.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    reg.instance.version = env!("CARGO_PKG_VERSION").to_string();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?),
        )),
        _ => None,
    };
    let reporter = Reporter::start(reg, options);

    println!("echo-backend listening on {addr}");
    let layer = reporter.layer();
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    lb_tests::cli::serve_then_drain(reporter, |stop| {
        server
            .layer(layer)
            .add_service(EchoServer::new(EchoService {
                id: args.id,
                fail_while: args.fail_while,
                delay: std::time::Duration::from_millis(args.delay_ms),
                calls: Default::default(),
            }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop,
            )
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}
