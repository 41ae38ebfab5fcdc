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

/// How much of kube-proxy's rule sets the benchmark loads at a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Every Service's chains, as kube-proxy writes them.
    Whole,
    /// The part a new connection to the measured Service walks
    /// ([`iptables_walked`], [`nftables_walked`]): for sizes whose whole
    /// sets cannot be loaded here.
    Walked,
}

/// kube-proxy's "large cluster mode": above this many endpoints it writes
/// the rules of Service and endpoint chains without comments, which makes
/// the rule set some 40% smaller (`largeClusterEndpointsThreshold`).
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The program that loads the iptables rule sets: the x_tables ("legacy")
/// backend, the faster of the two here both to load (10,000 Services in
/// 9-14 s, iptables-nft about 28 s) and to walk per rule, so the harder
/// baseline.
/// A node holds one backend's rules at a time.
pub const IPTABLES_RESTORE: &str = "iptables-legacy-restore";

/// Input for `iptables-restore`: kube-proxy's nat and filter chains for
/// `services`, in the order given (KUBE-SERVICES is walked rule by rule),
/// and for `nodeports`, reached (as in kube-proxy) through the
/// KUBE-NODEPORTS jump at the end of KUBE-SERVICES.
pub fn iptables_with_nodeports(services: &[ServiceSpec], nodeports: &[NodePortSpec]) -> String {
    iptables_restores(services, nodeports, usize::MAX).concat()
}

/// The same rule set as inputs for successive `iptables-restore` runs of
/// `per_restore` Services each: the first replaces the tables, the others
/// (loaded with `--noflush`) create their chains and append their rules,
/// so the kernel ends up with the tables one input would give. One
/// restore of many Services spends its time in iptables-restore looking up
/// the chains it created, a linear search each, so its time grows faster
/// than the count (20,000 Services took 114 s here with other work
/// running); a restore of a part finds the earlier parts' chains by the
/// index it builds from the kernel's table.
pub fn iptables_restores(
    services: &[ServiceSpec],
    nodeports: &[NodePortSpec],
    per_restore: usize,
) -> Vec<String> {
    let comments = endpoint_comments(services, nodeports);
    let chunks: Vec<&[ServiceSpec]> = if services.is_empty() {
        vec![&[]]
    } else {
        services.chunks(per_restore.max(1)).collect()
    };
    let last = chunks.len() - 1;
    let mut first_index = 0;
    chunks
        .into_iter()
        .enumerate()
        .map(|(k, chunk)| {
            let mut chains = String::new();
            let mut rules = String::new();
            if k == 0 {
                nodeport_rules(nodeports, comments, &mut chains, &mut rules);
            }
            for (offset, s) in chunk.iter().enumerate() {
                service_rules(first_index + offset, s, comments, &mut chains, &mut rules);
            }
            first_index += chunk.len();
            let tail = if k == last {
                IPTABLES_NODEPORTS_JUMP
            } else {
                ""
            };
            if k == 0 {
                first_restore(&chains, &rules, tail)
            } else {
                format!("*nat\n{chains}{rules}{tail}COMMIT\n")
            }
        })
        .collect()
}

/// A restore that replaces the tables: kube-proxy's own chains and the
/// jumps into them, then `chains` and `rules`, then `tail`.
fn first_restore(chains: &str, rules: &str, tail: &str) -> String {
    format!(
        "*filter\n{IPTABLES_FILTER_CHAINS}{IPTABLES_FILTER_JUMPS}{IPTABLES_FILTER_RULES}COMMIT\n*nat\n{IPTABLES_NAT_CHAINS}{chains}{IPTABLES_NAT_JUMPS}{IPTABLES_NAT_RULES}{rules}{tail}COMMIT\n"
    )
}

/// The chain every entry but the measured one leads to in the sets a new
/// connection walks ([`iptables_walked`], [`nftables_walked`]). It stays
/// empty: nothing the benchmark sends reaches it.
const WALKED_ELSEWHERE: &str = "KUBE-SVC-ELSEWHERE";

/// The part of kube-proxy's iptables rule set that a new connection to
/// Service `measured` walks, for sizes whose whole set cannot be loaded
/// here: KUBE-SERVICES whole, an entry per Service in order (a connection
/// is matched against each entry before its own, and no entry's target is
/// entered unless it matches), and behind the measured entry its own
/// chains; every other entry jumps to one empty chain. The whole set does
/// not fit the kernel's x_tables (tables are capped at 512 MiB, about
/// 50,000 Services of 10 endpoints) and iptables-nft took over 10 minutes
/// to load it.
pub fn iptables_walked(services: &[ServiceSpec], measured: usize) -> String {
    let comments = endpoint_comments(services, &[]);
    let mut chains = format!(":{WALKED_ELSEWHERE} - [0:0]\n");
    let mut rules = String::new();
    for (i, s) in services.iter().enumerate() {
        if i == measured {
            service_rules(i, s, comments, &mut chains, &mut rules);
        } else {
            writeln!(rules, "{}", cluster_ip_entry(s, WALKED_ELSEWHERE)).unwrap();
        }
    }
    first_restore(&chains, &rules, IPTABLES_NODEPORTS_JUMP)
}

