//! `ferry-agent run`: load or adopt the dataplane, then keep its maps equal
//! to what the Kubernetes objects say, until stopped. Stopping (or
//! crashing) leaves the pinned maps and attached programs in place, so
//! traffic keeps flowing and a restarted agent picks up where it left off.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cni,
    healthcheck::HealthChecks,
    loader::Dataplane,
    maps::{Conntrack, NodeMap, Routes, ServiceTable, monotonic_now_ns},
    metrics::Metrics,
    model::{self, ModelConfig, Objects, desired_state_with},
    net::Ipv4Net,
    routing::Routing,
    source::{
        file::{FileSource, parse_manifest},
        kube::KubeSource,
    },
    sync::sync,
};

/// Where the objects come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A multi-document YAML manifest, re-read when it changes.
    File(PathBuf),
    /// The Kubernetes API: a kubeconfig, or None for in-cluster config.
    Kube(Option<PathBuf>),
}

#[derive(Debug)]
pub struct RunConfig {
    pub node: String,
    pub source: Source,
    pub pin_dir: PathBuf,
    /// Where to write the CNI conflist (None: do not write one).
    pub cni_conf_dir: Option<PathBuf>,
    /// IPAM store handed to ferry-cni through the conflist.
    pub cni_data_dir: PathBuf,
    pub mtu: u32,
    pub gc_interval: Duration,
    /// Cross-node routing (None: this node's pods only).
    pub routing: Option<Routing>,
    /// NodePort addresses and range.
    pub model: ModelConfig,
    /// Source ports for external traffic sent to other nodes.
    pub snat_ports: (u16, u16),
    /// The node's /proc/sys (for the reserved ports).
    pub proc_sys: PathBuf,
    /// Where to serve /healthz, /readyz and /metrics (None: not served).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Point every pod's pinned tc link at the program just loaded: an
/// upgraded agent's datapath takes over existing pods without a gap.
fn update_pod_links(pin_dir: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir(pin_dir.join(ferry_common::PIN_LINKS_DIR)) else {
        return;
    };
    for entry in dir.flatten() {
        if let Err(e) =
            crate::tc::update_pinned_link(pin_dir, ferry_common::PIN_PROG_FROM_POD, &entry.path())
        {
            tracing::warn!(error = %e, "pod link keeps its previous program");
        }
    }
}

/// Everything the agent keeps between syncs.
struct Agent {
    cfg: RunConfig,
    table: ServiceTable,
    conntrack: Conntrack,
    routes: Option<(u32, Routes)>,
    node_map: NodeMap,
    health_checks: HealthChecks,
    pod_mtu: u32,
    cni_cidr: Option<Ipv4Net>,
    metrics: Arc<Metrics>,
    /// Kernel routes to other nodes' pod CIDRs this agent installed.
    kernel_routes: std::collections::BTreeSet<Ipv4Net>,
}

impl Agent {
    /// Make the dataplane match `objects`. `seen`: when the change that led
    /// here was noticed (for the network-programming latency).
    fn apply(
        &mut self,
        objects: &Objects,
        seen: Instant,
        parsed: Instant,
        source: &str,
    ) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let (desired, problems) = desired_state_with(objects, &cfg.model);
        report(&problems);
        let modelled = Instant::now();
        if let Err(e) = self.node_map.set(desired.node_addr, cfg.snat_ports) {
            tracing::warn!(error = %e, "writing this node's address failed; external traffic to other nodes' backends is dropped until it is written");
        }
        let stats = sync(&mut self.table, &desired.frontends)?;
        self.health_checks.sync(&desired.health_checks);
        if let (Some(routing), Some((ifindex, routes))) = (&cfg.routing, &mut self.routes) {
            match routes.sync(&routing.routes(&desired.peers, *ifindex)) {
                Ok(r) if r.upserted + r.removed > 0 => tracing::info!(
                    nodes = desired.peers.len(),
                    upserted = r.upserted,
                    removed = r.removed,
                    "routes synced"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "writing the route map failed; retried at the next change or resync")
                }
            }
            if let Err(e) = routing.sync_kernel_routes(&desired.peers, &mut self.kernel_routes) {
                tracing::warn!(error = %e, "writing the node's routes to other nodes' pods failed; the node's own traffic to them may not arrive; retried at the next change or resync");
            }
        }
        let done = Instant::now();
        self.metrics.record_sync(
            (done - parsed).as_secs_f64(),
            (done - seen).as_secs_f64(),
            stats.upserted + stats.removed > 0,
        );
        tracing::info!(
            source,
            frontends = desired.frontends.len(),
            upserted = stats.upserted,
            removed = stats.removed,
            unchanged = stats.unchanged,
            failed = stats.failed,
            parse_ms = (parsed - seen).as_secs_f64() * 1e3,
            model_ms = (modelled - parsed).as_secs_f64() * 1e3,
            maps_ms = modelled.elapsed().as_secs_f64() * 1e3,
            elapsed_ms = seen.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
        if let (Some(dir), Some(cidr)) = (&cfg.cni_conf_dir, desired.pod_cidr)
            && self.cni_cidr != Some(cidr)
        {
            let list = cni::conflist(&cidr, &cfg.pin_dir, &cfg.cni_data_dir, self.pod_mtu);
            let path = cni::write_conflist(dir, &list)
                .with_context(|| format!("writing the CNI config into {}", dir.display()))?;
            tracing::info!(path = %path.display(), pod_cidr = %cidr, "CNI config written");
            self.cni_cidr = Some(cidr);
        }
        if desired.pod_cidr.is_none() && cfg.cni_conf_dir.is_some() {
            tracing::warn!(node = %cfg.node, "no Node object with a podCIDR for this node yet: no CNI config written");
        }
        Ok(())
    }

