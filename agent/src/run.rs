//! `ferry-agent run`: load or adopt the dataplane, then keep its maps equal
//! to what the Kubernetes objects say, until stopped. Stopping (or
//! crashing) leaves the pinned maps and attached programs in place, so
//! traffic keeps flowing and a restarted agent picks up where it left off.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cni,
    healthcheck::HealthChecks,
    loader::Dataplane,
    maps::{Conntrack, NodeMap, Routes, ServiceTable, monotonic_now_ns},
    model::{self, ModelConfig, desired_state_with},
    net::Ipv4Net,
    routing::Routing,
    source::file::{FileSource, parse_manifest},
    sync::sync,
};

pub struct RunConfig {
    pub node: String,
    pub manifest: PathBuf,
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

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let mut dataplane = Dataplane::load(&cfg.pin_dir)
        .with_context(|| format!("loading the dataplane into {}", cfg.pin_dir.display()))?;
    dataplane.pin_programs()?;
    let mut table = ServiceTable::open(&cfg.pin_dir)?;
    let mut conntrack = Conntrack::open(&cfg.pin_dir)?;
    update_pod_links(&cfg.pin_dir);
    let mut routes = match &cfg.routing {
        Some(routing) => {
            let ifindex = routing
                .setup(&cfg.pin_dir)
                .context("setting up cross-node routing")?;
            tracing::info!(mode = ?routing.mode, uplink = %routing.uplink, "cross-node routing attached");
            Some((routing, ifindex, Routes::open(&cfg.pin_dir)?))
        }
        None => None,
    };
    let mut node_map = NodeMap::open(&cfg.pin_dir)?;
    let mut health_checks = HealthChecks::default();
    let pod_mtu = cfg.routing.as_ref().map_or(cfg.mtu, |r| r.pod_mtu(cfg.mtu));
    tracing::info!(node = %cfg.node, pin_dir = %cfg.pin_dir.display(), "dataplane loaded");

    let mut source = FileSource::new(&cfg.manifest);
    let mut cni_cidr: Option<Ipv4Net> = None;
    let mut last_gc = Instant::now();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        match source.changed() {
            Ok(Some(text)) => {
                let seen = Instant::now();
                let (objects, problems) = parse_manifest(&text);
                report(&problems);
                let parsed = Instant::now();
                let (desired, problems) = desired_state_with(&objects, &cfg.model);
                report(&problems);
                let modelled = Instant::now();
                if let Err(e) = node_map.set(desired.node_addr, cfg.snat_ports) {
                    tracing::warn!(error = %e, "writing this node's address failed; external traffic to other nodes' backends is dropped until it is written");
                }
                let stats = sync(&mut table, &desired.frontends)?;
                health_checks.sync(&desired.health_checks);
                if let Some((routing, ifindex, routes)) = &mut routes {
                    match routes.sync(&routing.routes(&desired.peers, *ifindex)) {
                        Ok(r) if r.upserted + r.removed > 0 => tracing::info!(
                            nodes = desired.peers.len(),
                            upserted = r.upserted,
                            removed = r.removed,
                            "routes synced"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "writing the route map failed; will retry on the next change")
                        }
                    }
                }
                tracing::info!(
                    source = %source.path().display(),
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
                    && cni_cidr != Some(cidr)
                {
                    let list = cni::conflist(&cidr, &cfg.pin_dir, &cfg.cni_data_dir, pod_mtu);
                    let path = cni::write_conflist(dir, &list).with_context(|| {
                        format!("writing the CNI config into {}", dir.display())
                    })?;
                    tracing::info!(path = %path.display(), pod_cidr = %cidr, "CNI config written");
                    cni_cidr = Some(cidr);
                }
                if desired.pod_cidr.is_none() && cfg.cni_conf_dir.is_some() {
                    tracing::warn!(node = %cfg.node, "no Node object with a podCIDR for this node yet: no CNI config written");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                source = %source.path().display(),
                error = %e,
                "cannot read the manifest; keeping the current dataplane state"
            ),
        }
        if last_gc.elapsed() >= cfg.gc_interval {
            match conntrack.collect_garbage(monotonic_now_ns()) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "conntrack garbage collected"),
                Err(e) => tracing::warn!(error = %e, "conntrack garbage collection failed"),
            }
            last_gc = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(source.poll) => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("stopping; the dataplane keeps forwarding from the pinned maps");
    drop(dataplane);
    Ok(())
}

fn report(problems: &[model::Problem]) {
    for p in problems {
        tracing::warn!(object = %p.object, field = %p.field, "skipped: {}", p.message);
    }
}
