//! The operational surface: `/healthz`, `/readyz` (ready once the first
//! full sync is written) and Prometheus `/metrics` (sync duration and
//! network-programming latency histograms, map entry counts, per-outcome
//! packet and byte counters summed over CPUs).
use std::{
    fmt::Write as _,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use ferry_common::{
    MAP_BACKENDS, MAP_CONNTRACK, MAP_ENDPOINTS, MAP_ROUTES, MAP_SERVICES, MAP_SOCK_REVERSE, outcome,
};
use hyper::StatusCode;
use tokio::net::TcpListener;

use crate::{
    http_server::{Handler, Limits, Reply, Server},
    maps::Counters,
};

/// Upper bounds (seconds) of the histogram buckets: 1 ms to 30 s.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations <= BUCKETS[i] (not cumulative; summed when written).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

pub struct Metrics {
    pin_dir: PathBuf,
    ready: AtomicBool,
    syncs: AtomicU64,
    terminated_sockets: AtomicU64,
    sync_duration: Mutex<Histogram>,
    programming: Mutex<Histogram>,
}

impl Metrics {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            ready: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            terminated_sockets: AtomicU64::new(0),
            sync_duration: Mutex::default(),
            programming: Mutex::default(),
        }
    }

    /// A sync was written: `sync_seconds` from objects to maps, and
    /// `programming_seconds`, one per change it carried, from the change
    /// (its trigger time, or the agent seeing it) to the maps holding it. The
    /// first one makes the agent ready.
    pub fn record_sync(&self, sync_seconds: f64, programming_seconds: &[f64]) {
        self.sync_duration
            .lock()
            .expect("metrics lock")
            .observe(sync_seconds);
        let mut programming = self.programming.lock().expect("metrics lock");
        for seconds in programming_seconds {
            programming.observe(*seconds);
        }
        drop(programming);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
    }

    /// Connected UDP sockets terminated because their backend left.
    pub fn record_terminated_sockets(&self, n: usize) {
        self.terminated_sockets
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferry_syncs_total Syncs of the dataplane maps.\n# TYPE ferry_syncs_total counter\nferry_syncs_total {}",
            self.syncs.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_sock_terminated_total Connected UDP sockets translated at connect() that the agent terminated (ECONNABORTED) because their backend left the Service.\n# TYPE ferry_sock_terminated_total counter\nferry_sock_terminated_total {}",
            self.terminated_sockets.load(Ordering::Relaxed)
        );
        self.sync_duration.lock().expect("metrics lock").write(
            &mut out,
            "ferry_sync_duration_seconds",
            "Time from the objects to the maps written, per sync.",
        );
        self.programming.lock().expect("metrics lock").write(
            &mut out,
            "ferry_network_programming_duration_seconds",
            "Time from an object change seen to the dataplane holding it.",
        );
        let _ = writeln!(
            out,
            "# HELP ferry_map_entries Entries in each pinned map.\n# TYPE ferry_map_entries gauge"
        );
        let mut sock_reverse_entries = None;
        for map in [
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_CONNTRACK,
            MAP_ENDPOINTS,
            MAP_ROUTES,
            MAP_SOCK_REVERSE,
        ] {
            match count_keys(&self.pin_dir.join(map)) {
                Ok(n) => {
                    let _ = writeln!(out, "ferry_map_entries{{map=\"{map}\"}} {n}");
                    if map == MAP_SOCK_REVERSE {
                        sock_reverse_entries = Some(n);
                    }
                }
                Err(e) => tracing::debug!(map, error = %e, "cannot count map entries"),
            }
        }
        if let Ok(counters) = Counters::open(&self.pin_dir).map(|c| c.read()) {
            match counters {
                Ok(counters) => {
                    let families: [(&str, &str, CounterField); 2] = [
                        ("packets", "Packets", |c| c.packets),
                        ("bytes", "Bytes", |c| c.bytes),
                    ];
                    for (unit, help, value) in families {
                        let name = format!("ferry_datapath_{unit}_total");
                        let _ = writeln!(
                            out,
                            "# HELP {name} {help} by what the datapath did with them.\n# TYPE {name} counter"
                        );
                        for (outcome, c) in outcome::NAMES.iter().zip(&counters) {
                            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", value(c));
                        }
                    }
                    if let Some(entries) = sock_reverse_entries {
                        let written = counters[outcome::SOCK_REVERSE_NEW as usize].packets;
                        let removed = counters[outcome::SOCK_REVERSE_REMOVED as usize].packets;
                        let _ = writeln!(
                            out,
                            "# HELP ferry_sock_reverse_evictions Entries of ferry_sock_rev the LRU evicted (new entries written less those the agent removed and those present): a socket that lost its entry sees the backend as its peer; above zero, the map is too small for the node's sockets.\n# TYPE ferry_sock_reverse_evictions gauge\nferry_sock_reverse_evictions {}",
                            sock_reverse_evictions(written, removed, entries)
                        );
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the counters"),
            }
        }
        out
    }
}

