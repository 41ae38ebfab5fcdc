//! `ferry-agent run`: load or adopt the dataplane, then keep the node equal
//! to its plan, until stopped. One loop for every source: a snapshot of the
//! objects -> `plan::plan` -> `Reconciler::reconcile`. Stopping (or
//! crashing) leaves the pinned maps and attached programs in place, so
//! traffic keeps flowing and a restarted agent picks up where it left off.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{RunConfig, SocketLb, SourceConfig},
    healthcheck::HealthChecks,
    latency::TriggerTimes,
    loader::Dataplane,
    maps::{Conntrack, NodeMap, Routes, ServiceRanges, ServiceTable, monotonic_now_ns},
    metrics::Metrics,
    plan::{Changed, NeedsEverything, Planner, problem::ProblemLog},
    reconcile::{
        Reconciler, Targets,
        system::{KernelRoutes, ProcSys, SystemFiles, SystemLinks},
    },
    sockterm::SystemSockets,
    source::{Snapshot, Source, file::FileSource, kube::KubeSource},
};

/// A write that failed (a full map, an error) is retried this often even
/// when no object changes.
const RESYNC: Duration = Duration::from_secs(60);

/// Point every pod's pinned tc link at the program just loaded: an
/// upgraded agent's datapath takes over existing pods without a gap.
/// Before pods' veths get a program that checks source addresses, every pod
/// recorded by an older ferry-cni needs its address on record, or its
/// traffic would be dropped as spoofed.
fn restore_pod_sources(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let added = crate::maps::Endpoints::open(pin_dir)?
        .restore_sources()
        .context("recording the source address of this node's pods")?;
    if added > 0 {
        tracing::info!(
            pods = added,
            "recorded the source address of pods set up before anti-spoofing"
        );
    }
    Ok(())
}

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
    reconciler: Reconciler,
    /// The plan, kept up to date Service by Service.
    planner: Planner,
    metrics: Arc<Metrics>,
    /// The source's own problems (an unreadable document), each logged once.
    problems: ProblemLog,
    /// EndpointSlice trigger times seen, for the programming latency.
    triggers: TriggerTimes,
}

impl Agent {
    /// Make the node match `snapshot`: re-plan what it changed, then write
    /// what that moved (everything, for a snapshot of everything).
    fn apply(&mut self, snapshot: &Snapshot, source: &impl Source) {
        let parsed = Instant::now();
        let mut full = snapshot.changed == Changed::Everything;
        let triggers = self.triggers.new_triggers(&snapshot.objects.slices, full);
        let update = match self.planner.update(&snapshot.objects, &snapshot.changed) {
            Ok(update) => update,
            Err(NeedsEverything) => match source.everything() {
                Some(everything) => {
                    full = true;
                    self.planner
                        .update(&everything, &Changed::Everything)
                        .expect("a full update needs nothing more")
                }
                None => {
                    tracing::warn!(
                        "this node's addresses or zone changed, but the objects cannot be read again now; the Services keep their frontends until the next change"
                    );
                    return;
                }
            },
        };
        for p in update
            .new_problems
            .iter()
            .chain(self.problems.new_ones(&snapshot.problems))
        {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        let planned = Instant::now();
        let r = self
            .reconciler
            .reconcile_scoped(self.planner.plan(), &update.scope);
        let done = Instant::now();
        let services = r.services;
        // Only a sync that changed the maps programmed anything.
        let programming: Vec<f64> = match (services.changed(), triggers.is_empty()) {
            (0, _) => Vec::new(),
            (_, true) => vec![(done - snapshot.seen).as_secs_f64()],
            (_, false) => {
                let now = std::time::SystemTime::now();
                let since = |t| now.duration_since(t).unwrap_or_default().as_secs_f64();
                triggers.into_iter().map(since).collect()
            }
        };
        self.metrics
            .record_sync((done - parsed).as_secs_f64(), &programming, r.failed() == 0);
        let how = if full { "synced" } else { "synced changes" };
        self.report(
            &r,
            source.name(),
            how,
            Some((snapshot.seen, parsed, planned)),
        );
        if full {
            crate::alloc::release_freed_memory();
        }
    }

    /// Write the whole plan again: what failed is retried, and what
    /// something else changed (a route, a device) is put back.
    fn resync(&mut self, source: &str) {
        let start = Instant::now();
        let r = self.reconciler.reconcile(self.planner.plan());
        self.metrics
            .record_sync(start.elapsed().as_secs_f64(), &[], r.failed() == 0);
        self.report(&r, source.to_string(), "resynced", None);
    }

    /// Log what a sync did. `times`: when the change was seen, parsed and
    /// planned (None: a resync, which plans nothing).
    fn report(
        &self,
        r: &crate::reconcile::Report,
        source: String,
        how: &str,
        times: Option<(Instant, Instant, Instant)>,
    ) {
        let plan = self.planner.plan();
        let services = r.services;
        self.metrics.record_terminated_sockets(r.terminated_sockets);
        if r.routes.changed() + r.kernel_routes.changed() > 0 {
            tracing::info!(
                nodes = plan.peers.len(),
                upserted = r.routes.upserted,
                removed = r.routes.removed,
                kernel_routes_changed = r.kernel_routes.changed(),
                "routes synced"
            );
        }
        if let (Some(path), Some(cidr)) = (&r.conflist, plan.pod_cidr) {
            tracing::info!(path = %path.display(), pod_cidr = %cidr, "CNI config written");
        }
        let now = Instant::now();
        let (seen, parsed, planned) = times.unwrap_or((now, now, now));
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            source,
            frontends = plan.frontends.len(),
            upserted = services.upserted,
            removed = services.removed,
            unchanged = services.unchanged,
            stale_udp_flows = r.stale_flows,
            terminated_sockets = r.terminated_sockets,
            service_ranges_changed = r.service_ranges.changed(),
            failed = r.failed(),
            parse_ms = ms(parsed - seen),
            model_ms = ms(planned - parsed),
            maps_ms = ms(now - planned),
            elapsed_ms = ms(now - seen),
            "{how}"
        );
    }

