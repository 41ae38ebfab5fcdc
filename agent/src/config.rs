//! The agent's configuration: the command line (`RunArgs`, clap's view) kept
//! apart from what the agent runs on (`RunConfig`, the domain's view). Every
//! range check and every rule between flags lives once, in
//! `TryFrom<RunArgs> for RunConfig`; a `RunConfig` cannot hold a combination
//! that makes no sense (VXLAN with XDP, a VNI in native mode).
use std::{fmt, net::Ipv4Addr, net::SocketAddr, path::PathBuf, time::Duration};

pub use crate::socklb::SocketLb;
use crate::{
    loader::MapSizes,
    net::Ipv4Net,
    plan::{PlanConfig, service_cidrs::MAX_SERVICE_CIDRS},
};

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn new(first: u16, last: u16) -> Self {
        Self { first, last }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// "FROM-TO"; `example` is shown in the error.
    fn parse(s: &str, example: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Range {
            value: s.to_string(),
            why,
            example: example.to_string(),
        };
        let (from, to) = s.split_once('-').ok_or_else(|| bad("not a range".into()))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| bad(format!("{p:?}: {e}")))
        };
        let range = Self::new(port(from)?, port(to)?);
        if range.first == 0 || range.first > range.last {
            return Err(bad("empty, or starting at 0".into()));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Where the objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// A multi-document YAML manifest, re-read when it changes.
    File(PathBuf),
    /// The Kubernetes API.
    Kube(KubeApi),
}

/// How the agent reaches the Kubernetes API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeApi {
    /// A kubeconfig, or None for the pod's service account (in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// `--k8s-api-server`: dialled instead of the `kubernetes` Service's
    /// ClusterIP (in-cluster) or the kubeconfig's server; the credentials
    /// and CA stay those of the service account or the kubeconfig.
    pub api_server: Option<ApiServerUrl>,
}

/// `--k8s-api-server`: the API server's own address (`https://host:port`;
/// `host:port` and `host` mean https, port 443 by default), so that the
/// agent needs no ClusterIP, hence no kube-proxy, to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServerUrl(http::Uri);

impl ApiServerUrl {
    /// The URL as kube-rs's `Config::cluster_url` takes it.
    pub fn uri(&self) -> &http::Uri {
        &self.0
    }

    /// Plain http: the bearer token would cross the network unencrypted
    /// (for test API servers and local proxies only).
    pub fn is_plain_http(&self) -> bool {
        self.0.scheme_str() == Some("http")
    }

    /// The URL from `--k8s-api-server`'s value; None when it is empty (an
    /// empty ConfigMap key: the in-cluster default).
    pub fn parse(value: &str) -> Result<Option<Self>, ConfigError> {
        let s = value.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| ConfigError::ApiServer {
            value: value.to_string(),
            why: why.to_string(),
        };
        let with_scheme = match s.split_once("://") {
            Some((scheme, _)) if scheme == "https" || scheme == "http" => s.to_string(),
            Some((scheme, _)) => {
                return Err(bad(&format!("scheme {scheme:?}; use https (or http)")));
            }
            None => format!("https://{s}"),
        };
        let uri: http::Uri = with_scheme.parse().map_err(|e: http::uri::InvalidUri| {
            if s.matches(':').count() > 1 && !s.contains('[') {
                bad("an IPv6 address goes in brackets, as https://[fd00::1]:6443")
            } else {
                bad(&e.to_string())
            }
        })?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not used; the token comes from the service account or the kubeconfig",
            ));
        }
        // (http's own `port()` is None for a port out of range.)
        let port = authority
            .as_str()
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| !p.contains(']'));
        if let Some(port) = port
            && !matches!(port.parse::<u16>(), Ok(1..))
        {
            return Err(bad("the port is not 1-65535"));
        }
        if uri.query().is_some() {
            return Err(bad("a query has no place in the API server's address"));
        }
        Ok(Some(Self(uri)))
    }
}

