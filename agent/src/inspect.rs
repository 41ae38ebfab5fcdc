//! `ferry-agent inspect ...`: the pinned maps as aligned tables or JSON.
//! Reads only the pins, so it works while the agent runs and after it
//! stopped.
use std::{net::Ipv4Addr, path::Path};

use anyhow::Result;
use ferry_common::{CT_DIR_ORIGINAL, CT_DIR_REPLY, conntrack::state_label, outcome, protocol_name};
use serde_json::{Value, json};

use crate::{
    maps::{
        AffinityTable, Conntrack, Counters, Endpoints, ServiceRanges, ServiceTable,
        monotonic_now_ns,
    },
    net::format_mac,
};

/// A table: header and rows of cells.
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub json: Vec<Value>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: vec![],
            json: vec![],
        }
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        // Written straight into one string: a full conntrack table has
        // millions of cells.
        let mut out = String::with_capacity(
            (self.rows.len() + 1) * (widths.iter().sum::<usize>() + 2 * widths.len()),
        );
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let start = out.len();
            for (i, (c, w)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let _ = write!(out, "{c:<w$}");
            }
            out.truncate(start + out[start..].trim_end().len());
            out.push('\n');
        };
        line(&mut self.header.iter().copied());
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

fn addr_port(addr: [u8; 4], port: u16) -> String {
    format!("{}:{port}", Ipv4Addr::from(addr))
}

/// Who a frontend is for (`ServiceKey::scope`).
fn scope_name(scope: u8, flags: u8) -> &'static str {
    match (scope, flags & ferry_common::SERVICE_FLAG_LOCAL_ONLY != 0) {
        (ferry_common::SCOPE_CLUSTER_IP, _) => "cluster-ip",
        (ferry_common::SCOPE_EXTERNAL, false) => "external",
        (ferry_common::SCOPE_EXTERNAL, true) => "external-local",
        (ferry_common::SCOPE_EXTERNAL_FROM_PODS, _) => "external-from-pods",
        _ => "unknown",
    }
}

pub fn services(pin_dir: &Path) -> Result<Table> {
    let table = ServiceTable::open(pin_dir)?;
    let mut t = Table::new(vec![
        "FRONTEND", "PROTO", "SCOPE", "NAME", "ID", "BACKENDS", "AFFINITY", "SOURCES",
    ]);
    for r in table.list()? {
        let affinity = match r.options.affinity_timeout_s {
            0 => "-".to_string(),
            s => format!("ClientIP {s}s"),
        };
        let sources: Option<Vec<String>> = r
            .options
            .source_ranges
            .as_ref()
            .map(|set| set.iter().map(ToString::to_string).collect());
        let fe = addr_port(r.frontend.addr, r.frontend.port);
        let proto = protocol_name(r.frontend.protocol);
        let backends: Vec<String> = r
            .backends
            .iter()
            .map(|b| addr_port(b.addr, b.port))
            .collect();
        let scope = scope_name(r.frontend.scope, r.value.flags);
        t.rows.push(vec![
            fe.clone(),
            proto.into(),
            scope.into(),
            r.name.clone(),
            r.value.service_id.to_string(),
            if backends.is_empty() {
                "(none: rejects)".into()
            } else {
                backends.len().to_string()
            },
            affinity,
            match &sources {
                None => "any".into(),
                Some(list) if list.is_empty() => "(none)".into(),
                Some(list) => list.join(","),
            },
        ]);
        t.json.push(json!({
            "frontend": fe, "protocol": proto, "scope": scope, "name": r.name,
            "service_id": r.value.service_id, "backends": backends,
            "affinity_timeout_seconds": r.options.affinity_timeout_s,
            "source_ranges": sources,
        }));
    }
    Ok(t)
}