    /// Apply every snapshot `source` yields, collect conntrack garbage and
    /// resync, until SIGTERM or SIGINT.
    async fn serve(&mut self, mut source: impl Source) -> anyhow::Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        // Garbage collection walks conntrack in steps, about one a second,
        // each a slice sized so that a pass over a full map takes one
        // --gc-interval-secs: the same removal delay as one walk of the
        // whole map per interval, without its burst of CPU.
        let gc_steps = gc_steps_per_pass(self.cfg.gc_interval);
        let mut gc = tokio::time::interval(self.cfg.gc_interval / gc_steps);
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        let name = source.name();
        let mut synced = false;
        loop {
            tokio::select! {
                snapshot = source.next() => {
                    self.apply(&snapshot, &source);
                    synced = true;
                }
                _ = resync.tick() => {
                    if synced {
                        self.resync(&name);
                    }
                }
                _ = gc.tick() => {
                    let pass = self.reconciler.collect_garbage(monotonic_now_ns(), gc_steps);
                    self.metrics.record_conntrack(pass);
                }
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
        }
    }
}

/// Garbage collection steps per pass over conntrack: one a second of
/// `interval` (at least one).
fn gc_steps_per_pass(interval: Duration) -> u32 {
    interval.as_secs().clamp(1, u64::from(u32::MAX)) as u32
}

/// The real targets on this node.
fn system_targets(cfg: &RunConfig) -> anyhow::Result<Targets> {
    let pin_dir = &cfg.plan.pin_dir;
    Ok(Targets {
        services: Box::new(ServiceTable::open(pin_dir)?),
        service_ranges: Box::new(ServiceRanges::open(pin_dir)?),
        node: Box::new(NodeMap::open(pin_dir)?),
        routes: Box::new(Routes::open(pin_dir)?),
        kernel_routes: Box::new(KernelRoutes::default()),
        flows: Box::new(Conntrack::open(pin_dir)?),
        sockets: Box::new(SystemSockets::open(
            pin_dir,
            // Pods' sockets are translated only with `on`: only then are
            // there any of theirs to terminate.
            (cfg.socket_lb == SocketLb::On).then(|| {
                crate::cni::podns::records_dir(&cfg.cni_data_dir, crate::cni::NETWORK_NAME)
            }),
        )?),
        links: Box::new(SystemLinks {
            pin_dir: pin_dir.clone(),
        }),
        files: Box::new(SystemFiles),
        health: Box::new(HealthChecks::default()),
        ports: Box::new(ProcSys(cfg.proc_sys.clone())),
    })
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let pin_dir = cfg.plan.pin_dir.clone();
    let mut dataplane = Dataplane::load_sized(&pin_dir, &cfg.map_sizes)
        .with_context(|| format!("loading the dataplane into {}", pin_dir.display()))?;
    dataplane.pin_programs()?;
    // Held to the end: dropping it closes the programs' log ring buffer.
    let _debug_printer = match crate::debug::spawn_printer(&mut dataplane.ebpf) {
        Ok(task) => Some(AbortOnDrop(task)),
        Err(error) => {
            tracing::warn!(%error, "`ferry-agent debug on` will print nothing");
            None
        }
    };
    restore_pod_sources(&pin_dir)?;
    update_pod_links(&pin_dir);
    crate::socklb::apply(&pin_dir, cfg.socket_lb, cfg.cgroup_root.as_deref())
        .with_context(|| format!("setting up --socket-lb {}", cfg.socket_lb.name()))?;
    if cfg.socket_lb == SocketLb::On && crate::sockterm::may_enter_pods() == Some(false) {
        tracing::warn!(
            "--socket-lb on without CAP_SYS_ADMIN: a pod's connected UDP socket whose backend leaves cannot be terminated (entering the pod's network namespace needs it) and keeps its backend until the application reconnects"
        );
    }
    let mut reconciler = Reconciler::new(system_targets(&cfg)?);
    // Links and reserved ports follow the configuration alone: make them
    // before any object arrives (the API may be down), and stop here if the
    // uplink is wrong.
    reconciler
        .reconcile_links(&cfg.plan.links())
        .context("setting up cross-node routing")?;
    reconciler.reserve_ports(&cfg.plan.reserved_ports());
    if let Some(uplink) = &cfg.plan.uplink {
        tracing::info!(overlay = ?uplink.overlay, uplink = %uplink.interface, "cross-node routing attached");
    }
    let metrics = Arc::new(Metrics::new(&pin_dir));
    if let Some(addr) = cfg.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on --metrics-address {addr}"))?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    let mut agent = Agent {
        planner: Planner::new(&cfg.plan),
        reconciler,
        metrics,
        problems: ProblemLog::default(),
        triggers: TriggerTimes::default(),
        cfg,
    };
    tracing::info!(node = %agent.cfg.plan.node_name, pin_dir = %pin_dir.display(), "dataplane loaded");
    match agent.cfg.source.clone() {
        SourceConfig::File(path) => agent.serve(FileSource::new(&path)).await?,
        SourceConfig::Kube(api) => {
            let client = crate::source::kube::client(&api).await?;
            agent.serve(KubeSource::start(client)).await?
        }
    }
    tracing::info!("stopping; the dataplane keeps forwarding from the pinned maps");
    drop(dataplane);
    Ok(())
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
