//! A caller: follows the `hello` service's list and calls it through a
//! generated tonic client. Each call goes straight to the backend lb picked.
//!
//! ```sh
//! cargo run -p lb-example-hello --bin caller -- 127.0.0.1:7400 5
//! ```
//!
//! Arguments: the daemon's address and the number of calls.

use std::time::Duration;

use lb_client::{subscribe, ClientOptions};
use lb_example_hello::hello::greeter_client::GreeterClient;
use lb_example_hello::hello::HelloRequest;
use tonic::Request;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let daemon = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let calls: usize = args.next().map_or(Ok(5), |n| n.parse())?;

    // Returns once the first list is in (or with an error that says why not:
    // the daemon is unreachable, refuses us, ...).
    let sub = subscribe("hello", ClientOptions::new(daemon)).await?;
    // Any generated client works on the channel; it picks per request.
    let mut greeter = GreeterClient::new(sub.channel());
    for i in 0..calls {
        let mut req = Request::new(HelloRequest {
            name: format!("call {i}"),
        });
        // A deadline for each call: a backend that hangs cannot hold us.
        req.set_timeout(Duration::from_secs(2));
        let reply = greeter.say_hello(req).await?.into_inner();
        println!("{} (served by {})", reply.message, reply.served_by);
    }
    // Hands the last call statistics to the daemon.
    sub.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