/// What kube-proxy's iptables mode writes in the partial sync after
/// endpoint `j` of Service `i` changed from `stale` to the address
/// `services` now holds (its way since Kubernetes 1.28): its own
/// top-level chains whole (the filter table's, and KUBE-SERVICES with an
/// entry per Service), the changed Service's chain and the new endpoint's
/// chain; the stale endpoint's chain is flushed and deleted. Every other
/// Service's chains stay as they are: loaded with `--noflush` into the
/// tables of [`iptables_restores`] for the Services as they were, with
/// no NodePorts (KUBE-NODEPORTS, which kube-proxy rewrites whole too, is
/// written empty).
pub fn iptables_endpoint_change(
    services: &[ServiceSpec],
    i: usize,
    j: usize,
    stale: Ipv4Addr,
) -> String {
    let comments = endpoint_comments(services, &[]);
    let mut chains = String::new();
    let mut rules = String::new();
    for (k, s) in services.iter().enumerate() {
        writeln!(rules, "{}", cluster_ip_entry(s, &service_chain(k))).unwrap();
    }
    service_chains(i, &services[i], comments, &mut chains, &mut rules);
    let stale_chain = endpoint_chain(i, j, stale);
    writeln!(chains, ":{stale_chain} - [0:0]").unwrap();
    format!(
        "*filter\n{IPTABLES_FILTER_CHAINS}{IPTABLES_FILTER_RULES}COMMIT\n*nat\n{IPTABLES_NAT_CHAINS}{chains}{IPTABLES_NAT_RULES}{rules}{IPTABLES_NODEPORTS_JUMP}-X {stale_chain}\nCOMMIT\n"
    )
}

/// Whether kube-proxy writes comments on the rules of Service and
/// endpoint chains for this many endpoints (not in its large cluster mode).
fn endpoint_comments(services: &[ServiceSpec], nodeports: &[NodePortSpec]) -> bool {
    let endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
    endpoints + nodeports.len() <= LARGE_CLUSTER_ENDPOINTS
}

/// kube-proxy's chains in the filter table (its per-Service rules there
/// only reject Services without endpoints, which the benchmark has none of).
const IPTABLES_FILTER_CHAINS: &str = ":KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
";

/// The jumps into them from the built-in chains, written once (kube-proxy
/// makes sure of them outside its restores).
const IPTABLES_FILTER_JUMPS: &str = "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
";

const IPTABLES_FILTER_RULES: &str = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
";

const IPTABLES_NAT_CHAINS: &str = ":KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
";

const IPTABLES_NAT_JUMPS: &str =
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
";

const IPTABLES_NAT_RULES: &str = "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
";

/// KUBE-SERVICES' last rule (kube-proxy: "this must be the last rule in
/// this chain").
const IPTABLES_NODEPORTS_JUMP: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
";

/// The chains and rules of `nodeports`: their KUBE-NODEPORTS entries and
/// the external, service and endpoint chains behind them.
fn nodeport_rules(
    nodeports: &[NodePortSpec],
    comments: bool,
    chains: &mut String,
    rules: &mut String,
) {
    for (i, np) in nodeports.iter().enumerate() {
        let svc = format!("KUBE-SVC-{}", chain_hash("npsvc", i, 0));
        let ext = format!("KUBE-EXT-{}", chain_hash("npext", i, 0));
        let sep = format!("KUBE-SEP-{}", chain_hash("npsep", i, 0));
        let comment = format!("default/{}:{}", np.name, np.protocol);
        // As for ClusterIPs, the service and endpoint chains' rules lose
        // their comments in the large cluster mode.
        let to_endpoint = rule_comment(
            comments,
            &format!("{comment} -> {}:{}", np.endpoint, np.target_port),
        );
        let in_endpoint = rule_comment(comments, &comment);
        for c in [&svc, &ext, &sep] {
            writeln!(chains, ":{c} - [0:0]").unwrap();
        }
        let p = np.protocol;
        writeln!(
            rules,
            "-A KUBE-NODEPORTS -p {p} -m comment --comment \"{comment}\" -m {p} --dport {} -j {ext}",
            np.node_port
        )
        .unwrap();
        writeln!(
            rules,
            "-A {ext} -m comment --comment \"masquerade traffic for {comment} external destinations\" -j KUBE-MARK-MASQ\n-A {ext} -j {svc}\n-A {svc}{to_endpoint} -j {sep}\n-A {sep} -s {}/32{in_endpoint} -j KUBE-MARK-MASQ\n-A {sep} -p {p}{in_endpoint} -m {p} -j DNAT --to-destination {}:{}",
            np.endpoint, np.endpoint, np.target_port
        )
        .unwrap();
    }
}

