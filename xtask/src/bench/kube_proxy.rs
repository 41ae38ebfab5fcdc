//! Rule sets shaped like the ones kube-proxy writes for ClusterIP Services,
//! in its iptables mode and its nftables mode, so the benchmark compares
//! ferry with what an operator runs today at the same number of Services.
//! Chain layout, matches and marks follow kube-proxy's proxier; chain name
//! hashes are stand-ins (kube-proxy hashes the service port name with
//! SHA-256, which changes nothing about how the kernel walks the rules).
use std::{fmt::Write, net::Ipv4Addr};

use super::ServiceSpec;

/// The pod CIDR kube-proxy's `--cluster-cidr` names: traffic from outside
/// it to a ClusterIP is marked for masquerade.
const CLUSTER_CIDR: &str = "10.244.0.0/16";

fn chain_hash(kind: &str, svc: usize, ep: usize) -> String {
    // FNV-1a: deterministic, spreads names like kube-proxy's base32 hashes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{kind}/{svc}/{ep}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// A NodePort of the benchmark (externalTrafficPolicy Cluster, one
/// endpoint): what kube-proxy writes for it into KUBE-NODEPORTS.
pub struct NodePortSpec {
    pub name: &'static str,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    pub node_port: u16,
    pub endpoint: Ipv4Addr,
    pub target_port: u16,
}

/// Input for `iptables-restore`: kube-proxy's nat and filter chains for
/// `services`, in the order given (KUBE-SERVICES is walked rule by rule).
pub fn iptables(services: &[ServiceSpec]) -> String {
    iptables_with_nodeports(services, &[])
}

/// `iptables` plus NodePorts, reached (as in kube-proxy) through the
/// KUBE-NODEPORTS jump at the end of KUBE-SERVICES.
pub fn iptables_with_nodeports(services: &[ServiceSpec], nodeports: &[NodePortSpec]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut nodeport_rules = String::new();
    for (i, np) in nodeports.iter().enumerate() {
        let svc = format!("KUBE-SVC-{}", chain_hash("npsvc", i, 0));
        let ext = format!("KUBE-EXT-{}", chain_hash("npext", i, 0));
        let sep = format!("KUBE-SEP-{}", chain_hash("npsep", i, 0));
        let comment = format!("default/{}:{}", np.name, np.protocol);
        for c in [&svc, &ext, &sep] {
            writeln!(chains, ":{c} - [0:0]").unwrap();
        }
        let p = np.protocol;
        writeln!(
            nodeport_rules,
            "-A KUBE-NODEPORTS -p {p} -m comment --comment \"{comment}\" -m {p} --dport {} -j {ext}",
            np.node_port
        )
        .unwrap();
        writeln!(
            rules,
            "-A {ext} -m comment --comment \"masquerade traffic for {comment} external destinations\" -j KUBE-MARK-MASQ\n-A {ext} -j {svc}\n-A {svc} -m comment --comment \"{comment} -> {}:{}\" -j {sep}\n-A {sep} -s {}/32 -m comment --comment \"{comment}\" -j KUBE-MARK-MASQ\n-A {sep} -p {p} -m comment --comment \"{comment}\" -m {p} -j DNAT --to-destination {}:{}",
            np.endpoint, np.target_port, np.endpoint, np.endpoint, np.target_port
        )
        .unwrap();
    }
    for (i, s) in services.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{}", chain_hash("svc", i, 0));
        let comment = format!("default/{}:http", s.name);
        writeln!(chains, ":{svc_chain} - [0:0]").unwrap();
        writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{comment} cluster IP\" -m tcp --dport {} -j {svc_chain}",
            s.vip, s.port
        )
        .unwrap();
        writeln!(
            rules,
            "-A {svc_chain} ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m comment --comment \"{comment} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
            s.vip, s.port
        )
        .unwrap();
        let n = s.endpoints.len();
        for (j, ep) in s.endpoints.iter().enumerate() {
            let sep_chain = format!("KUBE-SEP-{}", chain_hash("sep", i, j));
            writeln!(chains, ":{sep_chain} - [0:0]").unwrap();
            let remaining = n - j;
            if remaining > 1 {
                writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{comment} -> {ep}:{}\" -m statistic --mode random --probability {:.10} -j {sep_chain}",
                    s.target_port,
                    1.0 / remaining as f64
                )
                .unwrap();
            } else {
                writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{comment} -> {ep}:{}\" -j {sep_chain}",
                    s.target_port
                )
                .unwrap();
            }
            writeln!(
                rules,
                "-A {sep_chain} -s {ep}/32 -m comment --comment \"{comment}\" -j KUBE-MARK-MASQ"
            )
            .unwrap();
            writeln!(
                rules,
                "-A {sep_chain} -p tcp -m comment --comment \"{comment}\" -m tcp -j DNAT --to-destination {ep}:{}",
                s.target_port
            )
            .unwrap();
        }
    }
    format!(
        "*filter
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
{chains}-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
{rules}-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
{nodeport_rules}COMMIT
"
    )
}