pub fn backends(pin_dir: &Path) -> Result<Table> {
    let table = ServiceTable::open(pin_dir)?;
    let mut t = Table::new(vec!["FRONTEND", "PROTO", "NAME", "SLOT", "BACKEND"]);
    for r in table.list()? {
        let fe = addr_port(r.frontend.addr, r.frontend.port);
        let proto = protocol_name(r.frontend.protocol);
        for (slot, b) in r.backends.iter().enumerate() {
            let be = addr_port(b.addr, b.port);
            t.rows.push(vec![
                fe.clone(),
                proto.into(),
                r.name.clone(),
                slot.to_string(),
                be.clone(),
            ]);
            t.json.push(json!({
                "frontend": fe, "protocol": proto, "name": r.name, "slot": slot, "backend": be,
            }));
        }
    }
    Ok(t)
}

/// `ferry_conntrack`, as a table (`json` false) or as JSON (true): only
/// the form asked for is built, a full map having half a million entries.
pub fn conntrack(pin_dir: &Path, json: bool) -> Result<Table> {
    let ct = Conntrack::open(pin_dir)?;
    let now = monotonic_now_ns();
    let mut entries = ct.entries()?;
    entries.sort_by_key(|(k, _)| {
        (
            k.protocol,
            k.direction,
            k.src_addr,
            k.src_port,
            k.dst_addr,
            k.dst_port,
        )
    });
    let mut t = Table::new(vec![
        "PROTO",
        "DIR",
        "SOURCE",
        "DESTINATION",
        "NAT",
        "STATE",
        "EXPIRES",
        "SERVICE",
    ]);
    for (k, e) in entries {
        let dir = match k.direction {
            CT_DIR_ORIGINAL => "orig",
            CT_DIR_REPLY => "reply",
            // A source-NAT port takeover in progress.
            _ => "claim",
        };
        let mut nat = if k.direction == CT_DIR_ORIGINAL {
            format!("dst {}", addr_port(e.nat_addr, e.nat_port))
        } else {
            format!("src {}", addr_port(e.nat_addr, e.nat_port))
        };
        if e.peer_nat_addr != [0; 4] {
            // Source NAT (hairpin, or to the node for another node's backend).
            let side = if k.direction == CT_DIR_ORIGINAL {
                "src"
            } else {
                "dst"
            };
            nat.push_str(&format!(
                " {side} {}",
                addr_port(e.peer_nat_addr, e.peer_nat_port)
            ));
        }
        let expires = if e.expires_ns > now {
            format!("{}s", (e.expires_ns - now) / 1_000_000_000)
        } else {
            "expired".into()
        };
        let src = addr_port(k.src_addr, k.src_port);
        let dst = addr_port(k.dst_addr, k.dst_port);
        if json {
            t.json.push(json!({
                "protocol": protocol_name(k.protocol), "direction": dir, "source": src,
                "destination": dst, "nat": nat, "state": state_label(e.state, e.flags),
                "expires": expires, "service_id": e.service_id,
            }));
        } else {
            t.rows.push(vec![
                protocol_name(k.protocol).into(),
                dir.into(),
                src,
                dst,
                nat,
                state_label(e.state, e.flags).into(),
                expires,
                e.service_id.to_string(),
            ]);
        }
    }
    Ok(t)
}

fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return "-".into();
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn endpoints(pin_dir: &Path) -> Result<Table> {
    let eps = Endpoints::open(pin_dir)?;
    let mut t = Table::new(vec![
        "POD IP",
        "IFINDEX",
        "HOST VETH",
        "POD MAC",
        "HOST MAC",
        "SENDS AS",
    ]);
    for (ip, ep) in eps.list()? {
        let name = ifname(ep.ifindex);
        // The one source `ferry_pod_srcs` lets this veth carry: anything
        // but the pod's own address here means its traffic is dropped.
        let sends_as = eps
            .source_of(ep.ifindex)?
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        t.rows.push(vec![
            ip.to_string(),
            ep.ifindex.to_string(),
            name.clone(),
            format_mac(&ep.pod_mac),
            format_mac(&ep.host_mac),
            sends_as.clone(),
        ]);
        t.json.push(json!({
            "pod_ip": ip.to_string(), "ifindex": ep.ifindex, "host_veth": name,
            "pod_mac": format_mac(&ep.pod_mac), "host_mac": format_mac(&ep.host_mac),
            "sends_as": sends_as,
        }));
    }
    Ok(t)
}

