//! The HTTP server every service runs its API and `/healthz` `/readyz` `/metrics` on:
//! HTTP/1.1 with bounds a slow or hostile client cannot outlast.
//!
//! - **Connections**: at most `HOOKRELAY_HTTP_MAX_CONNECTIONS` at once; one more is answered
//!   `503` with `Retry-After: 1` and closed (counted in
//!   `hookrelay_http_connections_refused_total`).
//! - **Headers**: a request's headers must arrive within `HOOKRELAY_HTTP_HEADER_TIMEOUT`
//!   from its first byte, or from the end of the previous response on a kept-alive
//!   connection (hyper's header read timeout): a client trickling headers, or holding an idle
//!   connection, is disconnected.
//! - **Bodies**: a request's body must arrive within `HOOKRELAY_HTTP_BODY_TIMEOUT` of its
//!   headers; a body still arriving then is answered `408 request_timeout`.
//!
//! Each request carries the client's address as `ConnectInfo<SocketAddr>` (the peer of the
//! TCP connection: a proxy's, behind one). On shutdown the server stops accepting and waits
//! for the requests in flight.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::Source;

/// The server's bounds (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// `HOOKRELAY_HTTP_MAX_CONNECTIONS`, `HOOKRELAY_HTTP_HEADER_TIMEOUT`,
    /// `HOOKRELAY_HTTP_BODY_TIMEOUT`.
    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        let d = Self::default();
        let limits = Self {
            max_connections: src.get("HOOKRELAY_HTTP_MAX_CONNECTIONS", d.max_connections)?,
            header_timeout: src.duration("HOOKRELAY_HTTP_HEADER_TIMEOUT", d.header_timeout)?,
            body_timeout: src.duration("HOOKRELAY_HTTP_BODY_TIMEOUT", d.body_timeout)?,
        };
        if limits.max_connections == 0 {
            anyhow::bail!("HOOKRELAY_HTTP_MAX_CONNECTIONS must be at least 1");
        }
        if limits.header_timeout.is_zero() {
            anyhow::bail!("HOOKRELAY_HTTP_HEADER_TIMEOUT must be more than 0");
        }
        if limits.body_timeout.is_zero() {
            anyhow::bail!("HOOKRELAY_HTTP_BODY_TIMEOUT must be more than 0");
        }
        Ok(limits)
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets the requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pass, without spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("hookrelay_http_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|body| Deadline::wrap(Body::new(body), body_timeout));
            req.extensions_mut().insert(ConnectInfo(remote));
            app.clone().oneshot(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a timeout): nothing to do but close.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit `503` and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let body = r#"{"error":{"code":"too_many_connections","message":"the server has too many connections open; retry shortly"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The request body did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct Deadline {
    inner: Body,
    limit: Duration,
    /// Started on the first read that has to wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    started: tokio::time::Instant,
}

impl Deadline {
    fn wrap(inner: Body, limit: Duration) -> Body {
        if http_body::Body::is_end_stream(&inner) {
            return inner;
        }
        Body::new(Self {
            inner,
            limit,
            sleep: None,
            started: tokio::time::Instant::now(),
        })
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => {
                let deadline = this.started + this.limit;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (a body read's failure) is the body timeout.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        cause = e.source();
    }
    false
}
