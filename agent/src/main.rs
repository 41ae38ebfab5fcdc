use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_agent::{
    DEFAULT_PIN_DIR, inspect,
    loader::Dataplane,
    model::ModelConfig,
    routing::{Routing, RoutingMode, XdpMode},
    run,
};

/// ferry's node agent and inspection CLI.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpChoice {
    Off,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Services,
    Backends,
    Conntrack,
    Endpoints,
    Counters,
}

// Parsed once at startup; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: load (or adopt) the dataplane and keep its maps in
    /// step with the Kubernetes objects.
    Run {
        /// This node's name (as in its Node object).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// Where objects come from: `kube` (the Kubernetes API; the default
        /// inside a cluster) or `file:PATH` (a multi-document YAML manifest
        /// of Services, EndpointSlices and Nodes, re-read on change).
        #[arg(long)]
        source: Option<String>,
        /// kubeconfig for `--source kube` outside a cluster (inside one,
        /// the pod's service account is used).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Check the options and print the resulting configuration, then
        /// exit without touching the node.
        #[arg(long)]
        dry_run: bool,
        /// Serve /healthz, /readyz and /metrics here; `off` to not serve.
        #[arg(long, default_value = "0.0.0.0:9402", value_parser = parse_listen)]
        metrics_address: Listen,
        /// Directory on a BPF filesystem for ferry's pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Write the CNI conflist (with this node's pod CIDR) here.
        #[arg(long)]
        cni_conf_dir: Option<PathBuf>,
        /// IPAM store for ferry-cni (written into the conflist).
        #[arg(long, default_value = "/var/lib/cni/networks")]
        cni_data_dir: PathBuf,
        /// Pod interface MTU (written into the conflist).
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// Seconds between conntrack garbage collections.
        #[arg(long, default_value_t = 10)]
        gc_interval_secs: u64,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// The interface towards the other nodes. Without it, only this
        /// node's pods are served.
        #[arg(long)]
        uplink: Option<String>,
        /// How pods on other nodes are reached.
        #[arg(long, value_enum, default_value_t = RoutingMode::Native)]
        routing: RoutingMode,
        /// VXLAN network identifier (VXLAN mode).
        #[arg(long, default_value_t = 1)]
        vxlan_vni: u32,
        /// VXLAN UDP port (VXLAN mode).
        #[arg(long, default_value_t = 4789)]
        vxlan_port: u16,
        /// XDP on the uplink (native routing only): `off` (default),
        /// `native` (the NIC driver's XDP; frames arrive with full
        /// checksums), or `generic` (any driver, but only where packets
        /// never arrive checksum-offloaded; see the README).
        #[arg(long, value_enum, default_value_t = XdpChoice::Off)]
        xdp: XdpChoice,
        /// Source ports for external traffic sent to backends on other
        /// nodes (FROM-TO). They are reserved in the node's
        /// net.ipv4.ip_local_reserved_ports. A closed connection's port
        /// rests 1 s (100 ms under pressure; 60 s if the backend closed
        /// first) before reuse, so
        /// the range caps new connections per second per node and backend.
        #[arg(long, default_value = "61000-65535", value_parser = parse_snat_ports)]
        snat_ports: (u16, u16),
        /// Addresses NodePorts answer on, comma-separated (default: this
        /// node's InternalIPs from its Node object).
        #[arg(long, value_delimiter = ',')]
        nodeport_addresses: Option<Vec<std::net::Ipv4Addr>>,
        /// The cluster's NodePort range, as the apiserver's
        /// --service-node-port-range (FROM-TO).
        #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
        nodeport_range: (u16, u16),
        /// The node's /proc/sys, for net.ipv4.ip_local_reserved_ports: the
        /// agent reserves --snat-ports and --nodeport-range there so that
        /// the node's own sockets never pick those ports.
        #[arg(long, default_value = "/proc/sys")]
        proc_sys: PathBuf,
    },
    /// Print what the dataplane holds, from the pinned maps.
    Inspect {
        #[arg(value_enum)]
        what: What,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load the kernel programs and pin their maps (adopting maps already
    /// pinned there), then exit.
    Load {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// A listen address, or `off`.
#[derive(Clone, Copy, Debug)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{s:?} is not an address like 0.0.0.0:9402 (or off): {e}"))
}

/// "61000-65535".
fn parse_snat_ports(s: &str) -> Result<(u16, u16), String> {
    let (from, to) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range like 61000-65535"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{p:?} in {s:?}: {e}"))
    };
    let (from, to) = (parse(from)?, parse(to)?);
    if from < 1024 || from > to {
        return Err(format!("{s:?} is empty or reaches below 1024"));
    }
    Ok((from, to))
}