/// The chains and rules of Service `i` (`s`): its KUBE-SERVICES entry,
/// its service chain and its endpoints' chains. `comments`: whether the
/// service and endpoint chains' rules carry comments (not in kube-proxy's
/// large cluster mode).
fn service_rules(
    i: usize,
    s: &ServiceSpec,
    comments: bool,
    chains: &mut String,
    rules: &mut String,
) {
    writeln!(rules, "{}", cluster_ip_entry(s, &service_chain(i))).unwrap();
    service_chains(i, s, comments, chains, rules);
}

/// A rule's ` -m comment --comment "text"`, or nothing without `comments`
/// (kube-proxy's large cluster mode).
fn rule_comment(comments: bool, text: &str) -> String {
    if comments {
        format!(" -m comment --comment \"{text}\"")
    } else {
        String::new()
    }
}

fn service_chain(i: usize) -> String {
    format!("KUBE-SVC-{}", chain_hash("svc", i, 0))
}

/// The chain of endpoint `j` at `ep` of Service `i`: named after its
/// address too, as kube-proxy's are, so a changed endpoint is a new chain.
fn endpoint_chain(i: usize, j: usize, ep: Ipv4Addr) -> String {
    format!("KUBE-SEP-{}", chain_hash(&format!("sep/{ep}"), i, j))
}

fn service_comment(s: &ServiceSpec) -> String {
    format!("default/{}:http", s.name)
}

/// Service `s`'s rule in KUBE-SERVICES (always with its comment), to
/// `chain`.
fn cluster_ip_entry(s: &ServiceSpec, chain: &str) -> String {
    format!(
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j {chain}",
        s.vip,
        service_comment(s),
        s.port,
    )
}

/// Service `i`'s own chain and its endpoints' chains, with their rules.
fn service_chains(
    i: usize,
    s: &ServiceSpec,
    comments: bool,
    chains: &mut String,
    rules: &mut String,
) {
    let svc_chain = service_chain(i);
    let name = service_comment(s);
    let comment = |text: &str| rule_comment(comments, text);
    writeln!(chains, ":{svc_chain} - [0:0]").unwrap();
    writeln!(
        rules,
        "-A {svc_chain} ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        s.vip, s.port
    )
    .unwrap();
    let n = s.endpoints.len();
    for (j, ep) in s.endpoints.iter().enumerate() {
        let sep_chain = endpoint_chain(i, j, *ep);
        writeln!(chains, ":{sep_chain} - [0:0]").unwrap();
        let to_endpoint = comment(&format!("{name} -> {ep}:{}", s.target_port));
        let remaining = n - j;
        if remaining > 1 {
            writeln!(
                rules,
                "-A {svc_chain}{to_endpoint} -m statistic --mode random --probability {:.10} -j {sep_chain}",
                1.0 / remaining as f64
            )
            .unwrap();
        } else {
            writeln!(rules, "-A {svc_chain}{to_endpoint} -j {sep_chain}").unwrap();
        }
        let in_endpoint = comment(&name);
        writeln!(
            rules,
            "-A {sep_chain} -s {ep}/32{in_endpoint} -j KUBE-MARK-MASQ"
        )
        .unwrap();
        writeln!(
            rules,
            "-A {sep_chain} -p tcp{in_endpoint} -m tcp -j DNAT --to-destination {ep}:{}",
            s.target_port
        )
        .unwrap();
    }
}

/// Inputs for `nft -f`, one transaction each: kube-proxy's nftables mode,
/// where ClusterIPs are looked up in one verdict map and endpoints picked
/// with numgen. The first transaction creates the table and its base
/// chains; each one adds `per_transaction` Services. (One transaction of
/// 10,000 Services takes minutes here: the kernel revalidates the jump
/// graph per chain, quadratic in the chains of the transaction. kube-proxy,
/// too, avoids rewriting everything at once after its first sync.)
pub fn nftables(services: &[ServiceSpec], per_transaction: usize) -> Vec<String> {
    let mut transactions = vec![NFT_BASE.to_string()];
    for (chunk_index, chunk) in services.chunks(per_transaction.max(1)).enumerate() {
        let mut chains = String::new();
        let mut elements = Vec::with_capacity(chunk.len());
        for (k, s) in chunk.iter().enumerate() {
            let i = chunk_index * per_transaction + k;
            let svc_chain = nft_service_chains(i, s, &mut chains);
            elements.push(nft_element(s, &svc_chain));
        }
        transactions.push(nft_transaction(&chains, &elements));
    }
    transactions
}