impl fmt::Display for ApiServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How XDP runs on the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum XdpMode {
    /// Generic XDP: runs in the kernel's receive path, on any driver.
    Generic,
    /// The driver's native XDP (faster; needs driver support, and on veth
    /// a peer with NAPI for transmitted frames).
    Native,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        }
    }
}

/// How pod packets cross to other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// Pod packets leave the uplink unchanged, next hop the owning node;
    /// external traffic may turn around in XDP.
    Native { xdp: Option<XdpMode> },
    /// Pod packets are encapsulated in VXLAN to the owning node.
    Vxlan { vni: u32, port: u16 },
}

/// Outer IPv4 + UDP + VXLAN + inner Ethernet: what encapsulation adds.
pub const VXLAN_OVERHEAD: u32 = 50;

impl Overlay {
    /// Pod MTU in this mode, given the uplink's.
    pub fn pod_mtu(&self, uplink_mtu: u32) -> u32 {
        match self {
            Overlay::Native { .. } => uplink_mtu,
            Overlay::Vxlan { .. } => uplink_mtu - VXLAN_OVERHEAD,
        }
    }
}

/// Cross-node networking: the interface towards the other nodes and how
/// packets cross it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub interface: String,
    pub overlay: Overlay,
}

/// Where ferry-cni's configuration goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniConfig {
    /// The conflist is written here.
    pub conf_dir: PathBuf,
    /// IPAM store handed to ferry-cni through the conflist.
    pub data_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `ferry-agent run` runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub source: SourceConfig,
    /// The node and how it serves Services: everything the plan reads.
    pub plan: PlanConfig,
    pub gc_interval: Duration,
    /// The capacities of the maps the agent creates.
    pub map_sizes: MapSizes,
    /// The node's /proc/sys (for the reserved ports).
    pub proc_sys: PathBuf,
    /// Where to serve /healthz, /readyz and /metrics (None: not served).
    pub metrics_address: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// Whose sockets are translated at connect().
    pub socket_lb: SocketLb,
    /// The cgroup the socket programs attach to (None: the host's cgroup2
    /// mount, found or mounted at startup).
    pub cgroup_root: Option<PathBuf>,
    /// ferry-cni's IPAM store (`--cni-data-dir`), where it records each
    /// pod's network namespace (`cni::podns`).
    pub cni_data_dir: PathBuf,
}

/// The capacities of the maps the agent creates (see README "Map sizes").
/// A map already pinned keeps its own (its entries survive).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct MapSizeArgs {
    /// Service frontends (one per address, port, protocol and scope): a
    /// ClusterIP port is one, a NodePort one per node address and one more
    /// as pods reach it.
    #[arg(long, default_value_t = ferry_common::SERVICES_MAX_ENTRIES)]
    pub max_frontends: u32,
    /// Backend slots of all frontends together (each frontend's endpoints,
    /// twice while a change is written).
    #[arg(long, default_value_t = ferry_common::BACKENDS_MAX_ENTRIES)]
    pub max_backends: u32,
    /// Conntrack entries, two per flow (preallocated: 112 bytes each).
    #[arg(long, default_value_t = ferry_common::CONNTRACK_MAX_ENTRIES)]
    pub max_conntrack_entries: u32,
    /// sessionAffinity ClientIP entries, one per (frontend, client).
    #[arg(long, default_value_t = ferry_common::AFFINITY_MAX_ENTRIES)]
    pub max_affinity_entries: u32,
    /// Sockets translated at connect() (socket LB), one per (socket,
    /// backend).
    #[arg(long, default_value_t = ferry_common::SOCK_REVERSE_MAX_ENTRIES)]
    pub max_socket_entries: u32,
}

impl MapSizeArgs {
    pub fn sizes(&self) -> Result<MapSizes, ConfigError> {
        let sizes = MapSizes {
            frontends: self.max_frontends,
            backends: self.max_backends,
            conntrack: self.max_conntrack_entries,
            affinity: self.max_affinity_entries,
            sock_reverse: self.max_socket_entries,
        };
        sizes.check().map_err(ConfigError::MapSize)?;
        Ok(sizes)
    }
}

