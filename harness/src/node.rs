//! Clusters, nodes and pods of the harness.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    cgroup::Cgroup,
    fabric::Fabric,
    netns::{Netns, in_netns, nsenter},
};

/// The interface a node (or an external host) has on its fabric.
pub const UPLINK: &str = "eth0";
/// The prefix length of a node's (and an external host's) fabric address.
pub const FABRIC_PREFIX: u8 = 24;

/// The binaries under test.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub cni: PathBuf,
    pub echo: PathBuf,
    /// `ferry-sock-client`: one socket call sequence, what it observed.
    pub sock_client: PathBuf,
}

impl Binaries {
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let b = Self {
            agent: dir.join("ferry-agent"),
            cni: dir.join("ferry-cni"),
            echo: dir.join("ferry-echo"),
            sock_client: dir.join("ferry-sock-client"),
        };
        for p in [&b.agent, &b.cni, &b.echo, &b.sock_client] {
            if !p.exists() {
                bail!(
                    "{} is missing: build with `cargo build --bins` (cargo xtask test does)",
                    p.display()
                );
            }
        }
        Ok(b)
    }

    /// `FERRY_BIN_DIR`, else the cargo target directory this test or tool
    /// runs from.
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os("FERRY_BIN_DIR") {
            return Self::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe()?;
        for dir in exe.ancestors().skip(1) {
            if dir.join("ferry-agent").exists() {
                return Self::in_dir(dir);
            }
        }
        bail!(
            "cannot find ferry-agent near {}; set FERRY_BIN_DIR",
            exe.display()
        )
    }
}

/// One test run: a unique id, a scratch directory and the shared manifest
/// every node's agent reads.
pub struct Cluster {
    pub run_id: String,
    pub bins: Binaries,
    pub root: PathBuf,
    pub manifest: PathBuf,
    /// The PATH of ferry's own programs (agents, ferry-cni) when not the
    /// harness's: see `without_node_tools`.
    ferry_path: Option<PathBuf>,
}