/// The part of kube-proxy's nftables rule set that a new connection to
/// Service `measured` walks, for sizes whose whole set takes too long to
/// load here (in transactions of a few hundred Services, each slower than
/// the last): the service-ips map whole, an element per Service (one
/// lookup finds the connection's), and behind the measured element its
/// own chains; every other element leads to one empty chain.
pub fn nftables_walked(services: &[ServiceSpec], measured: usize) -> Vec<String> {
    let mut chains = format!("  chain {WALKED_ELSEWHERE} {{\n  }}\n");
    let svc_chain = nft_service_chains(measured, &services[measured], &mut chains);
    let mut transactions = vec![NFT_BASE.to_string(), nft_transaction(&chains, &[])];
    // Elements in transactions of a bounded size, like kube-proxy's.
    let elements: Vec<String> = services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let chain = if i == measured {
                svc_chain.as_str()
            } else {
                WALKED_ELSEWHERE
            };
            nft_element(s, chain)
        })
        .collect();
    for chunk in elements.chunks(NFT_WALKED_ELEMENTS_PER_TRANSACTION) {
        transactions.push(nft_transaction("", chunk));
    }
    transactions
}

const NFT_WALKED_ELEMENTS_PER_TRANSACTION: usize = 10_000;

/// Service `i`'s chain and its endpoints' chains, into `chains` (inside
/// the table block); its chain's name.
fn nft_service_chains(i: usize, s: &ServiceSpec, chains: &mut String) -> String {
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
    svc_chain
}

/// Service `s`'s element in the service-ips map, leading to `chain`.
fn nft_element(s: &ServiceSpec, chain: &str) -> String {
    format!("{} . tcp . {} : goto {chain}", s.vip, s.port)
}

/// One `nft -f` input: `chains` into the table, then `elements` into the
/// service-ips map.
fn nft_transaction(chains: &str, elements: &[String]) -> String {
    let mut tx = format!("table ip kube-proxy {{\n{chains}}}\n");
    if !elements.is_empty() {
        writeln!(
            tx,
            "add element ip kube-proxy service-ips {{ {} }}",
            elements.join(", ")
        )
        .unwrap();
    }
    tx
}

