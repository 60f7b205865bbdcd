//! A backend: serves `Greeter` on a port of its own, registers it with lb,
//! streams its load (CPU and in-flight requests), and on Ctrl-C leaves every
//! list before it stops.
//!
//! ```sh
//! cargo run -p lb-example-hello --bin backend -- 127.0.0.1:7400 b1 version=v2
//! ```
//!
//! Arguments: the daemon's address, the instance id, then any number of
//! `key=value` labels (routing rules select instances by them).

use std::time::Duration;

use lb_client::{Registration, Reporter, ReporterOptions};
use lb_example_hello::hello::greeter_server::{Greeter, GreeterServer};
use lb_example_hello::hello::{HelloReply, HelloRequest};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

struct Hello {
    id: String,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("hello, {}", req.get_ref().name),
            served_by: self.id.clone(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let daemon = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let id = args.next().unwrap_or_else(|| "b1".into());

    // Bind first (port 0 picks a free port), then register the address we got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut reg = Registration::new("hello", id.clone(), addr.to_string());
    for label in args {
        let (k, v) = label.split_once('=').ok_or("labels are key=value")?;
        reg.instance.labels.insert(k.into(), v.into());
    }
    // Registers, then streams load reports; reconnects by itself.
    let reporter = Reporter::start(reg, ReporterOptions::new(daemon));
    println!("{id} listening on {addr}");

    Server::builder()
        // Counts in-flight requests for the load reports.
        .layer(reporter.layer())
        .add_service(GreeterServer::new(Hello { id }))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Drain: leave every list, then stop reporting.
    reporter.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