/// Inputs for `nft -f`, one transaction each: kube-proxy's nftables mode,
/// where ClusterIPs are looked up in one verdict map and endpoints picked
/// with numgen. The first transaction creates the table and its base
/// chains; each one adds `per_transaction` Services. (One transaction of
/// 10,000 Services takes minutes here: the kernel revalidates the jump
/// graph per chain, quadratic in the chains of the transaction. kube-proxy,
/// too, avoids rewriting everything at once after its first sync.)
pub fn nftables(services: &[ServiceSpec], per_transaction: usize) -> Vec<String> {
    let base = "table ip kube-proxy {
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
    comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"
  }
  chain mark-for-masquerade {
    mark set mark or 0x4000
  }
  chain masquerading {
    mark and 0x4000 == 0 return
    mark set mark xor 0x4000
    masquerade fully-random
  }
  chain nodeports {
  }
  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports
  }
  chain filter-forward {
    type filter hook forward priority -110; policy accept;
    ct state invalid drop
  }
  chain nat-prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump services
  }
  chain nat-output {
    type nat hook output priority -100; policy accept;
    jump services
  }
  chain nat-postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump masquerading
  }
}
"
    .to_string();
    let mut transactions = vec![base];
    for (chunk_index, chunk) in services.chunks(per_transaction.max(1)).enumerate() {
        let mut chains = String::new();
        let mut elements = Vec::with_capacity(chunk.len());
        for (k, s) in chunk.iter().enumerate() {
            let i = chunk_index * per_transaction + k;
            let svc_chain = nft_service_chain(i, s);
            let mut ep_chains = Vec::new();
            for (j, ep) in s.endpoints.iter().enumerate() {
                let ep_chain = nft_endpoint_chain(i, j, s, *ep);
                let [r1, r2] = nft_endpoint_rules(*ep, s.target_port);
                writeln!(chains, "  chain {ep_chain} {{\n    {r1}\n    {r2}\n  }}").unwrap();
                ep_chains.push(ep_chain);
            }
            let [r1, r2] = nft_service_rules(s, &ep_chains);
            writeln!(chains, "  chain {svc_chain} {{\n    {r1}\n    {r2}\n  }}").unwrap();
            elements.push(format!("{} . tcp . {} : goto {svc_chain}", s.vip, s.port));
        }
        transactions.push(format!(
            "table ip kube-proxy {{\n{chains}}}\nadd element ip kube-proxy service-ips {{ {} }}\n",
            elements.join(", ")
        ));
    }
    transactions
}

/// The chain of service `i` (`s`) in [`nftables`].
fn nft_service_chain(i: usize, s: &ServiceSpec) -> String {
    format!(
        "service-{}-default/{}/tcp/http",
        &chain_hash("svc", i, 0)[..8],
        s.name
    )
}

/// The chain of endpoint `j` (address `ep`) of service `i` (`s`) in
/// [`nftables`]: its name carries the address, as kube-proxy's does.
fn nft_endpoint_chain(i: usize, j: usize, s: &ServiceSpec, ep: Ipv4Addr) -> String {
    format!(
        "endpoint-{}-default/{}/tcp/http__{ep}/{}",
        &chain_hash("sep", i, j)[..8],
        s.name,
        s.target_port
    )
}

/// The rules of an endpoint's chain.
fn nft_endpoint_rules(ep: Ipv4Addr, target_port: u16) -> [String; 2] {
    [
        format!("ip saddr {ep} jump mark-for-masquerade"),
        format!("meta l4proto tcp dnat to {ep}:{target_port}"),
    ]
}

/// The rules of a service's chain, whose endpoints' chains are `ep_chains`.
fn nft_service_rules(s: &ServiceSpec, ep_chains: &[String]) -> [String; 2] {
    let vmap: Vec<String> = ep_chains
        .iter()
        .enumerate()
        .map(|(j, c)| format!("{j} : goto {c}"))
        .collect();
    [
        format!(
            "ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
            s.vip, s.port
        ),
        format!(
            "numgen random mod {} vmap {{ {} }}",
            ep_chains.len(),
            vmap.join(", ")
        ),
    ]
}

/// What kube-proxy's nftables mode writes in a partial sync after endpoint
/// `j` of service `i` changed to `new`, against the table [`nftables`]
/// loaded for `services`: one transaction that adds the new endpoint's
/// chain, rewrites the service's chain (flush, then its rules) and flushes
/// the old endpoint's chain, now stale; and the later transaction that
/// deletes the stale chain (kube-proxy deletes stale chains a sync later).
/// `services` is the set before the change; it is updated.
pub fn nftables_endpoint_change(
    services: &mut [ServiceSpec],
    i: usize,
    j: usize,
    new: Ipv4Addr,
) -> (String, String) {
    let s = &mut services[i];
    let stale = nft_endpoint_chain(i, j, s, s.endpoints[j]);
    s.endpoints[j] = new;
    let s = &services[i];
    let added = nft_endpoint_chain(i, j, s, new);
    let ep_chains: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, ep)| nft_endpoint_chain(i, k, s, *ep))
        .collect();
    let svc_chain = nft_service_chain(i, s);
    let mut tx = String::new();
    writeln!(tx, "add chain ip kube-proxy {added}").unwrap();
    writeln!(tx, "flush chain ip kube-proxy {added}").unwrap();
    for rule in nft_endpoint_rules(new, s.target_port) {
        writeln!(tx, "add rule ip kube-proxy {added} {rule}").unwrap();
    }
    writeln!(tx, "flush chain ip kube-proxy {svc_chain}").unwrap();
    for rule in nft_service_rules(s, &ep_chains) {
        writeln!(tx, "add rule ip kube-proxy {svc_chain} {rule}").unwrap();
    }
    writeln!(tx, "flush chain ip kube-proxy {stale}").unwrap();
    (tx, format!("delete chain ip kube-proxy {stale}\n"))
}
