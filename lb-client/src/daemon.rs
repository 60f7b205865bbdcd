//! The connection to lb daemons: how lb-client dials one (HTTP/2 keep-alive
//! and a connect timeout), and the two long-lived streams it opens on it,
//! `Balancer/Subscribe` for a [`crate::Subscription`] and `Registry/ReportLoad`
//! for a [`crate::Reporter`]. The streams carry `protocol` types; `pb`
//! converts them, so the tasks never see generated types.

use std::time::Duration;

use lb_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint as Target};
use tonic::Status;

use crate::credentials::{Authorize, Credentials};
use crate::protocol::{Directive, Identity, Outgoing, Registration, StatsReport, Update};

/// Where to dial `addr` ("host:port" or a full "http://host:port" URI), with
/// the options every connection of this crate uses, to a daemon or a backend.
/// (tonic calls it an `Endpoint`; this crate's [`crate::Endpoint`] is a list
/// entry.)
pub(crate) fn dial_target(addr: &str) -> Result<Target, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Target::from_shared(uri)?.tcp_nodelay(true))
}

/// Connects to a daemon, over TLS if `credentials` say so (a bare
/// "host:port" is then dialled as https). HTTP/2 keep-alive makes a silently
/// vanished daemon (a partition, not a crash) break the stream within
/// seconds instead of never.
pub async fn connect(
    addr: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<Channel, tonic::transport::Error> {
    let target = match credentials.tls_config() {
        Some(tls) => {
            let uri = if addr.contains("://") {
                addr.to_owned()
            } else {
                format!("https://{addr}")
            };
            dial_target(&uri)?.tls_config(tls)?
        }
        None => dial_target(addr)?,
    };
    target
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Opens `Balancer/Subscribe`: sends the subscription first, then every
/// [`StatsReport`] from `stats`; yields the daemon's updates.
pub(crate) async fn subscribe(
    channel: Channel,
    credentials: &Credentials,
    service: &str,
    client: Identity<'_>,
    stats: mpsc::Receiver<StatsReport>,
) -> Result<impl Stream<Item = Result<Update, Status>> + Unpin + Send + 'static, Status> {
    let first = v1::SubscribeRequest {
        msg: Some(v1::subscribe_request::Msg::Subscribe(v1::Subscription {
            service: service.to_owned(),
            client: Some(client.into()),
        })),
    };
    let requests =
        tokio_stream::once(first).chain(ReceiverStream::new(stats).map(|s| v1::SubscribeRequest {
            msg: Some(v1::subscribe_request::Msg::Stats(s.into())),
        }));
    let response =
        v1::balancer_client::BalancerClient::with_interceptor(channel, Authorize::new(credentials))
            .subscribe(requests)
            .await?;
    Ok(response.into_inner().map(|r| r.map(Update::from)))
}

/// Opens `Registry/ReportLoad`: sends the registration first, then every
/// [`Outgoing`] message; yields the daemon's directives.
pub(crate) async fn report_load(
    channel: Channel,
    credentials: &Credentials,
    registration: &Registration,
    outgoing: mpsc::Receiver<Outgoing>,
) -> Result<impl Stream<Item = Result<Directive, Status>> + Unpin + Send + 'static, Status> {
    use v1::report_load_request::Msg;
    let first = v1::ReportLoadRequest {
        msg: Some(Msg::Register(registration.into())),
    };
    let requests = tokio_stream::once(first).chain(ReceiverStream::new(outgoing).map(|m| {
        v1::ReportLoadRequest {
            msg: Some(match m {
                Outgoing::Report(s) => Msg::Report(crate::pb::load_report(s)),
                Outgoing::Drain => Msg::Drain(v1::Drain {}),
            }),
        }
    }));
    let response =
        v1::registry_client::RegistryClient::with_interceptor(channel, Authorize::new(credentials))
            .report_load(requests)
            .await?;
    Ok(response.into_inner().map(|r| r.map(Directive::from)))
}
