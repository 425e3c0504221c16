//! In-process loopback HTTP servers for the benchmarks, and the helpers they share.
//!
//! Every server binds `127.0.0.1:0` and runs on a runtime of its own, on its own OS thread, so
//! that server work is not scheduled on the client's runtime: the client side of a benchmark
//! measures the client. Dropping a [`LoopbackServer`] stops it.

use std::future::IntoFuture;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::serve::ListenerExt;
use reqwest_middleware::{Middleware, Next};
use tokio::sync::{Semaphore, oneshot};

/// An axum server on 127.0.0.1, on a runtime of its own.
pub struct LoopbackServer {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LoopbackServer {
    /// Serves `router` on an ephemeral port of 127.0.0.1. `worker_threads` ≤ 1 gives a
    /// current-thread runtime.
    pub fn start(name: &str, router: Router, worker_threads: usize) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = if worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(worker_threads);
            builder
        }
        .enable_all()
        .thread_name(name)
        .build()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("loopback server: cannot register the listener: {e}");
                            return;
                        }
                    };
                    let listener = listener.tap_io(move |tcp| {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let _ = tcp.set_nodelay(true);
                    });
                    tokio::select! {
                        served = axum::serve(listener, router).into_future() => {
                            if let Err(e) = served {
                                eprintln!("loopback server failed: {e}");
                            }
                        }
                        _ = stop => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Self {
            addr,
            connections,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes sure this process may open `needed` file descriptors, raising the soft
/// `RLIMIT_NOFILE` towards the hard limit if necessary. Returns the soft limit in force.
///
/// Client and server live in one process here, so every loopback connection costs two.
pub fn ensure_fd_limit(needed: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            io::Error::last_os_error()
        ));
    }
    let current = limit.rlim_cur;
    if current >= needed {
        return Ok(current);
    }
    let hard = limit.rlim_max;
    let target = needed.min(hard);
    limit.rlim_cur = target;
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(format!(
            "setrlimit(RLIMIT_NOFILE, {target}): {}",
            io::Error::last_os_error()
        ));
    }
    if target < needed {
        return Err(format!(
            "this run needs about {needed} file descriptors but the hard limit is {hard}: \
             lower --max-in-flight (or --requests), or raise `ulimit -Hn`"
        ));
    }
    Ok(target)
}

/// A middleware that caps the HTTP exchanges in flight through a client: it takes a permit
/// before sending and keeps it until the response body is read (it buffers the body, so the
/// connection is back in the pool when the permit is released). Put it **last** in the
/// chain, so that everything before it (authentication) runs without the cap.
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
}

impl InFlightLimit {
    /// A limit sharing `permits` (share one semaphore between clients to cap them together).
    pub fn new(permits: Arc<Semaphore>) -> Self {
        Self { permits }
    }
}

#[async_trait]
impl Middleware for InFlightLimit {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let response = next.run(req, extensions).await?;
        Ok(buffered(response).await?)
    }
}

/// The response with its body read into memory.
pub async fn buffered(response: reqwest::Response) -> Result<reqwest::Response, reqwest::Error> {
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    let mut rebuilt = http::Response::new(body);
    *rebuilt.status_mut() = status;
    *rebuilt.version_mut() = version;
    *rebuilt.headers_mut() = headers;
    Ok(reqwest::Response::from(rebuilt))
}