/// `ferry_svc_cidrs`: the service CIDRs and the allocated ClusterIPs.
pub fn service_cidrs(pin_dir: &Path) -> Result<Table> {
    let mut t = Table::new(vec!["PREFIX", "KIND"]);
    for (net, range) in ServiceRanges::open(pin_dir)?.list()? {
        let kind = match range.kind {
            ferry_common::SERVICE_RANGE_UNALLOCATED => "service-cidr",
            ferry_common::SERVICE_RANGE_ALLOCATED => "cluster-ip",
            _ => "?",
        };
        t.rows.push(vec![net.to_string(), kind.into()]);
        t.json
            .push(json!({"prefix": net.to_string(), "kind": kind}));
    }
    Ok(t)
}

/// Every pinned map: its type, capacity and the kernel memory it holds,
/// and their total.
pub fn maps(pin_dir: &Path) -> Result<Table> {
    let maps = crate::maps::memory::pinned(pin_dir);
    if maps.is_empty() {
        anyhow::bail!(
            "no ferry map is pinned under {}: is the agent running with this --pin-dir?",
            pin_dir.display()
        );
    }
    let mib = |b: u64| format!("{:.2} MiB", b as f64 / 1048576.0);
    let mut t = Table::new(vec!["MAP", "TYPE", "MAX_ENTRIES", "MEMORY"]);
    for m in &maps {
        t.rows.push(vec![
            m.name.to_string(),
            m.map_type.clone(),
            m.max_entries.to_string(),
            mib(m.memory_bytes),
        ]);
        t.json.push(json!({"map": m.name, "type": m.map_type, "max_entries": m.max_entries, "memory_bytes": m.memory_bytes}));
    }
    let total: u64 = maps.iter().map(|m| m.memory_bytes).sum();
    t.rows.push(vec![
        "(total)".into(),
        String::new(),
        String::new(),
        mib(total),
    ]);
    Ok(t)
}

pub fn counters(pin_dir: &Path) -> Result<Table> {
    let c = Counters::open(pin_dir)?.read()?;
    let mut t = Table::new(vec!["OUTCOME", "PACKETS", "BYTES"]);
    for (i, v) in c.iter().enumerate() {
        t.rows.push(vec![
            outcome::NAMES[i].into(),
            v.packets.to_string(),
            v.bytes.to_string(),
        ]);
        t.json
            .push(json!({"outcome": outcome::NAMES[i], "packets": v.packets, "bytes": v.bytes}));
    }
    Ok(t)
}

/// `ferry_affinity`: each client's backend, and how long ago its last new
/// flow was.
pub fn affinity(pin_dir: &Path) -> Result<Table> {
    let table = AffinityTable::open(pin_dir)?;
    let now = monotonic_now_ns();
    let mut t = Table::new(vec!["SERVICE_ID", "CLIENT", "BACKEND", "SLOT", "LAST_USED"]);
    for (k, e) in table.entries()? {
        let client = Ipv4Addr::from(k.client_addr).to_string();
        let backend = addr_port(e.backend_addr, e.backend_port);
        let ago_s = now.saturating_sub(e.last_used_ns) / 1_000_000_000;
        t.rows.push(vec![
            k.service_id.to_string(),
            client.clone(),
            backend.clone(),
            e.slot.to_string(),
            format!("{ago_s}s ago"),
        ]);
        t.json.push(json!({
            "service_id": k.service_id, "client": client, "backend": backend,
            "slot": e.slot, "last_used_seconds_ago": ago_s,
        }));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = Table {
            header: vec!["A", "LONG HEADER"],
            rows: vec![vec!["wide cell".into(), "x".into()]],
            json: vec![],
        };
        assert_eq!(t.render(), "A          LONG HEADER\nwide cell  x\n");
    }
}