    fn collect_garbage(&mut self) {
        match self.conntrack.collect_garbage(monotonic_now_ns()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "conntrack garbage collected"),
            Err(e) => tracing::warn!(error = %e, "conntrack garbage collection failed"),
        }
    }
}

/// Keep the node's own sockets off the source-NAT and NodePort ranges. Not
/// fatal: forwarding works without it, only a node socket that happens to
/// pick one of those ports would suffer.
fn reserve_ports(cfg: &RunConfig) {
    let ranges = [cfg.snat_ports, cfg.model.nodeport_range];
    match crate::reserved_ports::reserve(&cfg.proc_sys, &ranges) {
        Ok(crate::reserved_ports::Reserved::Already) => {
            tracing::debug!("source-NAT and NodePort ranges already reserved")
        }
        Ok(crate::reserved_ports::Reserved::Added(now)) => tracing::info!(
            ip_local_reserved_ports = %now,
            "reserved the source-NAT and NodePort ranges from the node's automatic port choice"
        ),
        Err(e) => tracing::warn!("{e}"),
    }
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let mut dataplane = Dataplane::load(&cfg.pin_dir)
        .with_context(|| format!("loading the dataplane into {}", cfg.pin_dir.display()))?;
    dataplane.pin_programs()?;
    update_pod_links(&cfg.pin_dir);
    let routes = match &cfg.routing {
        Some(routing) => {
            let ifindex = routing
                .setup(&cfg.pin_dir)
                .context("setting up cross-node routing")?;
            tracing::info!(mode = ?routing.mode, uplink = %routing.uplink, "cross-node routing attached");
            Some((ifindex, Routes::open(&cfg.pin_dir)?))
        }
        None => None,
    };
    reserve_ports(&cfg);
    let metrics = Arc::new(Metrics::new(&cfg.pin_dir));
    if let Some(addr) = cfg.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on --metrics-address {addr}"))?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    let mut agent = Agent {
        table: ServiceTable::open(&cfg.pin_dir)?,
        conntrack: Conntrack::open(&cfg.pin_dir)?,
        routes,
        node_map: NodeMap::open(&cfg.pin_dir)?,
        health_checks: HealthChecks::default(),
        pod_mtu: cfg.routing.as_ref().map_or(cfg.mtu, |r| r.pod_mtu(cfg.mtu)),
        cni_cidr: None,
        metrics,
        kernel_routes: Default::default(),
        cfg,
    };
    tracing::info!(node = %agent.cfg.node, pin_dir = %agent.cfg.pin_dir.display(), "dataplane loaded");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    match agent.cfg.source.clone() {
        Source::File(path) => {
            let mut source = FileSource::new(&path);
            let mut last_gc = Instant::now();
            loop {
                match source.changed() {
                    Ok(Some(text)) => {
                        let seen = Instant::now();
                        let (objects, problems) = parse_manifest(&text);
                        report(&problems);
                        agent.apply(&objects, seen, Instant::now(), &path.display().to_string())?;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        source = %path.display(),
                        error = %e,
                        "cannot read the manifest; keeping the current dataplane state"
                    ),
                }
                if last_gc.elapsed() >= agent.cfg.gc_interval {
                    agent.collect_garbage();
                    last_gc = Instant::now();
                }
                tokio::select! {
                    _ = tokio::time::sleep(source.poll) => {}
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                }
            }
        }
        Source::Kube(kubeconfig) => {
            let client = crate::source::kube::client(kubeconfig.as_deref()).await?;
            let source = KubeSource::start(client);
            tracing::info!(
                "watching Services, EndpointSlices and Nodes; the first sync waits for all three lists"
            );
            tokio::select! {
                _ = source.wait_ready() => {}
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
            let mut gc = tokio::time::interval(agent.cfg.gc_interval);
            // A write that failed (a full map, an error) is retried even when
            // no object changes.
            let mut resync = tokio::time::interval(Duration::from_secs(60));
            resync.tick().await;
            let mut seen = Instant::now();
            loop {
                // Changes arrive in bursts (a rollout touches many slices):
                // take what has piled up, then apply once.
                source.drain_changes();
                let objects = source.objects();
                agent.apply(&objects, seen, Instant::now(), "kube")?;
                loop {
                    tokio::select! {
                        _ = source.changed() => {
                            seen = Instant::now();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            break;
                        }
                        _ = gc.tick() => agent.collect_garbage(),
                        _ = resync.tick() => {
                            seen = Instant::now();
                            break;
                        }
                        _ = sigterm.recv() => return finish(dataplane),
                        _ = sigint.recv() => return finish(dataplane),
                    }
                }
            }
        }
    }
    finish(dataplane)
}

fn finish(dataplane: Dataplane) -> anyhow::Result<()> {
    tracing::info!("stopping; the dataplane keeps forwarding from the pinned maps");
    drop(dataplane);
    Ok(())
}

fn report(problems: &[model::Problem]) {
    for p in problems {
        tracing::warn!(object = %p.object, field = %p.field, "skipped: {}", p.message);
    }
}
