//! The operational surface: `/healthz`, `/readyz` (ready once the first
//! full sync is written) and Prometheus `/metrics`, through the
//! prometheus-client crate: the agent's own counters and histograms live in
//! its `Registry`; whatever comes from the pinned maps (entry counts, the
//! datapath's per-outcome and per-Service counters, the source-NAT range)
//! is read at scrape time by a `Collector`, so a scrape shows the kernel's
//! values of that moment and nothing copies them on a timer. The conntrack
//! gauges are what the agent's last garbage collection walk saw: counting
//! them at scrape would be one more walk of up to 512 Ki entries each time.
pub mod services;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use ferry_common::{
    Counter as DatapathCounter, MAP_BACKENDS, MAP_CONNTRACK, MAP_ENDPOINTS, MAP_ROUTES,
    MAP_SERVICE_NAMES, MAP_SERVICES, MAP_SOCK_REVERSE, SERVICE_DROP_OUTCOMES, SNAT_PORT_MAX,
    SNAT_PORT_MIN, ServiceKey, ServiceName, ServiceStats, ServiceValue, outcome, protocol_name,
};
use hyper::StatusCode;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;

pub use self::services::{ServicePort, ServiceRow};
use crate::{
    http_server::{Handler, Limits, Reply, Server},
    maps::{Counters, NodeMap, ServiceStatsTable, batch::BatchMap, conntrack::ConntrackSummary},
};

/// Upper bounds (seconds) of the histogram buckets: 1 ms to 30 s.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The maps whose entries `ferry_map_entries` counts.
const COUNTED_MAPS: [&str; 6] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_CONNTRACK,
    MAP_ENDPOINTS,
    MAP_ROUTES,
    MAP_SOCK_REVERSE,
];

/// What the collector shows of the pinned maps, read at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapSnapshot {
    /// Entries of each map of `COUNTED_MAPS` that could be counted.
    pub entries: Vec<(&'static str, u64)>,
    /// Per-outcome totals, indexed like `outcome::NAMES` (None: unreadable).
    pub counters: Option<Vec<DatapathCounter>>,
    /// Per Service port, summed over its frontends and CPUs.
    pub services: Vec<ServiceRow>,
    /// Ports in the source-NAT range the datapath uses (None: unreadable).
    pub snat_capacity: Option<u64>,
    /// Kernel memory each pinned map holds, bytes.
    pub memory: Vec<(&'static str, u64)>,
}

/// Where the collector reads the maps from: the pin directory, or a test's
/// sample values.
pub trait MapSource: Debug + Send + Sync + 'static {
    fn read(&self) -> MapSnapshot;
}

/// The pinned maps under a pin directory. Each scrape opens them afresh,
/// so a scrape sees the maps even when they appear after the agent
/// started serving (or the agent reloaded them).
#[derive(Debug)]
pub struct PinnedMaps(PathBuf);

impl PinnedMaps {
    pub fn new(pin_dir: &Path) -> Self {
        Self(pin_dir.to_path_buf())
    }

