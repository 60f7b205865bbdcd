//! Counting requests in flight on a backend, for the load reporter.
//!
//! [`InFlightLayer`] wraps a tonic server (`Server::builder().layer(..)`): each
//! request holds an [`InFlightGuard`] until its response future completes, i.e.
//! until the response headers are ready. The body of a streaming response is not
//! tracked; for unary RPCs that is the whole call.
//!
//! ```
//! let counter = lb_client::InFlight::default(); // or reporter.in_flight()
//! let request = counter.guard();
//! assert_eq!(counter.get(), 1);
//! drop(request);
//! assert_eq!((counter.get(), counter.completed()), (0, 1));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

/// A shared count of requests in flight (and of those completed and
/// failed): what the [`crate::Reporter`] reports as the backend's
/// `active_requests`. Cheap to clone; clones share the count.
///
/// ```
/// let counter = lb_client::InFlight::default();
/// let guard = counter.guard(); // a request starts
/// assert_eq!(counter.get(), 1);
/// drop(guard); // and ends
/// assert_eq!((counter.get(), counter.completed()), (0, 1));
/// ```
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    active: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

impl InFlight {
    /// Counts one request until the guard is dropped.
    ///
    /// ```
    /// let counter = lb_client::InFlight::default();
    /// {
    ///     let _request = counter.guard();
    ///     assert_eq!(counter.get(), 1);
    /// }
    /// assert_eq!(counter.get(), 0);
    /// ```
    pub fn guard(&self) -> InFlightGuard {
        self.0.active.fetch_add(1, Relaxed);
        InFlightGuard {
            counter: self.clone(),
            failed: false,
        }
    }

    /// Requests in flight now.
    ///
    /// ```
    /// let counter = lb_client::InFlight::default();
    /// let (_a, _b) = (counter.guard(), counter.guard());
    /// assert_eq!(counter.get(), 2);
    /// ```
    pub fn get(&self) -> u64 {
        self.0.active.load(Relaxed)
    }

    /// Requests completed so far (failed ones included).
    ///
    /// ```
    /// let counter = lb_client::InFlight::default();
    /// drop(counter.guard());
    /// counter.guard().fail();
    /// assert_eq!(counter.completed(), 2);
    /// ```
    pub fn completed(&self) -> u64 {
        self.0.completed.load(Relaxed)
    }

    /// Requests that failed so far.
    ///
    /// ```
    /// let counter = lb_client::InFlight::default();
    /// drop(counter.guard());
    /// counter.guard().fail();
    /// assert_eq!((counter.completed(), counter.failed()), (2, 1));
    /// ```
    pub fn failed(&self) -> u64 {
        self.0.failed.load(Relaxed)
    }
}

/// Counts its request as in flight until dropped, then as completed; made
/// by [`InFlight::guard`].
///
/// ```
/// let counter = lb_client::InFlight::default();
/// let mut request = counter.guard();
/// let result: Result<(), &str> = Err("bad request"); // ... handle it ...
/// if result.is_err() {
///     request.fail();
/// }
/// drop(request);
/// assert_eq!(counter.failed(), 1);
/// ```
#[derive(Debug)]
pub struct InFlightGuard {
    counter: InFlight,
    failed: bool,
}

impl InFlightGuard {
    /// Marks the request as failed (counted when the guard drops).
    ///
    /// ```
    /// let counter = lb_client::InFlight::default();
    /// let mut request = counter.guard();
    /// request.fail();
    /// assert_eq!(counter.failed(), 0); // not yet: the request is in flight
    /// drop(request);
    /// assert_eq!(counter.failed(), 1);
    /// ```
    pub fn fail(&mut self) {
        self.failed = true;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let c = &self.counter.0;
        c.active.fetch_sub(1, Relaxed);
        c.completed.fetch_add(1, Relaxed);
        if self.failed {
            c.failed.fetch_add(1, Relaxed);
        }
    }
}

/// A tower layer that counts requests of the wrapped service in an [`InFlight`].
/// On a tonic server, `Server::builder().layer(reporter.layer())`
/// ([`crate::Reporter::layer`]; a complete program:
/// `examples/hello/src/bin/backend.rs`); on any tower service:
///
/// ```
/// use lb_client::{InFlight, InFlightLayer};
/// use tower::{service_fn, Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let counter = InFlight::default();
/// let hello = service_fn(|name: &'static str| async move {
///     Ok::<_, ()>(format!("hello, {name}"))
/// });
/// let svc = InFlightLayer::new(counter.clone()).layer(hello);
/// assert_eq!(svc.oneshot("b1").await, Ok("hello, b1".to_string()));
/// assert_eq!((counter.get(), counter.completed()), (0, 1));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct InFlightLayer {
    counter: InFlight,
}