/// `ferry-agent run`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// This node's name (as in its Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Where objects come from: `kube` (the Kubernetes API; the default
    /// inside a cluster) or `file:PATH` (a multi-document YAML manifest
    /// of Services, EndpointSlices and Nodes, re-read on change).
    #[arg(long)]
    pub source: Option<String>,
    /// kubeconfig for `--source kube` outside a cluster (inside one,
    /// the pod's service account is used).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's own address for `--source kube`
    /// (https://HOST:PORT; HOST:PORT or HOST mean https, port 443), dialled
    /// instead of the `kubernetes` Service's ClusterIP, so that the agent
    /// works without kube-proxy. In a pod, the service account's token and
    /// CA are still used; with --kubeconfig, it overrides the kubeconfig's
    /// server. HOST must be a name or address the API server's
    /// certificate holds. Empty: not set.
    #[arg(long, env = "FERRY_K8S_API_SERVER")]
    pub k8s_api_server: Option<String>,
    /// Check the options and print the resulting configuration, then
    /// exit without touching the node.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve /healthz, /readyz and /metrics here; `off` to not serve.
    #[arg(long, default_value = "0.0.0.0:9402")]
    pub metrics_address: String,
    /// Directory on a BPF filesystem for ferry's pinned maps.
    #[arg(long, default_value = crate::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Write the CNI conflist (with this node's pod CIDR) here.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// IPAM store for ferry-cni (written into the conflist).
    #[arg(long, default_value = "/var/lib/cni/networks")]
    pub cni_data_dir: PathBuf,
    /// Pod interface MTU (written into the conflist).
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Seconds a conntrack garbage collection pass takes over a full map:
    /// the map is read in slices, one step about every second.
    #[arg(long, default_value_t = 10)]
    pub gc_interval_secs: u64,
    #[command(flatten)]
    pub map_sizes: MapSizeArgs,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The interface towards the other nodes. Without it, only this
    /// node's pods are served.
    #[arg(long)]
    pub uplink: Option<String>,
    /// How pods on other nodes are reached.
    #[arg(long, value_enum, default_value_t = RoutingMode::Native)]
    pub routing: RoutingMode,
    /// VXLAN network identifier (VXLAN mode).
    #[arg(long, default_value_t = 1)]
    pub vxlan_vni: u32,
    /// VXLAN UDP port (VXLAN mode).
    #[arg(long, default_value_t = 4789)]
    pub vxlan_port: u16,
    /// XDP on the uplink (native routing only): `off` (default),
    /// `native` (the NIC driver's XDP; frames arrive with full
    /// checksums), or `generic` (any driver, but only where packets
    /// never arrive checksum-offloaded; see the README).
    #[arg(long, value_enum, default_value_t = XdpChoice::Off)]
    pub xdp: XdpChoice,
    /// Source ports for external traffic sent to backends on other
    /// nodes (FROM-TO). They are reserved in the node's
    /// net.ipv4.ip_local_reserved_ports. A closed connection's port
    /// rests 1 s (100 ms under pressure; 60 s if the backend closed
    /// first) before reuse, so
    /// the range caps new connections per second per node and backend.
    #[arg(long, default_value = "61000-65535")]
    pub snat_ports: String,
    /// Addresses NodePorts answer on, comma-separated (default: this
    /// node's InternalIPs from its Node object).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Option<Vec<Ipv4Addr>>,
    /// The cluster's NodePort range, as the apiserver's
    /// --service-node-port-range (FROM-TO).
    #[arg(long, default_value = "30000-32767")]
    pub nodeport_range: String,
    /// The cluster's service CIDRs, comma-separated (the apiserver's
    /// --service-cluster-ip-range). From pods, a ClusterIP's port the
    /// Service does not serve is rejected and an address in them that no
    /// Service holds is dropped, instead of being routed off the node.
    /// Default: none (such packets pass as any other).
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<String>,
    /// The node's /proc/sys, for net.ipv4.ip_local_reserved_ports: the
    /// agent reserves --snat-ports and --nodeport-range there so that
    /// the node's own sockets never pick those ports.
    #[arg(long, default_value = "/proc/sys")]
    pub proc_sys: PathBuf,
    /// Socket-level load balancing (translation at connect()):
    /// `host-only` (default) the node's own processes (host-network pods,
    /// the kubelet), `on` pods too, `off` none (tc alone).
    #[arg(long, value_enum, default_value_t = SocketLb::HostOnly)]
    pub socket_lb: SocketLb,
    /// The cgroup v2 directory the socket programs attach to (they act on
    /// every process below it). Default: the host's cgroup2 mount
    /// (/sys/fs/cgroup/unified, else /sys/fs/cgroup), else one mounted at
    /// /run/ferry/cgroupv2.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoutingMode {
    /// Pod packets leave the uplink unchanged, next hop the owning node.
    Native,
    /// Pod packets are encapsulated in VXLAN to the owning node.
    Vxlan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    Off,
    Native,
    Generic,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    MapSize(String),
    #[error("{value:?} is not a port range ({why}); give one like {example}")]
    Range {
        value: String,
        why: String,
        example: String,
    },
    #[error("--snat-ports {0} reaches below 1024; use ports the node's services do not listen on")]
    SnatBelow1024(PortRange),
    #[error(
        "--nodeport-range {nodeport} overlaps --snat-ports {snat}: a reply to external traffic would look like a new NodePort connection; make them disjoint"
    )]
    RangesOverlap {
        nodeport: PortRange,
        snat: PortRange,
    },
    #[error(
        "--xdp {0} needs --routing native: VXLAN has no XDP path; drop --xdp or use native routing"
    )]
    XdpWithVxlan(&'static str),
    #[error("--source {0:?} is not supported; use kube or file:PATH")]
    UnknownSource(String),
    #[error(
        "no --source: not in a cluster and no --kubeconfig; use --source kube --kubeconfig PATH, or --source file:PATH"
    )]
    NoSource,
    #[error("--service-cidr {0}")]
    ServiceCidr(String),
    #[error("--metrics-address {value:?} is not an address like 0.0.0.0:9402 (or off): {why}")]
    MetricsAddress { value: String, why: String },
    #[error(
        "--k8s-api-server {value:?} is not an API server address ({why}); give one like https://192.168.1.10:6443 or api.example.com:6443"
    )]
    ApiServer { value: String, why: String },
    #[error(
        "--k8s-api-server (or FERRY_K8S_API_SERVER) is for --source kube; with --source file there is no API to reach: drop it"
    )]
    ApiServerWithFileSource,
}