    /// Every frontend of `ferry_services` with its value, read once per
    /// scrape (its entries, the backend slots in use and the per-Service
    /// rows all come from it).
    fn frontends(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Box<dyn std::error::Error>> {
        Ok(BatchMap::open(&self.0.join(MAP_SERVICES))?.lookup_all()?)
    }

    /// Every Service port's counts: each of `values`' frontends with its
    /// name and its slot of `ferry_svc_stats`. Batched reads: a scrape at
    /// 100,000 frontends makes a few dozen system calls, not one or two
    /// per frontend.
    fn services(
        &self,
        values: &[(ServiceKey, ServiceValue)],
    ) -> Result<Vec<ServiceRow>, Box<dyn std::error::Error>> {
        let pin_dir = &self.0;
        let frontends: Vec<(ServiceKey, u32)> =
            values.iter().map(|(k, v)| (*k, v.service_id)).collect();
        let in_use: BTreeSet<u32> = frontends.iter().map(|(_, id)| *id).collect();
        // A frontend removed meanwhile is skipped, as the join skips an id
        // whose name went with it.
        let id_names: BTreeMap<u32, String> =
            BatchMap::<u32, ServiceName>::open(&pin_dir.join(MAP_SERVICE_NAMES))?
                .lookup_all()?
                .into_iter()
                .filter(|(id, _)| in_use.contains(id))
                .map(|(id, name)| (id, name.as_str().to_string()))
                .collect();
        let all = ServiceStatsTable::read_all(pin_dir)?;
        let stats: BTreeMap<u32, ServiceStats> = in_use
            .iter()
            .filter_map(|&id| all.get(id as usize).map(|s| (id, *s)))
            .collect();
        Ok(services::service_rows(&frontends, &id_names, &stats))
    }

    /// The source-NAT range in `ferry_node` (0 there: the defaults, as the
    /// datapath reads it).
    fn snat_capacity(&self) -> Result<u64, Box<dyn std::error::Error>> {
        let node = NodeMap::open(&self.0)?.get()?;
        let (min, max) = match (node.snat_port_min, node.snat_port_max) {
            (0, _) | (_, 0) => (SNAT_PORT_MIN, SNAT_PORT_MAX),
            range => range,
        };
        Ok(u64::from(max.saturating_sub(min)) + 1)
    }
}

impl MapSource for PinnedMaps {
    fn read(&self) -> MapSnapshot {
        let frontends = self
            .frontends()
            .inspect_err(|e| tracing::debug!(error = %e, "cannot read the frontends"));
        let mut entries = Vec::new();
        for map in COUNTED_MAPS {
            let count = match (map, &frontends) {
                (MAP_SERVICES, Ok(values)) => Ok(values.len() as u64),
                // An array has every entry: what counts is the slots the
                // frontends' active sets use.
                (MAP_BACKENDS, Ok(values)) => {
                    Ok(values.iter().map(|(_, v)| u64::from(v.backend_count)).sum())
                }
                (MAP_SERVICES | MAP_BACKENDS, Err(e)) => Err(e.to_string()),
                _ => {
                    crate::maps::batch::count_entries(&self.0.join(map)).map_err(|e| e.to_string())
                }
            };
            match count {
                Ok(n) => entries.push((map, n)),
                Err(e) => tracing::debug!(map, error = %e, "cannot count map entries"),
            }
        }
        let counters = match Counters::open(&self.0).map(|c| c.read()) {
            Ok(Ok(counters)) => Some(counters),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the counters");
                None
            }
            Err(_) => None,
        };
        let services = frontends
            .and_then(|values| self.services(&values))
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot read the per-Service counters");
                Vec::new()
            });
        let snat_capacity = self
            .snat_capacity()
            .inspect_err(|e| tracing::debug!(error = %e, "cannot read the node map"))
            .ok();
        let memory = crate::maps::memory::pinned(&self.0)
            .into_iter()
            .map(|m| (m.name, m.memory_bytes))
            .collect();
        MapSnapshot {
            entries,
            counters,
            services,
            snat_capacity,
            memory,
        }
    }
}

/// Writes the map-derived metrics at each scrape.
#[derive(Debug)]
struct MapCollector(Box<dyn MapSource>);

/// One metric family of the collectors: its descriptor, then one sample
/// per label set.
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

/// The labels of a Service port.
fn service_labels(s: &ServicePort) -> [(&'static str, &str); 4] {
    [
        ("namespace", &s.namespace),
        ("name", &s.name),
        ("port", &s.port),
        ("protocol", s.protocol),
    ]
}

/// A per-Service counter family: `value` of each row.
fn service_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[ServiceRow],
    value: fn(&ServiceStats) -> u64,
) -> Result<(), std::fmt::Error> {
    let samples = rows.iter().map(|r| {
        (
            service_labels(&r.service),
            ConstCounter::new(value(&r.stats)),
        )
    });
    family(encoder, name, help, MetricType::Counter, samples)
}