const NFT_BASE: &str = "table ip kube-proxy {
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
";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::service_set;

    fn iptables(services: &[ServiceSpec]) -> String {
        iptables_with_nodeports(services, &[])
    }

    /// The rule lines (`-A`, `-X`) of restore inputs, in order.
    fn rule_lines(inputs: &[String]) -> Vec<String> {
        inputs
            .iter()
            .flat_map(|i| i.lines())
            .filter(|l| l.starts_with("-A ") || l.starts_with("-X "))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn restores_in_parts_append_the_rules_one_restore_writes() {
        let (services, _) = service_set(7);
        let whole = iptables(&services);
        let parts = iptables_restores(&services, &[], 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(rule_lines(&parts), rule_lines(std::slice::from_ref(&whole)));
        // Only the first replaces the filter table and writes the jumps
        // from the built-in chains; only the last ends KUBE-SERVICES with
        // the NodePorts jump, which must stay its last rule.
        assert!(parts[0].starts_with("*filter\n") && parts[0].contains("-A PREROUTING "));
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.starts_with("*nat\n") && !p.contains("PREROUTING"))
        );
        let jumps = |p: &String| p.matches("-j KUBE-NODEPORTS").count();
        assert_eq!(parts.iter().map(jumps).collect::<Vec<_>>(), [0, 0, 1]);
        let services_rules: Vec<String> = rule_lines(&[whole])
            .into_iter()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert_eq!(services_rules.len(), 8);
        assert!(services_rules[7].ends_with("-j KUBE-NODEPORTS"));
        // Every chain a rule jumps to is declared in a restore up to its own.
        for (k, part) in parts.iter().enumerate() {
            let declared: Vec<&str> = parts[..=k]
                .iter()
                .flat_map(|p| p.lines())
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split(' ').next())
                .collect();
            for target in part
                .lines()
                .filter_map(|l| l.rsplit_once(" -j "))
                .map(|(_, t)| t.split(' ').next().unwrap())
                .filter(|t| t.starts_with("KUBE-SVC-") || t.starts_with("KUBE-SEP-"))
            {
                assert!(
                    declared.contains(&target),
                    "{target} undeclared in part {k}"
                );
            }
        }
    }

    #[test]
    fn endpoint_rules_lose_their_comments_above_a_thousand_endpoints() {
        let sep_rules = |n| {
            let (services, _) = service_set(n);
            rule_lines(&[iptables(&services)])
                .into_iter()
                .filter(|l| l.starts_with("-A KUBE-SEP-") || l.contains("-m statistic"))
                .collect::<Vec<_>>()
        };
        // 100 Services of 10 endpoints (the measured one has 1): 991.
        assert!(sep_rules(100).iter().all(|l| l.contains("--comment")));
        // 101: 1,001, kube-proxy's large cluster mode.
        assert!(sep_rules(101).iter().all(|l| !l.contains("--comment")));
        // KUBE-SERVICES keeps its comments in both.
        let (services, _) = service_set(101);
        assert!(
            rule_lines(&[iptables(&services)])
                .iter()
                .filter(|l| l.starts_with("-A KUBE-SERVICES -d "))
                .all(|l| l.contains("cluster IP\""))
        );
    }

    #[test]
    fn a_partial_sync_rewrites_top_level_chains_and_the_changed_service_only() {
        let (before, _) = service_set(5);
        let mut after = before.clone();
        let stale = after[2].endpoints[0];
        after[2].endpoints[0] = Ipv4Addr::new(10, 191, 0, 1);
        let change = iptables_endpoint_change(&after, 2, 0, stale);
        let stale_chain = endpoint_chain(2, 0, stale);
        let new_chain = endpoint_chain(2, 0, after[2].endpoints[0]);
        assert_ne!(stale_chain, new_chain);
        assert!(change.contains(&format!(":{new_chain} - [0:0]")));
        assert!(change.contains(&format!(":{stale_chain} - [0:0]")));
        assert!(change.contains(&format!("\n-X {stale_chain}\nCOMMIT\n")));
        let lines = rule_lines(std::slice::from_ref(&change));
        let entries = lines
            .iter()
            .filter(|l| l.starts_with("-A KUBE-SERVICES -d "))
            .count();
        assert_eq!(entries, 5);
        // No other Service's chains, no rules in built-in chains (a
        // `--noflush` restore would append them twice).
        for k in [0, 1, 3, 4] {
            assert!(!change.contains(&format!(":{}", service_chain(k))));
        }
        assert!(!lines.iter().any(|l| l.starts_with("-A PREROUTING")
            || l.starts_with("-A OUTPUT")
            || l.starts_with("-A POSTROUTING")
            || l.starts_with("-A FORWARD")));
        // The changed Service's chain as a whole restore would write it.
        let whole = rule_lines(&[iptables(&after)]);
        let svc = format!("-A {} ", service_chain(2));
        let own = |ls: &[String]| {
            ls.iter()
                .filter(|l| l.starts_with(&svc))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(own(&lines), own(&whole));
    }

    #[test]
    fn the_walked_part_keeps_every_entry_in_order_and_one_service_behind_them() {
        let (services, _) = service_set(9);
        let entries = |input: &str| {
            input
                .lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES -d "))
                .map(|l| l.rsplit_once(" -j ").unwrap().0.to_string())
                .collect::<Vec<_>>()
        };
        let walked = iptables_walked(&services, 4);
        // The same matches in the same order as the whole set: a new
        // connection compares itself with as many rules before its own.
        assert_eq!(entries(&walked), entries(&iptables(&services)));
        let declared: Vec<&str> = walked
            .lines()
            .filter_map(|l| l.strip_prefix(":KUBE-S"))
            .collect();
        // KUBE-SERVICES (twice: filter and nat), the empty chain, the
        // measured Service's chain and its endpoint's.
        assert_eq!(declared.len(), 5, "{declared:?}");
        assert!(walked.contains(&format!("-j {}\n", service_chain(4))));
        assert_eq!(
            walked.matches(&format!("-j {WALKED_ELSEWHERE}\n")).count(),
            8
        );

        let nft = nftables_walked(&services, 4).concat();
        assert_eq!(
            nft.matches(&format!(": goto {WALKED_ELSEWHERE}")).count(),
            8
        );
        let own = nft_service_chain(4, &services[4]);
        assert_eq!(nft.matches(&format!(": goto {own}")).count(), 1);
        assert_eq!(nft.matches("\n  chain service-").count(), 1);
    }
}