impl TryFrom<RunArgs> for RunConfig {
    type Error = ConfigError;

    fn try_from(args: RunArgs) -> Result<Self, ConfigError> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        args.into_config(in_cluster)
    }
}

/// `--service-cidr`: IPv4 prefixes without host bits, at most
/// `MAX_SERVICE_CIDRS` (what `ferry_svc_cidrs` has room for); empty
/// items are skipped (`--service-cidr=` from an empty ConfigMap key).
fn parse_service_cidrs(values: &[String]) -> Result<Vec<Ipv4Net>, ConfigError> {
    let values: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    if values.len() > MAX_SERVICE_CIDRS {
        return Err(ConfigError::ServiceCidr(format!(
            "gives {} ranges; at most {MAX_SERVICE_CIDRS}",
            values.len()
        )));
    }
    values
        .iter()
        .map(|v| {
            let net: Ipv4Net = v
                .parse()
                .map_err(|e: crate::net::NetParseError| ConfigError::ServiceCidr(e.to_string()))?;
            if net.addr != net.network() {
                return Err(ConfigError::ServiceCidr(format!(
                    "{v:?} has host bits set; give the network, {}/{}",
                    net.network(),
                    net.prefix
                )));
            }
            Ok(net)
        })
        .collect()
}

impl RunArgs {
    /// The configuration; `in_cluster`: a service account is mounted (the
    /// default source is then the API).
    pub fn into_config(self, in_cluster: bool) -> Result<RunConfig, ConfigError> {
        let snat_ports = PortRange::parse(&self.snat_ports, "61000-65535")?;
        if snat_ports.first < 1024 {
            return Err(ConfigError::SnatBelow1024(snat_ports));
        }
        let nodeport_range = PortRange::parse(&self.nodeport_range, "30000-32767")?;
        if nodeport_range.overlaps(&snat_ports) {
            return Err(ConfigError::RangesOverlap {
                nodeport: nodeport_range,
                snat: snat_ports,
            });
        }
        let service_cidrs = parse_service_cidrs(&self.service_cidr)?;
        let overlay = match (self.routing, self.xdp) {
            (RoutingMode::Native, xdp) => Overlay::Native {
                xdp: match xdp {
                    XdpChoice::Off => None,
                    XdpChoice::Generic => Some(XdpMode::Generic),
                    XdpChoice::Native => Some(XdpMode::Native),
                },
            },
            (RoutingMode::Vxlan, XdpChoice::Off) => Overlay::Vxlan {
                vni: self.vxlan_vni,
                port: self.vxlan_port,
            },
            (RoutingMode::Vxlan, XdpChoice::Generic) => {
                return Err(ConfigError::XdpWithVxlan("generic"));
            }
            (RoutingMode::Vxlan, XdpChoice::Native) => {
                return Err(ConfigError::XdpWithVxlan("native"));
            }
        };
        let api_server = match &self.k8s_api_server {
            Some(v) => ApiServerUrl::parse(v)?,
            None => None,
        };
        let wants_api = in_cluster || self.kubeconfig.is_some() || api_server.is_some();
        let kube = |kubeconfig, api_server| {
            SourceConfig::Kube(KubeApi {
                kubeconfig,
                api_server,
            })
        };
        let source = match self.source.as_deref() {
            Some("kube") => kube(self.kubeconfig, api_server),
            Some(s) if s.starts_with("file:") => {
                if api_server.is_some() {
                    return Err(ConfigError::ApiServerWithFileSource);
                }
                SourceConfig::File(PathBuf::from(&s["file:".len()..]))
            }
            Some(other) => return Err(ConfigError::UnknownSource(other.to_string())),
            None if wants_api => kube(self.kubeconfig, api_server),
            None => return Err(ConfigError::NoSource),
        };
        let metrics_address = match self.metrics_address.as_str() {
            "off" => None,
            s => Some(s.parse().map_err(|e: std::net::AddrParseError| {
                ConfigError::MetricsAddress {
                    value: s.to_string(),
                    why: e.to_string(),
                }
            })?),
        };
        Ok(RunConfig {
            source,
            plan: PlanConfig {
                node_name: self.node,
                nodeport_addresses: self.nodeport_addresses,
                nodeport_range,
                snat_ports,
                uplink: self.uplink.map(|interface| Uplink { interface, overlay }),
                cni: self.cni_conf_dir.map(|conf_dir| CniConfig {
                    conf_dir,
                    data_dir: self.cni_data_dir.clone(),
                }),
                pin_dir: self.pin_dir,
                mtu: self.mtu,
                service_cidrs,
                node_ports_on_loopback: self.socket_lb != SocketLb::Off,
            },
            gc_interval: Duration::from_secs(self.gc_interval_secs.max(1)),
            map_sizes: self.map_sizes.sizes()?,
            proc_sys: self.proc_sys,
            metrics_address,
            log_format: self.log_format,
            socket_lb: self.socket_lb,
            cgroup_root: self.cgroup_root,
            cni_data_dir: self.cni_data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn config(args: &[&str]) -> Result<RunConfig, ConfigError> {
        let mut argv = vec!["ferry-agent", "--node", "n1", "--source", "file:/m.yaml"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect("clap accepts the arguments")
            .run
            .into_config(false)
    }

    #[test]
    fn defaults_are_a_single_node_with_the_standard_ranges() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.source, SourceConfig::File("/m.yaml".into()));
        assert_eq!(cfg.plan.uplink, None);
        assert_eq!(cfg.plan.cni, None);
        assert_eq!(cfg.plan.snat_ports, PortRange::new(61000, 65535));
        assert_eq!(cfg.plan.nodeport_range, PortRange::new(30000, 32767));
        assert_eq!(cfg.metrics_address, Some("0.0.0.0:9402".parse().unwrap()));
        assert_eq!(cfg.socket_lb, SocketLb::HostOnly);
        assert!(cfg.plan.node_ports_on_loopback);
    }

    #[test]
    fn socket_lb_off_serves_no_node_port_on_loopback() {
        let cfg = config(&["--socket-lb", "off", "--cgroup-root", "/x"]).unwrap();
        assert_eq!(cfg.socket_lb, SocketLb::Off);
        assert_eq!(cfg.cgroup_root, Some("/x".into()));
        assert!(!cfg.plan.node_ports_on_loopback);
        assert_eq!(
            config(&["--socket-lb", "on"]).unwrap().socket_lb,
            SocketLb::On
        );
        assert!(Cli::try_parse_from(["a", "--node", "n", "--socket-lb", "pods"]).is_err());
    }

    #[test]
    fn the_overlay_holds_only_what_its_mode_uses() {
        let native = config(&["--uplink", "eth0", "--xdp", "generic", "--vxlan-vni", "7"]).unwrap();
        assert_eq!(
            native.plan.uplink.unwrap().overlay,
            Overlay::Native {
                xdp: Some(XdpMode::Generic)
            }
        );
        let vxlan =
            config(&["--uplink", "eth0", "--routing", "vxlan", "--vxlan-vni", "7"]).unwrap();
        assert_eq!(
            vxlan.plan.uplink.unwrap().overlay,
            Overlay::Vxlan { vni: 7, port: 4789 }
        );
        assert_eq!(
            config(&["--routing", "vxlan", "--xdp", "native"]),
            Err(ConfigError::XdpWithVxlan("native"))
        );
    }

    #[test]
    fn ranges_are_checked_once_with_errors_that_say_what_to_give() {
        let overlap = config(&["--nodeport-range", "30000-62000"]).unwrap_err();
        assert!(matches!(overlap, ConfigError::RangesOverlap { .. }));
        assert!(overlap.to_string().contains("make them disjoint"));
        assert_eq!(
            config(&["--snat-ports", "80-1000"]),
            Err(ConfigError::SnatBelow1024(PortRange::new(80, 1000)))
        );
        for bad in ["61000", "62000-61000", "0-10", "a-b"] {
            let e = config(&["--snat-ports", bad]).unwrap_err();
            assert!(e.to_string().contains("give one like"), "{bad}: {e}");
        }
        assert!(config(&["--metrics-address", "nowhere"]).is_err());
        assert_eq!(
            config(&["--metrics-address", "off"])
                .unwrap()
                .metrics_address,
            None
        );
    }

    #[test]
    fn service_cidrs_are_networks_checked_once() {
        assert_eq!(config(&[]).unwrap().plan.service_cidrs, vec![]);
        let empty = config(&["--service-cidr="]).unwrap();
        assert_eq!(empty.plan.service_cidrs, vec![]);
        let cfg = config(&["--service-cidr", "10.96.0.0/12,10.200.0.0/16"]).unwrap();
        let want: Vec<Ipv4Net> = vec![
            "10.96.0.0/12".parse().unwrap(),
            "10.200.0.0/16".parse().unwrap(),
        ];
        assert_eq!(cfg.plan.service_cidrs, want);
        let host_bits = config(&["--service-cidr", "10.96.0.1/12"]).unwrap_err();
        assert!(
            host_bits.to_string().contains("10.96.0.0/12"),
            "{host_bits}"
        );
        assert!(matches!(
            config(&["--service-cidr", "10.96.0.0"]),
            Err(ConfigError::ServiceCidr(_))
        ));
    }

    #[test]
    fn the_source_defaults_to_the_api_only_inside_a_cluster() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["ferry-agent", "--node", "n1"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().run
        };
        assert_eq!(args(&[]).into_config(false), Err(ConfigError::NoSource));
        assert_eq!(
            args(&[]).into_config(true).unwrap().source,
            SourceConfig::Kube(KubeApi::default())
        );
        assert_eq!(
            args(&["--source", "etcd"]).into_config(true),
            Err(ConfigError::UnknownSource("etcd".into()))
        );
    }

    #[test]
    fn the_api_server_address_takes_a_url_or_host_port_and_defaults_to_https() {
        let url = |v: &str| ApiServerUrl::parse(v).unwrap().map(|u| u.to_string());
        assert_eq!(
            url("https://10.0.0.1:6443").as_deref(),
            Some("https://10.0.0.1:6443/")
        );
        assert_eq!(
            url("10.0.0.1:6443").as_deref(),
            Some("https://10.0.0.1:6443/")
        );
        assert_eq!(
            url(" api.example.com ").as_deref(),
            Some("https://api.example.com/")
        );
        assert_eq!(
            url("[fd00::1]:6443").as_deref(),
            Some("https://[fd00::1]:6443/")
        );
        assert_eq!(
            url("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert!(
            ApiServerUrl::parse("http://127.0.0.1:8080")
                .unwrap()
                .unwrap()
                .is_plain_http()
        );
        assert!(
            !ApiServerUrl::parse("h:6443")
                .unwrap()
                .unwrap()
                .is_plain_http()
        );
        // An empty ConfigMap key: the in-cluster default.
        assert_eq!(url(""), None);
        assert_eq!(url("  "), None);
        for (bad, why) in [
            ("ftp://h:21", "scheme"),
            ("https://", "give one like"),
            ("https://user:pw@h:6443", "credentials"),
            ("h:0", "port"),
            ("h:99999", "port"),
            ("fd00::1", "brackets"),
            ("https://h:6443/?watch=1", "query"),
            ("h 6443", "give one like"),
        ] {
            let e = ApiServerUrl::parse(bad).unwrap_err();
            assert!(matches!(e, ConfigError::ApiServer { .. }), "{bad}: {e}");
            let text = e.to_string();
            assert!(text.contains(why), "{bad}: {text}");
            assert!(text.contains("https://192.168.1.10:6443"), "{bad}: {text}");
        }
    }

    #[test]
    fn the_api_server_address_goes_with_the_api_source_only() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["ferry-agent", "--node", "n1"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().run
        };
        let want = |kubeconfig: Option<&str>, api_server: &str| {
            SourceConfig::Kube(KubeApi {
                kubeconfig: kubeconfig.map(PathBuf::from),
                api_server: ApiServerUrl::parse(api_server).unwrap(),
            })
        };
        // Outside a cluster, the address alone says: the API.
        assert_eq!(
            args(&["--k8s-api-server", "10.0.0.1:6443"])
                .into_config(false)
                .unwrap()
                .source,
            want(None, "https://10.0.0.1:6443")
        );
        assert_eq!(
            args(&[
                "--source=kube",
                "--kubeconfig=/k",
                "--k8s-api-server=h:6443"
            ])
            .into_config(false)
            .unwrap()
            .source,
            want(Some("/k"), "https://h:6443")
        );
        // As the DaemonSet passes an empty ConfigMap key.
        assert_eq!(
            args(&["--source=kube", "--k8s-api-server="])
                .into_config(true)
                .unwrap()
                .source,
            SourceConfig::Kube(KubeApi::default())
        );
        assert_eq!(
            args(&["--source=file:/m.yaml", "--k8s-api-server=h:6443"]).into_config(true),
            Err(ConfigError::ApiServerWithFileSource)
        );
        assert!(matches!(
            args(&["--source=kube", "--k8s-api-server=ftp://h"]).into_config(true),
            Err(ConfigError::ApiServer { .. })
        ));
    }
}