impl Collector for MapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.read();
        let e = &mut encoder;
        family(
            e,
            "ferry_map_entries",
            "Entries in each pinned map.",
            MetricType::Gauge,
            snapshot
                .entries
                .iter()
                .map(|(map, n)| ([("map", *map)], ConstGauge::new(*n))),
        )?;
        family(
            e,
            "ferry_map_memory_bytes",
            "Kernel memory each pinned map holds (its fdinfo memlock): preallocated maps their whole capacity, the others what their entries use.",
            MetricType::Gauge,
            snapshot
                .memory
                .iter()
                .map(|(map, n)| ([("map", *map)], ConstGauge::new(*n))),
        )?;
        if let Some(counters) = &snapshot.counters {
            let by_outcome = |field: fn(&DatapathCounter) -> u64| {
                outcome::NAMES
                    .iter()
                    .zip(counters)
                    .map(move |(o, c)| ([("outcome", *o)], ConstCounter::new(field(c))))
            };
            family(
                e,
                "ferry_datapath_packets",
                "Packets by what the datapath did with them, summed over CPUs.",
                MetricType::Counter,
                by_outcome(|c| c.packets),
            )?;
            family(
                e,
                "ferry_datapath_bytes",
                "Bytes by what the datapath did with them, summed over CPUs.",
                MetricType::Counter,
                by_outcome(|c| c.bytes),
            )?;
            let present = snapshot
                .entries
                .iter()
                .find(|(m, _)| *m == MAP_SOCK_REVERSE);
            if let Some((_, entries)) = present {
                let written = counters[outcome::SOCK_REVERSE_NEW as usize].packets;
                let removed = counters[outcome::SOCK_REVERSE_REMOVED as usize].packets;
                single(
                    e,
                    "ferry_sock_reverse_evictions",
                    "Entries of ferry_sock_rev the LRU evicted (new entries written less those the agent removed and those present): a socket that lost its entry sees the backend as its peer; above zero, the map is too small for the node's sockets.",
                    ConstGauge::new(sock_reverse_evictions(written, removed, *entries)),
                )?;
            }
        }
        let rows = &snapshot.services;
        service_counter(
            e,
            "ferry_service_packets",
            "Packets of a Service port's flows that ferry translated (both directions, tc and XDP) and datagrams the socket programs translated at sendmsg(), summed over its frontends and CPUs since each frontend got its id.",
            rows,
            |s| s.packets,
        )?;
        service_counter(
            e,
            "ferry_service_bytes",
            "Bytes of those packets as they arrived (the socket programs see no bytes), summed over a Service port's frontends and CPUs.",
            rows,
            |s| s.bytes,
        )?;
        service_counter(
            e,
            "ferry_service_new_connections",
            "Flows started to a Service port (tc, XDP) and connect() calls the socket programs translated, summed over its frontends and CPUs.",
            rows,
            |s| s.new_connections,
        )?;
        // Every reason of every port, zeros included: a series that first
        // appears at 1 hides its first drop from rate() and increase().
        let drops = rows.iter().flat_map(|r| {
            let [ns, name, port, protocol] = service_labels(&r.service);
            SERVICE_DROP_OUTCOMES
                .iter()
                .zip(r.stats.drops)
                .map(move |(o, n)| {
                    let reason = ("reason", outcome::NAMES[*o as usize]);
                    ([ns, name, port, protocol, reason], ConstCounter::new(n))
                })
        });
        family(
            e,
            "ferry_service_drops",
            "Packets (or socket calls) for a Service port dropped or rejected, by reason (the outcome names of ferry_datapath_packets_total), summed over its frontends and CPUs.",
            MetricType::Counter,
            drops,
        )?;
        if let Some(capacity) = snapshot.snat_capacity {
            single(
                e,
                "ferry_snat_ports_capacity",
                "Ports in the node's source-NAT range (--snat-ports, as the datapath has it): the most flows one backend can take through this node at once.",
                ConstGauge::new(capacity),
            )?;
        }
        Ok(())
    }
}

/// The conntrack gauges, from the last garbage collection walk.
#[derive(Debug, Default)]
struct ConntrackCollector(Arc<Mutex<Option<ConntrackSummary>>>);

impl Collector for ConntrackCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Nothing before the first walk: an absent series, not a false 0.
        let Some(summary) = self.0.lock().expect("metrics lock").clone() else {
            return Ok(());
        };
        let e = &mut encoder;
        family(
            e,
            "ferry_conntrack_flows",
            "Live flows in ferry's conntrack by protocol (each flow once, whatever its entries), as of the agent's last complete garbage collection pass (the map read in slices about a second apart, a pass every --gc-interval-secs on a full map).",
            MetricType::Gauge,
            summary
                .flows
                .iter()
                .map(|(p, n)| ([("protocol", protocol_name(*p))], ConstGauge::new(*n))),
        )?;
        family(
            e,
            "ferry_snat_ports_in_use",
            "Source-NAT ports held per backend (address:port): flows from outside sent to another node's backend whose port a new connection may not take yet, as of the agent's last complete garbage collection pass. Out of ferry_snat_ports_capacity.",
            MetricType::Gauge,
            summary.snat_ports.iter().map(|((addr, port), n)| {
                ([("backend", format!("{addr}:{port}"))], ConstGauge::new(*n))
            }),
        )
    }
}

pub struct Metrics {
    registry: Registry,
    ready: AtomicBool,
    syncs: Counter,
    terminated_sockets: Counter,
    sync_duration: Histogram,
    programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    conntrack: Arc<Mutex<Option<ConntrackSummary>>>,
}

