//! The accept loop: TLS handshakes (client certificates optional, verified against the device CA when
//! given), the verified certificate handed to the router as a request extension, HTTP/1.1 and HTTP/2, and a
//! graceful stop.
//!
//! Against clients that hold connections without using them (slowloris): at most `max_connections` at once
//! (more wait in the kernel's backlog, costing the server nothing); a TLS handshake must finish, and a request's
//! headers must arrive whole, within `header_timeout`; a connection with no request in flight and no byte
//! moving for `idle_timeout` is closed. A long-poll in flight is not idle.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::ConnInfo;
use crate::tls::client_cert;

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// For the TLS handshake, and for each request's headers.
    pub header_timeout: Duration,
    /// With no request in flight and nothing read or written.
    pub idle_timeout: Duration,
}

impl ConnLimits {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            max_connections: c.max_connections.max(1),
            header_timeout: Duration::from_secs_f64(c.header_timeout_secs.max(0.1)),
            idle_timeout: Duration::from_secs_f64(c.idle_timeout_secs.max(0.1)),
        }
    }
}

/// One connection's activity: when a byte last moved, and how many requests are in flight.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicI64,
    inflight: AtomicUsize,
    /// Requests begun on this connection.
    requests: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    /// Resolves when the connection should be closed: no request has begun within `first` of its start, or it
    /// has been idle (no request in flight, nothing moving) for `idle`. Sleeps until the next moment that could
    /// be true, not on a fixed tick.
    async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            let now = self.start.elapsed();
            let wait = if self.inflight.load(Ordering::Relaxed) > 0 {
                idle
            } else {
                let deadline = if self.requests.load(Ordering::Relaxed) == 0 {
                    first
                } else {
                    Duration::from_millis(self.last_ms.load(Ordering::Relaxed) as u64) + idle
                };
                match deadline.checked_sub(now) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
        }
    }
}

/// Counts a request in flight from its start until its response (headers) is ready; the body that follows
/// moves bytes, which keeps the connection active on its own.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.inflight.fetch_add(1, Ordering::Relaxed);
        a.requests.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records when bytes move.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets open requests finish (for up
/// to 10 seconds).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // A free slot first: past the cap, new connections wait in the backlog instead of holding a descriptor.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let Some((tls, info)) = handshake(&acceptor, stream, remote, limits.header_timeout).await else { return };
            let activity = Arc::new(Activity {
                start: Instant::now(),
                last_ms: AtomicI64::new(0),
                inflight: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
            });
            let seen = activity.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                let inflight = InFlight::new(&seen);
                let answer = router.clone().oneshot(req);
                async move {
                    let r = answer.await;
                    drop(inflight);
                    r
                }
            });
            let io = TokioIo::new(Watched { inner: tls, activity: activity.clone() });
            let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
            tokio::select! {
                ended = watcher.watch(conn) => if let Err(e) = ended {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                },
                () = activity.expired(limits.header_timeout, limits.idle_timeout) => {
                    tracing::debug!(%remote, "idle connection closed");
                }
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("open connections did not finish in 10 s"),
    }
    Ok(())
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    let client = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|der| client_cert(der));
    Some((tls, ConnInfo { remote, client }))
}