/// "30000-32767".
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (from, to) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range like 30000-32767"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{p:?} in {s:?}: {e}"))
    };
    let (from, to) = (parse(from)?, parse(to)?);
    if from == 0 || from > to {
        return Err(format!("{s:?} is empty or starts at 0"));
    }
    Ok((from, to))
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            node,
            source,
            kubeconfig,
            metrics_address,
            dry_run,
            pin_dir,
            cni_conf_dir,
            cni_data_dir,
            mtu,
            gc_interval_secs,
            log_format,
            uplink,
            routing,
            vxlan_vni,
            vxlan_port,
            nodeport_addresses,
            nodeport_range,
            xdp,
            snat_ports,
            proc_sys,
        } => {
            init_logs(log_format);
            if nodeport_range.1 >= snat_ports.0 && nodeport_range.0 <= snat_ports.1 {
                bail!(
                    "--nodeport-range {}-{} overlaps --snat-ports {}-{}: a reply to external traffic would look like a new NodePort connection; make them disjoint",
                    nodeport_range.0,
                    nodeport_range.1,
                    snat_ports.0,
                    snat_ports.1
                );
            }
            let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
            let source = match source.as_deref() {
                Some("kube") => run::Source::Kube(kubeconfig),
                Some(s) if s.starts_with("file:") => {
                    run::Source::File(PathBuf::from(&s["file:".len()..]))
                }
                None if in_cluster || kubeconfig.is_some() => run::Source::Kube(kubeconfig),
                Some(other) => bail!("--source {other:?} is not supported; use kube or file:PATH"),
                None => bail!(
                    "no --source: not in a cluster and no --kubeconfig; use --source kube --kubeconfig PATH, or --source file:PATH"
                ),
            };
            let cfg = run::RunConfig {
                node: node.clone(),
                source,
                metrics_address: metrics_address.0,
                pin_dir,
                cni_conf_dir,
                cni_data_dir,
                mtu,
                gc_interval: Duration::from_secs(gc_interval_secs.max(1)),
                model: ModelConfig {
                    node_name: node,
                    nodeport_addresses,
                    nodeport_range,
                },
                routing: uplink.map(|uplink| Routing {
                    mode: routing,
                    uplink,
                    vni: vxlan_vni,
                    vxlan_port,
                    xdp: match xdp {
                        XdpChoice::Off => None,
                        XdpChoice::Generic => Some(XdpMode::Generic),
                        XdpChoice::Native => Some(XdpMode::Native),
                    },
                }),
                snat_ports,
                proc_sys,
            };
            if dry_run {
                println!("{cfg:#?}");
                return Ok(());
            }
            // Two workers: the conntrack sweep and a sync run on the main
            // task, and must not stall the health endpoints or the watches.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::run(cfg))
        }
        Command::Inspect {
            what,
            pin_dir,
            json,
        } => {
            let table = match what {
                What::Services => inspect::services(&pin_dir),
                What::Backends => inspect::backends(&pin_dir),
                What::Conntrack => inspect::conntrack(&pin_dir),
                What::Endpoints => inspect::endpoints(&pin_dir),
                What::Counters => inspect::counters(&pin_dir),
            }?;
            if json {
                println!("{}", serde_json::to_string_pretty(&table.json)?);
            } else {
                print!("{}", table.render());
            }
            Ok(())
        }
        Command::Load { pin_dir } => {
            let mut dp = Dataplane::load(&pin_dir)
                .with_context(|| format!("loading ferry with maps in {}", pin_dir.display()))?;
            dp.pin_programs()?;
            println!("maps and program pinned under {}", pin_dir.display());
            Ok(())
        }
    }
}