/// Entries of `ferry_sock_rev` gone: the datapath never deletes them and
/// the agent counts those it removes (of sockets it terminated), so every
/// other new entry written and no longer present was evicted. Zero while
/// the counters lag the map (an entry counted on another CPU mid-write).
pub fn sock_reverse_evictions(new_entries: u64, removed: u64, present: u64) -> u64 {
    new_entries.saturating_sub(removed).saturating_sub(present)
}

/// One field of a datapath counter.
type CounterField = fn(&ferry_common::Counter) -> u64;

/// Keys in the pinned map at `path` (BPF_MAP_GET_NEXT_KEY until the end).
fn count_keys(path: &Path) -> std::io::Result<u64> {
    let data = aya::maps::MapData::from_pin(path).map_err(std::io::Error::other)?;
    let key_size = data.info().map_err(std::io::Error::other)?.key_size() as usize;
    let fd = data.fd().as_fd().as_raw_fd();
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
    }
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let attr = Attr {
            map_fd: fd as u32,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr is a valid bpf_attr prefix for BPF_MAP_GET_NEXT_KEY;
        // both buffers are key_size bytes.
        match unsafe { crate::bpffs::sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr) } {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// The agent's own endpoints, over its metrics.
struct Endpoints(Arc<Metrics>);

impl Handler for Endpoints {
    async fn reply(&self, path: &str) -> Reply {
        const TEXT: &str = "text/plain";
        match path {
            "/healthz" | "/livez" => Reply::new(StatusCode::OK, TEXT, "ok\n"),
            "/readyz" if self.0.is_ready() => Reply::new(StatusCode::OK, TEXT, "ok\n"),
            "/readyz" => Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "not ready: the first full sync has not been written yet\n",
            ),
            "/metrics" => {
                // Counting map entries is a syscall per key: off the
                // runtime's threads.
                let metrics = self.0.clone();
                let body = tokio::task::spawn_blocking(move || metrics.render())
                    .await
                    .unwrap_or_default();
                Reply::new(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            _ => Reply::new(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        }
    }
}

/// Serve /healthz, /readyz and /metrics on `listener`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(Server::new(Limits::default()), listener, metrics).await
}

/// `serve` under `server`'s limits.
pub async fn serve_with(server: Arc<Server>, listener: TcpListener, metrics: Arc<Metrics>) {
    server.serve(listener, Endpoints(metrics)).await
}

#[cfg(test)]
mod sock_reverse_tests {
    use super::sock_reverse_evictions;

    #[test]
    fn evictions_are_new_entries_no_longer_present() {
        assert_eq!(sock_reverse_evictions(10, 0, 10), 0);
        assert_eq!(sock_reverse_evictions(300_000, 0, 262_144), 37_856);
        // Entries the agent removed (terminated sockets) are no evictions.
        assert_eq!(sock_reverse_evictions(300_000, 37_856, 262_144), 0);
        assert_eq!(sock_reverse_evictions(12, 2, 8), 2);
        // A counter that lags the map never reads as negative.
        assert_eq!(sock_reverse_evictions(5, 0, 6), 0);
        assert_eq!(sock_reverse_evictions(5, 3, 6), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_ready_follows_the_first_sync() {
        let m = Metrics::new(Path::new("/nonexistent"));
        assert!(!m.is_ready());
        m.record_sync(0.002, &[0.003]);
        m.record_sync(0.2, &[]);
        assert!(m.is_ready());
        let text = m.render();
        assert!(text.contains("ferry_syncs_total 2"), "{text}");
        assert!(text.contains("ferry_sync_duration_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("ferry_sync_duration_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("ferry_sync_duration_seconds_count 2"));
        // Only the sync that changed something is a programming latency.
        assert!(text.contains("ferry_network_programming_duration_seconds_count 1"));
        assert!(text.contains("ferry_network_programming_duration_seconds_bucket{le=\"+Inf\"} 1"));
    }
}
