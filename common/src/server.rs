//! Server plumbing every ringkv process shares: binding listeners, serving
//! gRPC and HTTP (/metrics, /healthz, /readyz plus extra routes), and
//! stopping all of a process's servers and background tasks together.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

/// Any error, boxed: what a process-specific step of starting failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a process did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unreadable or invalid.
    #[error(transparent)]
    Config(BoxError),
    /// Opening the data directory failed.
    #[error("opening {path}: {source}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        source: BoxError,
    },
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// A [`StartError::Open`] of the data directory `path`.
    pub fn open(path: impl Into<PathBuf>, source: impl Into<BoxError>) -> StartError {
        StartError::Open { path: path.into(), source: source.into() }
    }
}

/// How long stopping waits for a server task (gRPC graceful shutdown waits
/// for peers' long-lived Raft streams, which only end when they reconnect).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Extra HTTP routes a process serves beside /metrics, /healthz, /readyz.
pub type HttpRouter = axum::Router;

/// Binds a listener, reporting the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let local = l.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
    Ok((l, local))
}

/// Accepted gRPC connections with Nagle off: small responses (a read's
/// answer, a heartbeat) must not wait for the peer's delayed ACK.
pub fn incoming(l: TcpListener) -> Result<TcpIncoming, StartError> {
    TcpIncoming::from_listener(l, true, Some(Duration::from_secs(30))).map_err(|e| StartError::Other(e.to_string()))
}

/// A process's servers and background tasks, stopped together: each server
/// and task watches one stop signal, and [`Serving::stop`] waits for them.
pub struct Serving {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Default for Serving {
    fn default() -> Self {
        Serving { stop: watch::channel(false).0, tasks: Vec::new() }
    }
}

impl Serving {
    /// A receiver that turns `true` once stopping has begun (for background loops).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Runs `task` until it ends; [`Serving::stop`] waits for it.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Serves gRPC `routes` on `listener` until stop.
    pub fn grpc(&mut self, listener: TcpListener, routes: tonic::transport::server::Router) -> Result<(), StartError> {
        let mut rx = self.stopped();
        let serve = routes.serve_with_incoming_shutdown(incoming(listener)?, async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        self.spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!("gRPC server: {e}");
            }
        });
        Ok(())
    }

    /// Serves `/metrics`, `/healthz` (alive), `/readyz` (200 when `ready()`,
    /// else 503) plus `extra` routes on `addr` (if any) until stop; returns
    /// the bound address.
    pub async fn http(
        &mut self,
        addr: Option<SocketAddr>,
        render_metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
        ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
        extra: HttpRouter,
    ) -> Result<Option<SocketAddr>, StartError> {
        let Some(addr) = addr else { return Ok(None) };
        let (l, local) = bind(addr).await?;
        let readyz = move || {
            let r = ready();
            std::future::ready(if r {
                (axum::http::StatusCode::OK, "ready")
            } else {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
            })
        };
        let app = extra
            .route("/metrics", get(move || std::future::ready(render_metrics())))
            .route("/healthz", get(|| std::future::ready("ok")))
            .route("/readyz", get(readyz));
        let mut rx = self.stopped();
        self.spawn(async move {
            let serve = axum::serve(l, app).with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server: {e}");
            }
        });
        Ok(Some(local))
    }

    /// Signals stop and waits (a bounded time) for every server and task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, t).await;
        }
    }
}