impl Cluster {
    pub fn new(bins: Binaries) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let run_id = format!("{:06x}", (std::process::id() ^ nanos) & 0xff_ffff);
        let root = std::env::temp_dir().join(format!("ferry-{run_id}"));
        std::fs::create_dir_all(&root)?;
        let manifest = root.join("objects.yaml");
        std::fs::write(&manifest, "")?;
        Ok(Self {
            run_id,
            bins,
            root,
            manifest,
            ferry_path: None,
        })
    }

    /// Run the agents and ferry-cni of this cluster with an empty
    /// directory as their whole PATH, as on a node with neither iproute2
    /// nor util-linux: whatever they would run from the PATH fails. The
    /// harness itself goes on using `ip` and `nsenter` (named by full path).
    pub fn without_node_tools(mut self) -> Result<Self> {
        let empty = self.root.join("empty-path");
        std::fs::create_dir_all(&empty)?;
        self.ferry_path = Some(empty);
        Ok(self)
    }

    /// Replace the manifest atomically, as an editor or a GitOps tool would.
    pub fn write_manifest(&self, yaml: &str) -> Result<()> {
        let tmp = self.root.join(".objects.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &self.manifest)?;
        Ok(())
    }

    /// A node namespace with its agent running and its CNI config written.
    pub fn node(&self, name: &str) -> Result<Node> {
        self.node_with(name, &[])
    }

    /// `node` with extra agent arguments (`--service-cidr`, ...).
    pub fn node_with(&self, name: &str, extra: &[&str]) -> Result<Node> {
        let args = extra.iter().map(|a| a.to_string()).collect();
        self.start_node(name, |_| Ok(()), args, None)
    }

    /// A node attached to `fabric` as `eth0` with `addr/24` (before its
    /// agent starts), its agent run with `--uplink eth0 --routing ROUTING`
    /// ("native" or "vxlan").
    pub fn node_on_fabric(
        &self,
        name: &str,
        fabric: &Fabric,
        addr: Ipv4Addr,
        routing: &str,
    ) -> Result<Node> {
        self.node_on_fabric_with(name, fabric, addr, routing, &[])
    }

    /// `node_on_fabric` with extra agent arguments (`--no-xdp`, ...).
    pub fn node_on_fabric_with(
        &self,
        name: &str,
        fabric: &Fabric,
        addr: Ipv4Addr,
        routing: &str,
        extra: &[&str],
    ) -> Result<Node> {
        let mut args = ["--uplink", UPLINK, "--routing", routing]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        self.start_node(
            name,
            |ns| fabric.connect(ns, UPLINK, addr, FABRIC_PREFIX),
            args,
            Some(addr),
        )
    }

    /// A namespace on `fabric` that is not a node (no agent, no pods):
    /// `fry-<run_id>-NAME` with `eth0` addressed `addr/24`.
    pub fn external_host(&self, fabric: &Fabric, name: &str, addr: Ipv4Addr) -> Result<Netns> {
        let netns = Netns::create(&format!("fry-{}-{name}", self.run_id))?;
        fabric.connect(&netns, UPLINK, addr, FABRIC_PREFIX)?;
        Ok(netns)
    }

    /// A node whose agent reads the Kubernetes API (`--source kube`):
    /// `api` runs in the new node namespace (its loopback is the API's
    /// address for the agent) and returns the kubeconfig to use.
    pub fn node_with_kube_api(
        &self,
        name: &str,
        api: impl FnOnce(&Netns) -> Result<PathBuf>,
    ) -> Result<Node> {
        self.node_with_kube_api_and(name, &[], api)
    }

    /// `node_with_kube_api` with extra agent arguments (`--service-cidr`,
    /// ...).
    pub fn node_with_kube_api_and(
        &self,
        name: &str,
        extra: &[&str],
        api: impl FnOnce(&Netns) -> Result<PathBuf>,
    ) -> Result<Node> {
        self.start_node_with(
            name,
            |_| Ok(()),
            |ns| {
                let kubeconfig = api(ns)?;
                let mut args = vec![
                    "--source=kube".to_string(),
                    format!("--kubeconfig={}", kubeconfig.display()),
                ];
                args.extend(extra.iter().map(|a| a.to_string()));
                Ok(args)
            },
        )
    }

    /// A node whose agent runs with the arguments `args` returns once the
    /// node's namespace exists (to start a server in it first and name its
    /// address); without a `--source`, the cluster's manifest is the source.
    pub fn node_with_agent_args(
        &self,
        name: &str,
        args: impl FnOnce(&Netns) -> Result<Vec<String>>,
    ) -> Result<Node> {
        self.start_node_with(name, |_| Ok(()), args)
    }

    fn start_node(
        &self,
        name: &str,
        setup: impl FnOnce(&Netns) -> Result<()>,
        agent_args: Vec<String>,
        address: Option<Ipv4Addr>,
    ) -> Result<Node> {
        let mut node = self.start_node_with(name, setup, |_| Ok(agent_args))?;
        node.address = address;
        Ok(node)
    }

    fn start_node_with(
        &self,
        name: &str,
        setup: impl FnOnce(&Netns) -> Result<()>,
        agent_args: impl FnOnce(&Netns) -> Result<Vec<String>>,
    ) -> Result<Node> {
        let netns = Netns::create(&format!("fry-{}-{name}", self.run_id))?;
        netns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        setup(&netns)?;
        let agent_args = agent_args(&netns)?;
        let dir = self.root.join(name);
        let cgroup = Cgroup::top(&format!("ferry-{}-{name}", self.run_id))?;
        let host_cgroup = cgroup.child("node")?;
        let mut node = Node {
            name: name.to_string(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/ferry-e2e-{}-{name}", self.run_id)),
            cni_conf_dir: dir.join("net.d"),
            cni_data_dir: dir.join("ipam"),
            log: dir.join("agent.log"),
            address: None,
            dir,
            agent: None,
            agent_args,
            bins: self.bins.clone(),
            ferry_path: self.ferry_path.clone(),
            manifest: self.manifest.clone(),
            run_id: self.run_id.clone(),
            host_cgroup,
            cgroup,
            netns,
        };
        std::fs::create_dir_all(&node.dir)?;
        node.start_agent()?;
        node.wait_for_conflist(Duration::from_secs(20))?;
        Ok(node)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("FERRY_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub struct Node {
    pub name: String,
    pub pin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_data_dir: PathBuf,
    pub log: PathBuf,
    /// The node's fabric address, when it is on a fabric.
    pub address: Option<Ipv4Addr>,
    dir: PathBuf,
    agent: Option<Child>,
    /// Passed to every `ferry-agent run` after the common ones.
    agent_args: Vec<String>,
    bins: Binaries,
    /// The PATH of the agent and ferry-cni, when not the harness's.
    ferry_path: Option<PathBuf>,
    manifest: PathBuf,
    run_id: String,
    /// The node's own processes (the agent, host-network clients).
    pub host_cgroup: Cgroup,
    /// The node's cgroup (`--cgroup-root`): `host_cgroup` and one per pod
    /// below it. Killed and removed after the agent is stopped.
    pub cgroup: Cgroup,
    // Last: the namespace goes after the agent is stopped.
    pub netns: Netns,
}

impl Node {
    pub fn start_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            bail!("the agent of {} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = self.netns.command(&self.bins.agent);
        self.host_cgroup.enter_on_spawn(&mut cmd);
        if let Some(path) = &self.ferry_path {
            cmd.env("PATH", path);
        }
        let child = cmd
            .args(["run", "--node", &self.name])
            .args(
                (!self.agent_args.iter().any(|a| a.starts_with("--source")))
                    .then(|| format!("--source=file:{}", self.manifest.display())),
            )
            .args(
                (!self
                    .agent_args
                    .iter()
                    .any(|a| a.starts_with("--cgroup-root")))
                .then(|| format!("--cgroup-root={}", self.cgroup.path.display())),
            )
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf_dir)
            .arg("--cni-data-dir")
            .arg(&self.cni_data_dir)
            .args(&self.agent_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ferry-agent")?;
        self.agent = Some(child);
        Ok(())
    }

    /// Stop the agent the hard way (SIGKILL), as a crash or OOM kill would.
    /// The running agent's process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|a| a.id())
    }

    /// The running agent's resident memory (VmRSS), bytes.
    pub fn agent_rss_bytes(&self) -> Option<u64> {
        let pid = self.agent.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Kernel memory held by the node's pinned maps, bytes
    /// (`inspect maps --json`).
    pub fn map_memory_bytes(&self) -> Result<u64> {
        let out = Command::new(&self.bins.agent)
            .args(["inspect", "maps", "--json", "--pin-dir"])
            .arg(&self.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!("inspect maps: {}", String::from_utf8_lossy(&out.stderr));
        }
        let maps: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(maps
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["memory_bytes"].as_u64()).sum())
            .unwrap_or(0))
    }

    pub fn kill_agent(&mut self) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            // nsenter execs the agent, so the child is the agent itself.
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the agent's log holds `needle`. A sync logs its line after
    /// all of its writes, so a test that saw the datapath change must wait
    /// for the line rather than race it. Panics with the log after `within`,
    /// saying `what` was expected.
    pub fn wait_for_log(&self, needle: &str, within: Duration, what: &str) {
        let start = Instant::now();
        while !self.agent_log().contains(needle) {
            assert!(
                start.elapsed() < within,
                "{what}: no {needle:?} in the agent log within {within:?}\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join("10-ferry.conflist")
    }

    pub fn wait_for_conflist(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !self.conflist_path().exists() {
            if let Some(child) = &mut self.agent
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "ferry-agent on {} exited ({status}):\n{}",
                    self.name,
                    self.agent_log()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "ferry-agent on {} wrote no CNI config in {timeout:?}; does the manifest have a Node {} with a podCIDR?\n{}",
                    self.name,
                    self.name,
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Run ferry-cni in this node's namespace as a runtime would.
    pub fn cni(&self, command: &str, container_id: &str, pod_netns: &Path) -> Result<Value> {
        let conflist: Value =
            serde_json::from_str(&std::fs::read_to_string(self.conflist_path())?)?;
        let conf = plugin_conf(&conflist).context("the conflist has no plugin")?;
        let stdout = invoke_cni(
            &self.netns.path(),
            &self.bins.cni,
            self.ferry_path.as_deref(),
            command,
            container_id,
            pod_netns,
            &conf,
        )?;
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&stdout)?)
    }

    /// A pod on this node, wired in through ferry-cni ADD.
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        let netns = Netns::create(&format!("fry-{}-{}-{name}", self.run_id, self.name))?;
        let container_id = format!("{}-{}-{name}", self.run_id, self.name);
        let cgroup = self.cgroup.child(&format!("pod-{name}"))?;
        let result = self.cni("ADD", &container_id, &netns.path())?;
        let address = result["ips"][0]["address"]
            .as_str()
            .context("the CNI result has no address")?;
        let ip: Ipv4Addr = address
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .context("the CNI result's address")?;
        Ok(Pod {
            name: name.to_string(),
            ip,
            container_id,
            node_netns: self.netns.path(),
            cni_conflist: self.conflist_path(),
            cni_bin: self.bins.cni.clone(),
            cni_path: self.ferry_path.clone(),
            echo_bin: self.bins.echo.clone(),
            sock_client_bin: self.bins.sock_client.clone(),
            servers: Vec::new(),
            result,
            cgroup,
            netns,
        })
    }

    /// Replace the agent's arguments (after the common ones) for its next
    /// start: a restart with another `--socket-lb`.
    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.agent_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Run `ferry-sock-client ARGS` as one of the node's own processes (its
    /// namespace and its cgroup); its one line of observations.
    pub fn sock_client(&self, args: &[&str]) -> Result<String> {
        run_client(&self.netns, &self.host_cgroup, &self.bins.sock_client, args)
    }

    /// `ferry-sock-client ARGS` started as one of the node's own processes
    /// with piped stdin and stdout (`tcp-held`); the caller kills it.
    pub fn spawn_sock_client(&self, args: &[&str]) -> Result<Child> {
        let mut cmd = self.netns.command(&self.bins.sock_client);
        self.host_cgroup.enter_on_spawn(&mut cmd);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ferry-sock-client")
    }

    /// `ferry-agent debug SWITCH` (on, off, status) against this node's
    /// pins; what it printed.
    pub fn debug(&self, switch: &str) -> Result<String> {
        let out = Command::new(&self.bins.agent)
            .args(["debug", switch, "--pin-dir"])
            .arg(&self.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!("debug {switch}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ferry-agent inspect WHAT` against this node's pins.
    pub fn inspect(&self, what: &str) -> Result<String> {
        let out = Command::new(&self.bins.agent)
            .args(["inspect", what, "--pin-dir"])
            .arg(&self.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!("inspect {what}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Node {
    /// `ferry-agent trace ARGS --json` against this node's pins, run in
    /// the node's namespace (the pod veths it names live there).
    pub fn trace(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        Ok(serde_json::from_str(&self.trace_text(&with_json)?)?)
    }

    /// `ferry-agent trace ARGS`, its output as printed.
    pub fn trace_text(&self, args: &[&str]) -> Result<String> {
        let out = self
            .netns
            .command(&self.bins.agent)
            .arg("trace")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!("trace {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ferry-agent monitor ARGS` against this node's pins, running, its
    /// stdout and stderr piped.
    pub fn spawn_monitor(&self, args: &[&str]) -> Result<std::process::Child> {
        Command::new(&self.bins.agent)
            .arg("monitor")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ferry-agent monitor")
    }

    /// Every pinned map's entries as bpftool dumps them, by map name (the
    /// event ring buffer has no entries to dump and is left out).
    pub fn dump_maps(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for name in ferry_common::PINNED_MAPS {
            if name == ferry_common::MAP_EVENTS {
                continue;
            }
            let dump = Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(self.pin_dir.join(name))
                .output()
                .context("running bpftool")?;
            if !dump.status.success() {
                bail!(
                    "bpftool map dump {name}: {}",
                    String::from_utf8_lossy(&dump.stderr)
                );
            }
            out.push((
                name.to_string(),
                String::from_utf8_lossy(&dump.stdout).into_owned(),
            ));
        }
        Ok(out)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.kill_agent();
        // The namespace goes with `netns`; the pins and links stay unless
        // removed here.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn run_client(netns: &Netns, cgroup: &Cgroup, bin: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = netns.command(bin);
    cgroup.enter_on_spawn(&mut cmd);
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ferry-sock-client")?;
    if !out.status.success() {
        bail!(
            "ferry-sock-client {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Run `cni_bin` inside the node namespace with the CNI environment (and
/// `path` as its PATH, when given) and `conf` on stdin; its stdout, or an
/// error carrying the CNI error JSON.
fn invoke_cni(
    node_netns: &Path,
    cni_bin: &Path,
    path: Option<&Path>,
    command: &str,
    container_id: &str,
    pod_netns: &Path,
    conf: &Value,
) -> Result<String> {
    let mut cmd = Command::new(nsenter());
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let mut child = cmd
        .arg(format!("--net={}", node_netns.display()))
        .arg("--")
        .arg(cni_bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod_netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ferry-cni")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "ferry-cni {command} for {container_id} failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The plugin configuration a runtime derives from a conflist: the first
/// plugin with the list's name and cniVersion.
pub fn plugin_conf(conflist: &Value) -> Option<Value> {
    let mut plugin = conflist.get("plugins")?.get(0)?.clone();
    let obj = plugin.as_object_mut()?;
    obj.insert("name".into(), conflist.get("name")?.clone());
    obj.insert("cniVersion".into(), conflist.get("cniVersion")?.clone());
    Some(plugin)
}

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    /// The CNI ADD result.
    pub result: Value,
    node_netns: PathBuf,
    cni_conflist: PathBuf,
    cni_bin: PathBuf,
    /// ferry-cni's PATH, when not the harness's.
    cni_path: Option<PathBuf>,
    echo_bin: PathBuf,
    sock_client_bin: PathBuf,
    servers: Vec<Child>,
    /// The pod's processes (servers, clients): below the node's cgroup.
    pub cgroup: Cgroup,
    pub netns: Netns,
}

impl Pod {
    /// Start a TCP+UDP ferry-echo server on `port` and wait until it listens.
    pub fn serve(&mut self, port: u16) -> Result<()> {
        let child = self.netns.spawn_in(
            &self.echo_bin,
            &[&self.name, &port.to_string()],
            Some(&self.cgroup),
        )?;
        self.servers.push(child);
        let ip = self.ip;
        let start = Instant::now();
        loop {
            let up = self.run(move || {
                std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200))
                    .is_ok()
            })?;
            if up {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!(
                    "ferry-echo in {} did not start listening on {port}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start `program args` in the pod; it is killed when the pod goes.
    pub fn spawn(&mut self, program: &Path, args: &[&str]) -> Result<()> {
        self.servers
            .push(self.netns.spawn_in(program, args, Some(&self.cgroup))?);
        Ok(())
    }

    /// Run `ferry-sock-client ARGS` as a process of this pod (its
    /// namespace and cgroup); its one line of observations.
    pub fn sock_client(&self, args: &[&str]) -> Result<String> {
        run_client(&self.netns, &self.cgroup, &self.sock_client_bin, args)
    }

    /// `ferry-sock-client ARGS` started as a process of this pod (its
    /// namespace and cgroup) with piped stdin and stdout (`udpc-loop`);
    /// the caller kills it.
    pub fn spawn_sock_client(&self, args: &[&str]) -> Result<Child> {
        let mut cmd = self.netns.command(&self.sock_client_bin);
        self.cgroup.enter_on_spawn(&mut cmd);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ferry-sock-client")
    }

    /// Have the pod compute its TCP/UDP checksums itself instead of leaving
    /// them to the (virtual) NIC, so its packets carry full checksums, as
    /// frames arriving from a physical network do.
    pub fn full_checksums(&self) -> Result<()> {
        self.netns
            .exec(&["ethtool", "-K", "eth0", "tx", "off"])
            .map(|_| ())
    }

    /// Run `f` inside the pod's network namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        in_netns(&self.netns.path(), f)
    }

    /// CNI CHECK for this pod.
    pub fn cni_check(&self) -> Result<()> {
        self.cni("CHECK").map(|_| ())
    }

    fn cni(&self, command: &str) -> Result<String> {
        let conflist: Value = serde_json::from_str(&std::fs::read_to_string(&self.cni_conflist)?)?;
        let mut conf = plugin_conf(&conflist).context("the conflist has no plugin")?;
        if command == "CHECK" {
            conf["prevResult"] = self.result.clone();
        }
        invoke_cni(
            &self.node_netns,
            &self.cni_bin,
            self.cni_path.as_deref(),
            command,
            &self.container_id,
            &self.netns.path(),
            &conf,
        )
    }

    /// CNI DEL for this pod (what the runtime does when the pod goes).
    pub fn cni_del(&self) -> Result<()> {
        self.cni("DEL").map(|_| ())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.cni("DEL");
    }
}