impl Metrics {
    /// The agent's metrics, over the maps pinned in `pin_dir`.
    pub fn new(pin_dir: &Path) -> Self {
        Self::with_source(PinnedMaps::new(pin_dir))
    }

    /// The agent's metrics, with the map-derived ones read from `maps`.
    pub fn with_source(maps: impl MapSource) -> Self {
        let mut registry = Registry::default();
        let syncs = Counter::default();
        let terminated_sockets = Counter::default();
        let sync_duration = Histogram::new(BUCKETS);
        let programming = Histogram::new(BUCKETS);
        let last_sync = Gauge::<f64, AtomicU64>::default();
        // prometheus-client adds "_total" to counters and the unit to the
        // name, and ends each help with a full stop.
        registry.register("ferry_syncs", "Syncs of the dataplane maps", syncs.clone());
        registry.register(
            "ferry_sock_terminated",
            "Connected UDP sockets translated at connect() that the agent terminated (ECONNABORTED) because their backend left the Service",
            terminated_sockets.clone(),
        );
        registry.register_with_unit(
            "ferry_sync_duration",
            "Time from the objects to the maps written, per sync (kube-proxy: kubeproxy_sync_proxy_rules_duration_seconds)",
            Unit::Seconds,
            sync_duration.clone(),
        );
        registry.register_with_unit(
            "ferry_network_programming_duration",
            "Time from a change (an EndpointSlice's last-change-trigger-time, or the agent seeing it) to the dataplane holding it (kube-proxy: kubeproxy_network_programming_duration_seconds)",
            Unit::Seconds,
            programming.clone(),
        );
        registry.register(
            "ferry_sync_last_timestamp_seconds",
            "When the last sync that wrote the whole plan finished, Unix seconds; a sync with a failed write does not count (kube-proxy: kubeproxy_sync_proxy_rules_last_timestamp_seconds)",
            last_sync.clone(),
        );
        registry.register_collector(Box::new(MapCollector(Box::new(maps))));
        let conntrack = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(ConntrackCollector(conntrack.clone())));
        Self {
            registry,
            ready: AtomicBool::new(false),
            syncs,
            terminated_sockets,
            sync_duration,
            programming,
            last_sync,
            conntrack,
        }
    }

    /// A sync was written: `sync_seconds` from objects to maps, and
    /// `programming_seconds`, one per change it carried, from the change
    /// (its trigger time, or the agent seeing it) to the maps holding it.
    /// `complete`: every write succeeded (kube-proxy moves its last-sync
    /// timestamp only then). The first one makes the agent ready.
    pub fn record_sync(&self, sync_seconds: f64, programming_seconds: &[f64], complete: bool) {
        self.sync_duration.observe(sync_seconds);
        for seconds in programming_seconds {
            self.programming.observe(*seconds);
        }
        self.syncs.inc();
        if complete {
            let now = SystemTime::now().duration_since(UNIX_EPOCH);
            self.last_sync.set(now.unwrap_or_default().as_secs_f64());
        }
        self.ready.store(true, Ordering::Release);
    }

    /// Connected UDP sockets terminated because their backend left.
    pub fn record_terminated_sockets(&self, n: usize) {
        self.terminated_sockets.inc_by(n as u64);
    }

    /// What the last conntrack garbage collection walk saw (None: it
    /// failed; the last good one is kept).
    pub fn record_conntrack(&self, summary: Option<ConntrackSummary>) {
        if let Some(summary) = summary {
            *self.conntrack.lock().expect("metrics lock") = Some(summary);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition (format 0.0.4). Reads the maps: call
    /// it off the runtime's threads.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the collectors skip what they
        // cannot read rather than fail the scrape.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
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
                // Reading the maps (a batch walk per counted map, every
                // Service's counters) blocks: off the runtime's threads.
                let metrics = self.0.clone();
                let body = tokio::task::spawn_blocking(move || metrics.render())
                    .await
                    .unwrap_or_default();
                Reply::new(StatusCode::OK, prometheus_text::CONTENT_TYPE, body)
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
    use std::collections::BTreeSet;

    use super::*;
    use crate::maps::conntrack::ConntrackSummary;

    /// A map source with fixed values.
    #[derive(Debug)]
    struct Sample(MapSnapshot);

    impl MapSource for Sample {
        fn read(&self) -> MapSnapshot {
            self.0.clone()
        }
    }

    fn web_http() -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: "TCP",
        }
    }

    /// Maps holding a little of everything.
    fn sample() -> MapSnapshot {
        let mut counters = vec![DatapathCounter::default(); outcome::COUNT as usize];
        counters[outcome::TRANSLATED as usize] = DatapathCounter {
            packets: 84,
            bytes: 6000,
        };
        counters[outcome::SOCK_REVERSE_NEW as usize].packets = 12;
        counters[outcome::SOCK_REVERSE_REMOVED as usize].packets = 2;
        let mut stats = ServiceStats {
            packets: 15,
            bytes: 1700,
            new_connections: 3,
            ..Default::default()
        };
        stats.drops[0] = 3;
        MapSnapshot {
            entries: vec![(MAP_SERVICES, 2), (MAP_SOCK_REVERSE, 8)],
            counters: Some(counters),
            services: vec![ServiceRow {
                service: web_http(),
                stats,
            }],
            snat_capacity: Some(4536),
            memory: vec![(MAP_CONNTRACK, 14_680_064)],
        }
    }

    fn conntrack_sample() -> ConntrackSummary {
        ConntrackSummary {
            flows: BTreeMap::from([(6, 5), (17, 1)]),
            snat_ports: BTreeMap::from([(("10.244.2.5".parse().unwrap(), 8080), 2)]),
        }
    }

    #[test]
    fn histograms_are_cumulative_and_ready_follows_the_first_sync() {
        let m = Metrics::new(Path::new("/nonexistent"));
        assert!(!m.is_ready());
        m.record_sync(0.002, &[0.003], true);
        m.record_sync(0.2, &[], true);
        assert!(m.is_ready());
        let text = m.render();
        assert!(
            text.contains("# TYPE ferry_syncs_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nferry_syncs_total 2\n"), "{text}");
        assert!(text.contains("ferry_sync_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("ferry_sync_duration_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("ferry_sync_duration_seconds_count 2\n"));
        // Only the sync that changed something is a programming latency.
        assert!(text.contains("ferry_network_programming_duration_seconds_count 1\n"));
        assert!(
            text.contains("ferry_network_programming_duration_seconds_bucket{le=\"+Inf\"} 1\n")
        );
        assert!(text.contains("# TYPE ferry_network_programming_duration_seconds histogram\n"));
        assert!(text.contains("ferry_sock_terminated_total 0\n"), "{text}");
    }

    /// The value of the unlabelled sample `name` in `text`.
    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn the_last_sync_timestamp_moves_only_with_a_complete_sync() {
        let m = Metrics::new(Path::new("/nonexistent"));
        m.record_sync(0.001, &[], false);
        assert_eq!(value(&m.render(), "ferry_sync_last_timestamp_seconds"), 0.0);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        m.record_sync(0.001, &[], true);
        let at = value(&m.render(), "ferry_sync_last_timestamp_seconds");
        assert!(at >= before.as_secs_f64().floor(), "{at} {before:?}");
        assert!(at < before.as_secs_f64() + 60.0, "{at} {before:?}");
    }

    #[test]
    fn the_map_values_are_read_at_scrape() {
        let m = Metrics::with_source(Sample(sample()));
        let text = m.render();
        for line in [
            "# TYPE ferry_map_entries gauge",
            "ferry_map_entries{map=\"ferry_services\"} 2",
            "# TYPE ferry_map_memory_bytes gauge",
            "ferry_map_memory_bytes{map=\"ferry_conntrack\"} 14680064",
            "# TYPE ferry_datapath_packets_total counter",
            "ferry_datapath_packets_total{outcome=\"translated\"} 84",
            "ferry_datapath_bytes_total{outcome=\"translated\"} 6000",
            "ferry_datapath_packets_total{outcome=\"drop_spoofed_source\"} 0",
            // 12 written, 2 removed by the agent, 8 present: 2 evicted.
            "ferry_sock_reverse_evictions 2",
            "# TYPE ferry_service_packets_total counter",
            "ferry_service_packets_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\"} 15",
            "ferry_service_bytes_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\"} 1700",
            "ferry_service_new_connections_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\"} 3",
            "ferry_service_drops_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\",reason=\"rejected_no_endpoints\"} 3",
            "ferry_service_drops_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\",reason=\"drop_snat_ports_exhausted\"} 0",
            "ferry_snat_ports_capacity 4536",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
        // Every drop reason, once per port.
        let drops = text
            .lines()
            .filter(|l| l.starts_with("ferry_service_drops_total{"))
            .count();
        assert_eq!(drops, SERVICE_DROP_OUTCOMES.len());
        // No conntrack gauges before the first garbage collection walk.
        assert!(!text.contains("ferry_conntrack_flows"), "{text}");
        m.record_conntrack(Some(conntrack_sample()));
        m.record_conntrack(None);
        let text = m.render();
        for line in [
            "# TYPE ferry_conntrack_flows gauge",
            "ferry_conntrack_flows{protocol=\"TCP\"} 5",
            "ferry_conntrack_flows{protocol=\"UDP\"} 1",
            "ferry_snat_ports_in_use{backend=\"10.244.2.5:8080\"} 2",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
    }

    #[test]
    fn an_unreadable_map_leaves_its_metrics_out_and_the_rest_in() {
        let m = Metrics::new(Path::new("/nonexistent"));
        let text = m.render();
        assert!(text.contains("ferry_syncs_total 0\n"), "{text}");
        assert!(!text.contains("ferry_datapath_packets_total{"), "{text}");
        assert!(!text.contains("ferry_snat_ports_capacity "), "{text}");
    }

    /// The metric names an exposition defines: each `# TYPE`'s name, with
    /// a histogram's `_bucket`, `_sum` and `_count` series.
    fn exported_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            names.insert(name.to_string());
        }
        names
    }

    /// The `ferry_` metric names a PromQL expression uses, outside its
    /// string literals (a label value such as `map="ferry_conntrack"` is no
    /// metric).
    fn metric_names_in(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut chars = expr.chars().peekable();
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        while let Some(c) = chars.next() {
            if c == '"' || c == '\'' {
                let mut escaped = false;
                for d in chars.by_ref() {
                    match d {
                        '\\' if !escaped => escaped = true,
                        d if d == c && !escaped => break,
                        _ => escaped = false,
                    }
                }
            } else if ident(c) {
                let mut word = String::from(c);
                while let Some(&d) = chars.peek().filter(|d| ident(**d)) {
                    word.push(d);
                    chars.next();
                }
                if word.starts_with("ferry_") {
                    names.push(word);
                }
            }
        }
        names
    }

    /// Every query of a dashboard: each panel target's `expr` (nested rows
    /// included) and each template variable's `query`.
    fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
            _ => {}
        }
    }

    /// The names `queries` use that `exported` does not hold.
    fn unknown_names(queries: &[String], exported: &BTreeSet<String>) -> Vec<String> {
        queries
            .iter()
            .flat_map(|q| metric_names_in(q))
            .filter(|n| !exported.contains(n))
            .collect()
    }

    const DASHBOARD: &str = include_str!("../../deploy/grafana-dashboard.json");

    #[test]
    fn the_dashboard_uses_only_metrics_the_agent_exports() {
        let m = Metrics::with_source(Sample(sample()));
        m.record_sync(0.01, &[0.02], true);
        m.record_conntrack(Some(conntrack_sample()));
        let exported = exported_names(&m.render());
        let dashboard: serde_json::Value =
            serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
        assert!(dashboard["title"].is_string());
        let mut all = Vec::new();
        queries(&dashboard, &mut all);
        assert!(all.len() >= 10, "queries: {all:?}");
        assert_eq!(unknown_names(&all, &exported), Vec::<String>::new());
        // The checker itself: a typo and a histogram series of a gauge are
        // caught, label values are not taken for metrics.
        let wrong = [
            r#"rate(ferry_servce_packets_total[5m])"#.to_string(),
            r#"ferry_map_entries_bucket"#.to_string(),
            r#"ferry_map_entries{map="ferry_conntrack"}"#.to_string(),
        ];
        assert_eq!(
            unknown_names(&wrong, &exported),
            ["ferry_servce_packets_total", "ferry_map_entries_bucket"]
        );
        // Every family the dashboard is for has a panel.
        let used: BTreeSet<String> = all.iter().flat_map(|q| metric_names_in(q)).collect();
        for name in [
            "ferry_network_programming_duration_seconds_bucket",
            "ferry_sync_duration_seconds_bucket",
            "ferry_sync_last_timestamp_seconds",
            "ferry_service_packets_total",
            "ferry_service_bytes_total",
            "ferry_service_new_connections_total",
            "ferry_service_drops_total",
            "ferry_datapath_packets_total",
            "ferry_conntrack_flows",
            "ferry_snat_ports_in_use",
            "ferry_snat_ports_capacity",
        ] {
            assert!(used.contains(name), "no panel shows {name}");
        }
    }
}
