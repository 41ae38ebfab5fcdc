//! A stand-in for the Kubernetes API server, for tests only.
//!
//! It serves Services, EndpointSlices, Nodes and ServiceCIDRs over plain
//! HTTP with the semantics a client such as kube-rs's `watcher` relies on:
//! a global resourceVersion counter, paginated LISTs whose `continue` tokens read a
//! consistent snapshot, WATCH streams that replay history from a
//! resourceVersion (with BOOKMARKs, `timeoutSeconds`, and the in-stream 410
//! once that history is gone), label and field selectors that turn an object
//! moving in or out of the selection into ADDED or DELETED, and the usual
//! `Status` errors. GET, POST, PUT, merge PATCH and DELETE work over HTTP
//! too, as typed clients use them.
//!
//! The public surface is what a test needs around those clients: listen
//! (on loopback here, or inside a node's network namespace, so an agent
//! under test reaches it without anything added to the root namespace),
//! write a kubeconfig, and change the objects in process — create, apply,
//! delete, and restart with a new history — plus the requests received, to
//! check what a client asked for. One [`ApiServer`] holds one store; it can
//! listen in several places at once. Everything stops when it is dropped.
//!
//! Layout: `store` keeps objects and history (and, in `store::defaults`,
//! fills in what the real registries default), `selector` parses and
//! matches selectors, `http` reads requests and writes responses, `routes`
//! maps paths to handlers (get, list, create, replace, patch, delete),
//! `watch` streams events.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;

mod http;
mod routes;
mod selector;
mod store;
mod watch;

pub use store::ApiError;
use store::{Kind, Store};

