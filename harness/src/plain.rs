//! A node without ferry: pods wired the way ferry-cni wires them (a /32 on
//! the pod, a link-local gateway answered by a permanent neighbour entry, a
//! /32 route per pod on the node) but forwarded by the kernel's own routing.
//! It is the baseline every benchmark compares against, and the host for
//! kube-proxy-shaped rule sets.
use std::{net::Ipv4Addr, process::Child};

use anyhow::{Context, Result};

use crate::netns::Netns;

const GATEWAY: &str = "169.254.1.1";

pub struct PlainNode {
    pub name: String,
    run_id: String,
    next_if: u32,
    pub netns: Netns,
}

pub struct PlainPod {
    pub name: String,
    pub ip: Ipv4Addr,
    children: Vec<Child>,
    pub netns: Netns,
}

impl PlainNode {
    pub fn create(run_id: &str, name: &str) -> Result<Self> {
        let netns = Netns::create(&format!("fry-{run_id}-{name}"))?;
        netns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Self {
            name: name.to_string(),
            run_id: run_id.to_string(),
            next_if: 0,
            netns,
        })
    }

    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> Result<PlainPod> {
        let pod_ns = Netns::create(&format!("fry-{}-{}-{name}", self.run_id, self.name))?;
        let host_if = format!("plain{}", self.next_if);
        self.next_if += 1;
        self.netns.exec(&[
            "ip",
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod_ns.name,
        ])?;
        let host_mac = mac_of(&self.netns, &host_if)?;
        let pod_mac = mac_of(&pod_ns, "eth0")?;
        let ip_s = ip.to_string();
        for argv in [
            vec!["ip", "addr", "add", &format!("{ip_s}/32"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec![
                "ip", "route", "add", GATEWAY, "dev", "eth0", "scope", "link",
            ],
            vec![
                "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0",
            ],
            vec![
                "ip",
                "neigh",
                "replace",
                GATEWAY,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        ] {
            pod_ns.exec(&argv)?;
        }
        for argv in [
            vec!["ip", "link", "set", &host_if, "up"],
            vec![
                "ip",
                "route",
                "add",
                &format!("{ip_s}/32"),
                "dev",
                &host_if,
                "scope",
                "link",
            ],
            vec![
                "ip",
                "neigh",
                "replace",
                &ip_s,
                "lladdr",
                &pod_mac,
                "dev",
                &host_if,
                "nud",
                "permanent",
            ],
        ] {
            self.netns.exec(&argv)?;
        }
        Ok(PlainPod {
            name: name.to_string(),
            ip,
            children: Vec::new(),
            netns: pod_ns,
        })
    }
}

fn mac_of(ns: &Netns, ifname: &str) -> Result<String> {
    // Not /sys/class/net: nsenter keeps the caller's /sys mount.
    let out = ns.exec(&["ip", "-o", "link", "show", ifname])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no MAC for {ifname} in {}", ns.name))
}

impl PlainPod {
    /// Start `program args` in the pod; it is killed when the pod goes.
    pub fn spawn(&mut self, program: &std::path::Path, args: &[&str]) -> Result<()> {
        self.children.push(self.netns.spawn(program, args)?);
        Ok(())
    }
}

impl Drop for PlainPod {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