impl InFlightLayer {
    /// Counts into `counter`.
    ///
    /// ```
    /// let counter = lb_client::InFlight::default();
    /// let layer = lb_client::InFlightLayer::new(counter.clone());
    /// // Server::builder().layer(layer).add_service(...): `counter` follows its requests.
    /// # let _ = layer;
    /// assert_eq!(counter.get(), 0);
    /// ```
    pub fn new(counter: InFlight) -> Self {
        InFlightLayer { counter }
    }
}

impl<S> tower_layer::Layer<S> for InFlightLayer {
    type Service = InFlightService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// The service made by [`InFlightLayer`]: the wrapped service, counting
/// its requests; an `Err` response counts as failed.
///
/// ```
/// use lb_client::{InFlight, InFlightLayer};
/// use tower::{service_fn, Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let counter = InFlight::default();
/// let overloaded = service_fn(|_req: ()| async { Err::<(), _>("overloaded") });
/// let svc = InFlightLayer::new(counter.clone()).layer(overloaded);
/// assert_eq!(svc.oneshot(()).await, Err("overloaded"));
/// assert_eq!((counter.completed(), counter.failed()), (1, 1));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct InFlightService<S> {
    inner: S,
    counter: InFlight,
}

impl<S, Req> tower_service::Service<Req> for InFlightService<S>
where
    S: tower_service::Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Count before calling: the inner service may start work synchronously.
        let guard = self.counter.guard();
        InFlightFuture {
            inner: Box::pin(self.inner.call(req)),
            guard: Some(guard),
        }
    }
}

/// Response future holding the in-flight guard: the request counts as in
/// flight until it completes or is dropped (a cancelled request). Boxing the
/// inner future makes this `Unpin`, which avoids pin projection (and unsafe)
/// for one allocation per request.
///
/// ```
/// use lb_client::{InFlight, InFlightLayer};
/// use tower::{service_fn, Layer, Service, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let counter = InFlight::default();
/// let slow = service_fn(|_req: ()| std::future::pending::<Result<(), ()>>());
/// let mut svc = InFlightLayer::new(counter.clone()).layer(slow);
/// let response = svc.ready().await.unwrap().call(()); // an InFlightFuture
/// assert_eq!(counter.get(), 1);
/// drop(response); // the caller gave up
/// assert_eq!(counter.get(), 0);
/// # }
/// ```
pub struct InFlightFuture<F> {
    inner: Pin<Box<F>>,
    guard: Option<InFlightGuard>,
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for InFlightFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let out = this.inner.as_mut().poll(cx);
        if let Poll::Ready(r) = &out {
            if let Some(mut g) = this.guard.take() {
                if r.is_err() {
                    g.fail();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower_layer::Layer;

    #[test]
    fn guard_counts_up_and_down() {
        let n = InFlight::default();
        let a = n.guard();
        let b = n.clone().guard();
        assert_eq!(n.get(), 2);
        drop(a);
        assert_eq!(n.get(), 1);
        drop(b);
        assert_eq!(n.get(), 0);
        assert_eq!((n.completed(), n.failed()), (2, 0));
        let mut c = n.guard();
        c.fail();
        drop(c);
        assert_eq!((n.get(), n.completed(), n.failed()), (0, 3, 1));
    }

    #[tokio::test]
    async fn layer_holds_a_guard_while_the_call_runs() {
        let n = InFlight::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let (started_tx, mut started) = tokio::sync::mpsc::channel::<u64>(1);
        let (seen, g) = (n.clone(), gate.clone());
        let svc = InFlightLayer::new(n.clone()).layer(tower::service_fn(move |x: u32| {
            let (seen, g, started_tx) = (seen.clone(), g.clone(), started_tx.clone());
            async move {
                let _ = started_tx.send(seen.get()).await;
                g.notified().await;
                Ok::<_, std::convert::Infallible>(x + 1)
            }
        }));
        let call = tokio::spawn(svc.oneshot(41));
        assert_eq!(started.recv().await, Some(1));
        assert_eq!(n.get(), 1);
        gate.notify_one();
        assert_eq!(call.await.unwrap(), Ok(42));
        assert_eq!(n.get(), 0);
    }

    #[test]
    fn layer_fits_a_tonic_server() {
        // Type check only: the future is never polled.
        let server = tonic::transport::Server::builder()
            .layer(InFlightLayer::new(InFlight::default()))
            .add_routes(tonic::service::Routes::default());
        let _serve = server.serve_with_shutdown(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            std::future::pending::<()>(),
        );
    }
}
