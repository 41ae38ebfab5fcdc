//! The cluster's service CIDRs: `--service-cidr` together with the IPv4
//! ranges of every `networking.k8s.io/v1` ServiceCIDR object. kube-proxy
//! (nftables) uses every ServiceCIDR's `spec.cidrs` whatever its Ready
//! condition or deletion state: a ServiceCIDR being deleted still holds
//! allocated ClusterIPs until its finalizer lets it go, so its range stays
//! a service range until the object is gone.
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use ferry_common::SERVICE_CIDR_ENTRIES;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::problem::{ObjectProblems, Problem};
use crate::net::Ipv4Net;

/// The CIDR slots of `ferry_svc_cidrs` (the rest hold one ClusterIP per
/// frontend at most).
pub const MAX_SERVICE_CIDRS: usize = SERVICE_CIDR_ENTRIES as usize;

/// The union of `flag` and the objects' IPv4 ranges, at most
/// `MAX_SERVICE_CIDRS`. The flag's come first (the configuration already
/// checked them), then the objects' by name, so which ranges are left out
/// when there are too many does not depend on the order the API listed
/// them in.
pub fn service_cidrs(
    flag: &[Ipv4Net],
    objects: &[ServiceCIDR],
    problems: &mut Vec<Problem>,
) -> BTreeSet<Ipv4Net> {
    let mut cidrs: BTreeSet<Ipv4Net> = flag.iter().copied().collect();
    let mut objects: Vec<&ServiceCIDR> = objects.iter().collect();
    objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for obj in objects {
        let mut problems = ObjectProblems {
            kind: "ServiceCIDR",
            namespace: None,
            name: obj.metadata.name.as_deref(),
            sink: problems,
        };
        let ranges = obj.spec.as_ref().and_then(|s| s.cidrs.as_ref());
        for (i, text) in ranges.into_iter().flatten().enumerate() {
            let field = format!("spec.cidrs[{i}]");
            let net = match parse_range(text) {
                Ok(Some(net)) => net,
                Ok(None) => {
                    problems.push(field, format!("{text}: IPv6 is not served yet (IPv4 only)"));
                    continue;
                }
                Err(why) => {
                    problems.push(
                        field,
                        format!(
                            "{text:?} {why}: not used; fix the object (its other ranges are used)"
                        ),
                    );
                    continue;
                }
            };
            if !cidrs.contains(&net) && cidrs.len() >= MAX_SERVICE_CIDRS {
                problems.push(
                    field,
                    format!(
                        "{net}: more than {MAX_SERVICE_CIDRS} service CIDRs in all, the most \
                         ferry_svc_cidrs holds: not used; merge ranges or delete unused ServiceCIDRs"
                    ),
                );
                continue;
            }
            cidrs.insert(net);
        }
    }
    cidrs
}

/// An IPv4 network, None for an IPv6 one, or why it is neither.
fn parse_range(text: &str) -> Result<Option<Ipv4Net>, String> {
    if let Some((addr, _)) = text.split_once('/')
        && addr.parse::<Ipv6Addr>().is_ok()
    {
        return Ok(None);
    }
    let net: Ipv4Net = text
        .parse()
        .map_err(|e: crate::net::NetParseError| format!("is not a CIDR ({})", e.reason))?;
    if net.addr != net.network() {
        return Err(format!(
            "has host bits set (the network is {}/{})",
            net.network(),
            net.prefix
        ));
    }
    Ok(Some(net))
}
