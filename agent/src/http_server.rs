//! The agent's HTTP servers (`/metrics`, `/healthz`, `/readyz` and the
//! healthCheckNodePorts) on hyper, with the limits that keep them answering
//! when clients misbehave: a client that never finishes its request head,
//! or reads its response slowly, is cut off; open connections are capped,
//! and a new connection beyond the cap closes the oldest, so a probe still
//! gets in while idle connections fill the cap; an accept() that fails for
//! want of file descriptors is retried after a pause, not in a loop.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinSet,
};

/// How long a client may take and how many may be connected at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A client must send its whole request head within this. Probes and
    /// scrapers send it in one segment; only a stalled or hostile client
    /// (slowloris) needs longer.
    pub header_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it
    /// is doing: a client reading its response slowly cannot hold it.
    pub connection_lifetime: Duration,
    /// Open connections of one `Server`, over all its listeners; a new
    /// one beyond them closes the oldest.
    pub max_connections: usize,
    /// The pause after an accept() error that would repeat at once (no
    /// file descriptors, no memory).
    pub accept_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            // Rendering /metrics walks every map (conntrack included): a
            // second or so on a large node, well inside this.
            connection_lifetime: Duration::from_secs(30),
            max_connections: 64,
            accept_backoff: Duration::from_millis(100),
        }
    }
}

/// A response: its status, headers and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

/// What a server answers.
pub trait Handler: Send + Sync + 'static {
    /// The reply to a GET or HEAD of `path` (without its query).
    fn reply(&self, path: &str) -> impl Future<Output = Reply> + Send;
}

/// Serves handlers under one set of limits; the connection cap is shared
/// by every listener it serves (the healthCheckNodePorts share one, so the
/// agent's descriptors stay bounded however many Services ask for one).
pub struct Server {
    limits: Limits,
    open: Mutex<Open>,
}

/// The open connections, oldest first, each with its eviction notice.
#[derive(Default)]
struct Open {
    next: u64,
    connections: BTreeMap<u64, Arc<Notify>>,
}

/// A connection's place among the open ones, given up when dropped.
struct Admission {
    server: Arc<Server>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.server.open().connections.remove(&self.id);
    }
}

impl Server {
    pub fn new(limits: Limits) -> Arc<Self> {
        assert!(limits.max_connections > 0, "a server needs a connection");
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // The lock guards plain bookkeeping: a panic elsewhere cannot
        // leave it half-written.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer connections on `listener` with `handler`, until dropped
    /// (which closes the connections it has open).
    pub async fn serve<H: Handler>(self: Arc<Self>, listener: TcpListener, handler: H) {
        let handler = Arc::new(handler);
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut connections = JoinSet::new();
        let mut errors = AcceptErrors::default();
        loop {
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    let Some(pause) = accept_backoff(&e, self.limits.accept_backoff) else {
                        tracing::debug!(%address, error = %e, "a connection was gone before accept()");
                        continue;
                    };
                    if errors.failed() {
                        tracing::warn!(%address, error = %e, pause_ms = pause.as_millis() as u64, "cannot accept connections; retrying after a pause until it can");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            if let Some(errors) = errors.accepted() {
                tracing::info!(%address, errors, "accepting connections again");
            }
            let (admission, evicted) = self.admit();
            connections.spawn(self.clone().connection(stream, admission, handler.clone()));
            if evicted {
                // Let the evicted connection close its socket before the
                // next accept() takes another descriptor.
                tokio::task::yield_now().await;
            }
        }
    }

    /// A place for a new connection; true when the oldest open one was
    /// told to close to make room for it.
    fn admit(self: &Arc<Self>) -> (Admission, bool) {
        let mut open = self.open();
        let mut evicted = false;
        while open.connections.len() >= self.limits.max_connections {
            if let Some((_, oldest)) = open.connections.pop_first() {
                // A permit is stored if the connection is not waiting yet.
                oldest.notify_one();
                evicted = true;
            }
        }
        let id = open.next;
        open.next += 1;
        let notice = Arc::new(Notify::new());
        open.connections.insert(id, notice.clone());
        drop(open);
        let admission = Admission {
            server: self.clone(),
            id,
            evicted: notice,
        };
        (admission, evicted)
    }

    async fn connection<H: Handler>(
        self: Arc<Self>,
        stream: TcpStream,
        admission: Admission,
        handler: Arc<H>,
    ) {
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(respond(&*handler, request).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_header_size(8 * 1024)
            // One request per connection, as the hand-written servers had
            // it: clients that read to EOF (scripts, the load balancers'
            // probes) keep working, and no connection idles between
            // requests.
            .keep_alive(false)
            // Header names as they were written before (Content-Type), for
            // clients that match them exactly.
            .title_case_headers(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            }
            _ = admission.evicted.notified() => {
                tracing::debug!("HTTP connection closed to make room for a new one");
            }
            _ = tokio::time::sleep(self.limits.connection_lifetime) => {
                tracing::debug!("HTTP connection closed: open too long");
            }
        }
    }
}

async fn respond<H: Handler>(handler: &H, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = if matches!(*request.method(), Method::GET | Method::HEAD) {
        // hyper leaves the body out of a reply to HEAD.
        handler.reply(request.uri().path()).await
    } else {
        Reply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        )
        .with_header(header::ALLOW, "GET, HEAD")
    };
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    response.headers_mut().extend(reply.headers);
    response
}

/// The pause before the next accept() after `e`, or None to retry at
/// once: a connection reset or aborted before it was accepted is gone with
/// its error, but running out of descriptors or memory repeats until
/// something is freed, and retrying at once spins a core.
pub fn accept_backoff(e: &io::Error, pause: Duration) -> Option<Duration> {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::Interrupted => None,
        _ => Some(pause),
    }
}

/// accept() failures in a row: logged once when they start and once when
/// they stop, not once each.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    failed: u64,
}

impl AcceptErrors {
    /// One more failure; true for the first of a burst (the one to log).
    pub fn failed(&mut self) -> bool {
        self.failed += 1;
        self.failed == 1
    }

    /// A connection was accepted: the failures of the burst it ends, if
    /// one did.
    pub fn accepted(&mut self) -> Option<u64> {
        (self.failed > 0).then(|| std::mem::take(&mut self.failed))
    }
}

#[cfg(test)]
pub(crate) mod tests;