/// Why the server could not listen or write a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thread that was to bind inside the namespace could not enter it
    /// (the harness reports why as text).
    #[error("entering the network namespace {netns}: {reason}")]
    EnterNetns { netns: String, reason: String },
    #[error("binding 127.0.0.1:0 in {netns}")]
    Bind {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the server thread")]
    Serve(#[source] std::io::Error),
    #[error("writing {}", .path.display())]
    WriteKubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long the accept loop sleeps when no connection is pending; it checks
/// the shutdown flag in between, so dropping the server never waits on a
/// blocking `accept`.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// State shared by the public handle and every server thread.
struct Shared {
    store: Mutex<Store>,
    /// Signalled on every change to the store, and on shutdown: watch
    /// streams (and LISTs waiting for a resourceVersion) wait on it.
    changed: Condvar,
    shutdown: AtomicBool,
    /// Every request line received ("GET /api/v1/services?limit=500"), for
    /// tests to see what a client asked for.
    requests: Mutex<Vec<String>>,
    /// Kinds answered with 404, as by an older server.
    not_served: Vec<Kind>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking handler thread must not wedge the whole server: the
        // store is left consistent by every mutation (each is one call).
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Run a mutation and wake every watcher if it succeeded.
    fn mutate<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let out = f(&mut self.lock());
        self.changed.notify_all();
        out
    }
}

/// The stand-in API server: one store, any number of listeners.
pub struct ApiServer {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    /// An empty store, listening nowhere yet.
    pub fn new() -> Self {
        Self::serving_all_but(Vec::new())
    }

    /// Like [`ApiServer::new`], but `kinds` ("ServiceCIDR", or the plural)
    /// are answered with 404 over HTTP, as a server older than them does.
    pub fn without(kinds: &[&str]) -> Result<Self, ApiError> {
        let kinds = kinds
            .iter()
            .map(|k| Kind::parse(k))
            .collect::<Result<_, _>>()?;
        Ok(Self::serving_all_but(kinds))
    }

    fn serving_all_but(not_served: Vec<Kind>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new()),
                changed: Condvar::new(),
                shutdown: AtomicBool::new(false),
                requests: Mutex::new(Vec::new()),
                not_served,
            }),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Listen on 127.0.0.1 (an ephemeral port) inside the network namespace
    /// at `netns` (e.g. `/var/run/netns/NAME`). The socket is created on a
    /// thread that entered the namespace and stays there for its life; it is
    /// then served from ordinary threads.
    pub fn listen_in(&self, netns: &Path) -> Result<SocketAddr, Error> {
        let listener =
            ferry_harness::in_netns(netns, || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
                .map_err(|e| Error::EnterNetns {
                    netns: netns.display().to_string(),
                    reason: format!("{e:#}"),
                })?
                .map_err(|source| Error::Bind {
                    netns: netns.display().to_string(),
                    source,
                })?;
        self.serve(listener)
    }

    /// Listen on 127.0.0.1 (an ephemeral port) in the current namespace.
    pub fn listen_local(&self) -> Result<SocketAddr, Error> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| Error::Bind {
                netns: "the current network namespace".into(),
                source,
            })?;
        self.serve(listener)
    }

    /// Write a kubeconfig whose current context points at `http://addr`
    /// with a user that has no credentials.
    pub fn kubeconfig(&self, addr: SocketAddr, path: &Path) -> Result<(), Error> {
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: ferry-standin
  cluster:
    server: http://{addr}
users:
- name: ferry-standin
  user: {{}}
contexts:
- name: ferry-standin
  context:
    cluster: ferry-standin
    user: ferry-standin
    namespace: default
current-context: ferry-standin
preferences: {{}}
"
        );
        std::fs::write(path, text).map_err(|source| Error::WriteKubeconfig {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Create an object (its `kind` and `apiVersion` say which resource;
    /// a namespaced object without a namespace goes to "default"). Fails
    /// with 409 AlreadyExists like a POST.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        self.shared.mutate(|s| s.create(obj, None))
    }

    /// Create the object, or replace the existing one unconditionally (any
    /// resourceVersion in `obj` is ignored). Replacing with identical
    /// content is a no-op, as on a real server: no new resourceVersion and
    /// no watch event.
    pub fn apply(&self, mut obj: Value) -> Result<Value, ApiError> {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        self.shared.mutate(|s| s.apply(obj))
    }

    /// Delete an object; `kind` is "Service", "EndpointSlice", "Node" or
    /// "ServiceCIDR" (or the plural resource name). Returns the deleted object.
    pub fn delete(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let kind = Kind::parse(kind)?;
        self.shared.mutate(|s| s.delete(kind, namespace, name))
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// Simulate an API server restart with etcd compacted: objects stay,
    /// the history is dropped, the resourceVersion jumps ahead, and every
    /// open watch stream ends. A client that re-watches from the
    /// resourceVersion it had gets a 410 "too old resource version" and has
    /// to list again; an unfinished paginated LIST gets 410 Expired.
    pub fn restart_with_new_history(&self) {
        self.shared.lock().restart_with_new_history();
        self.shared.changed.notify_all();
    }

    /// Every request received so far, as "METHOD target" (the target with
    /// its query string as sent, percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serve `listener` on a background thread until drop.
    fn serve(&self, listener: TcpListener) -> Result<SocketAddr, Error> {
        let addr = listener.local_addr().map_err(Error::Serve)?;
        // Nonblocking so the accept loop can notice shutdown.
        listener.set_nonblocking(true).map_err(Error::Serve)?;
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("apiserver-{addr}"))
            .spawn(move || accept_loop(&shared, &listener))
            .map_err(Error::Serve)?;
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(addr)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Take the lock so no watcher is between checking the flag and
        // waiting; then wake them all.
        drop(self.shared.lock());
        self.shared.changed.notify_all();
        let handles =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Accept connections until shutdown, one thread per connection; join them
/// all before returning (they notice shutdown within a poll interval).
fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.is_shut_down() {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                match std::thread::Builder::new()
                    .name("apiserver-conn".into())
                    .spawn(move || serve_conn(&shared, stream))
                {
                    Ok(h) => conns.push(h),
                    Err(e) => eprintln!("apiserver: spawning a connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                eprintln!("apiserver: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
        conns.retain(|h| !h.is_finished());
    }
    for h in conns {
        let _ = h.join();
    }
}

/// Serve requests on one connection, keeping it alive between requests as
/// a real server does (kube-rs pools connections), until the client closes
/// it, asks to close it, or the server shuts down.
fn serve_conn(shared: &Shared, stream: TcpStream) {
    let Ok(mut conn) = http::Conn::new(stream) else {
        return;
    };
    while let Ok(Some(req)) = conn.read_request(&shared.shutdown) {
        shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}", req.method, req.target));
        let close = req.wants_close();
        if routes::handle(shared, &mut conn, &req).is_err() || close {
            break;
        }
    }
}
