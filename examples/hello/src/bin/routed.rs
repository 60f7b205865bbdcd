//! Calls with request labels and a hash key, through the same generated
//! client as `caller`.
//!
//! - **Labels** travel as `lb-label-<key>` metadata. A routing rule on the
//!   daemon maps them to instances, e.g. calls labelled `group=beta` go to the
//!   instances labelled `version=v2`:
//!   `lb-server ctl set-rule hello beta --when group=beta --select version=v2`.
//! - **A hash key** travels as `lb-hash-key` metadata. Under the hash
//!   policies (`ctl set-policy hello consistent_hash`) the same key goes to the
//!   same backend while it is up; under the others it is an ordinary pick.
//!
//! ```sh
//! cargo run -p lb-example-hello --bin routed -- 127.0.0.1:7400 beta user-42
//! ```
//!
//! Arguments: the daemon's address, the `group` label, the hash key.

use std::time::Duration;

use lb_client::{subscribe, ClientOptions};
use lb_example_hello::hello::greeter_client::GreeterClient;
use lb_example_hello::hello::HelloRequest;
use tonic::Request;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let daemon = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let group = args.next().unwrap_or_else(|| "beta".into());
    let key = args.next().unwrap_or_else(|| "user-42".into());

    let sub = subscribe("hello", ClientOptions::new(daemon)).await?;
    let mut greeter = GreeterClient::new(sub.channel());

    let mut req = Request::new(HelloRequest {
        name: format!("group {group}"),
    });
    req.metadata_mut().insert("lb-label-group", group.parse()?);
    let reply = greeter.say_hello(req).await?.into_inner();
    println!("labelled group={group}: served by {}", reply.served_by);

    for _ in 0..3 {
        let mut req = Request::new(HelloRequest { name: key.clone() });
        req.metadata_mut().insert("lb-hash-key", key.parse()?);
        let reply = greeter.say_hello(req).await?.into_inner();
        println!("key {key}: served by {}", reply.served_by);
    }
    sub.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
