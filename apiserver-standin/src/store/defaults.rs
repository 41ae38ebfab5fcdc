//! Defaulting and allocation that the real registries do on create and
//! update, so objects look as a real server would store them: Services get
//! a type, session affinity, port protocols and target ports, a cluster IP
//! (allocated if absent, immutable once set), IP families, node ports and
//! traffic policies; EndpointSlice ports get a protocol. A ServiceCIDR must
//! have `spec.cidrs`, which are immutable, as the real validation says.
use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{ApiError, Kind, Store, ns_name};

/// Where cluster IPs come from when a Service has none (inside the usual
/// 10.96.0.0/12 service range, high enough to stay clear of the addresses
/// tests pick by hand).
const CLUSTER_IP_BASE: Ipv4Addr = Ipv4Addr::new(10, 111, 0, 1);
const NODE_PORTS: std::ops::RangeInclusive<u64> = 30000..=32767;

impl Store {
    /// Fill in defaults for `kind`; `old` is the stored object on update.
    pub(super) fn default_object(
        &mut self,
        kind: Kind,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        match kind {
            Kind::Service => self.default_service(obj, old),
            Kind::EndpointSlice => {
                default_ports_protocol(obj.pointer_mut("/ports"));
                if obj.get("addressType").is_none() {
                    let (_, name) = ns_name(obj);
                    return Err(ApiError::invalid(
                        kind,
                        &name,
                        "addressType: Required value",
                    ));
                }
                Ok(())
            }
            Kind::Node => Ok(()),
            Kind::ServiceCIDR => validate_service_cidr(obj, old),
        }
    }

    /// What the Service registry fills in: type, session affinity, port
    /// protocols and target ports, the cluster IP (allocated, and kept
    /// across updates), IP families, node ports, traffic policies, status.
    fn default_service(&mut self, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let (_, name) = ns_name(obj);
        let key_of_self = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string()
            + "/"
            + &name;
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        let typ = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        spec["type"] = typ.clone().into();
        if spec.get("sessionAffinity").is_none() {
            spec["sessionAffinity"] = "None".into();
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if p.get("protocol").is_none() {
                    p["protocol"] = "TCP".into();
                }
                if p.get("targetPort").is_none() {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
        if typ != "ExternalName" {
            self.default_cluster_ip(spec, old, &name, &key_of_self)?;
            if spec.get("internalTrafficPolicy").is_none() {
                spec["internalTrafficPolicy"] = "Cluster".into();
            }
        }
        if typ == "NodePort" || typ == "LoadBalancer" {
            if spec.get("externalTrafficPolicy").is_none() {
                spec["externalTrafficPolicy"] = "Cluster".into();
            }
            self.allocate_node_ports(spec, &key_of_self);
        }
        if obj.get("status").is_none() {
            obj["status"] = json!({"loadBalancer": {}});
        }
        Ok(())
    }

    fn default_cluster_ip(
        &self,
        spec: &mut Value,
        old: Option<&Value>,
        name: &str,
        self_key: &str,
    ) -> Result<(), ApiError> {
        let given = spec["clusterIP"].as_str().unwrap_or_default().to_string();
        let old_ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .unwrap_or_default();
        let ip = if !old_ip.is_empty() {
            // Immutable once set; an update may leave it out.
            if !given.is_empty() && given != old_ip {
                return Err(ApiError::invalid(
                    Kind::Service,
                    name,
                    &format!(
                        "spec.clusterIPs[0]: Invalid value: {given:?}: may not change once set"
                    ),
                ));
            }
            old_ip.to_string()
        } else if given.is_empty() {
            self.free_cluster_ip()
        } else {
            if given != "None" && self.cluster_ip_taken(&given, self_key) {
                return Err(ApiError::invalid(
                    Kind::Service,
                    name,
                    &format!(
                        "spec.clusterIPs: Invalid value: [{given:?}]: failed to allocate IP {given}: \
                         provided IP is already allocated"
                    ),
                ));
            }
            given
        };
        spec["clusterIP"] = ip.clone().into();
        spec["clusterIPs"] = json!([ip]);
        if spec.get("ipFamilies").is_none() {
            spec["ipFamilies"] = json!([if ip.contains(':') { "IPv6" } else { "IPv4" }]);
        }
        if spec.get("ipFamilyPolicy").is_none() {
            spec["ipFamilyPolicy"] = "SingleStack".into();
        }
        Ok(())
    }

    /// Whether a Service other than the one at `except_key` has `ip`.
    fn cluster_ip_taken(&self, ip: &str, except_key: &str) -> bool {
        self.cluster_ips
            .get(ip)
            .is_some_and(|key| key != except_key)
    }

    fn free_cluster_ip(&self) -> String {
        (u32::from(CLUSTER_IP_BASE)..)
            .map(|n| Ipv4Addr::from(n).to_string())
            .find(|ip| !self.cluster_ips.contains_key(ip))
            .unwrap_or_default()
    }

    fn allocate_node_ports(&self, spec: &mut Value, self_key: &str) {
        let mut used: BTreeSet<u64> = self
            .objects
            .iter()
            .filter(|((k, key), _)| *k == Kind::Service && key != self_key)
            .flat_map(|(_, o)| o["spec"]["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["nodePort"].as_u64())
            .collect();
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return;
        };
        used.extend(ports.iter().filter_map(|p| p["nodePort"].as_u64()));
        for p in ports.iter_mut().filter(|p| p.get("nodePort").is_none()) {
            if let Some(port) = NODE_PORTS.clone().find(|n| !used.contains(n)) {
                used.insert(port);
                p["nodePort"] = port.into();
            }
        }
    }
}

fn default_ports_protocol(ports: Option<&mut Value>) {
    if let Some(ports) = ports.and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.get("protocol").is_none()) {
            p["protocol"] = "TCP".into();
        }
    }
}

/// What the ServiceCIDR validation refuses that a client could send by
/// mistake: no ranges, or ranges changed after creation (ClusterIPs were
/// allocated from them).
fn validate_service_cidr(obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let (_, name) = ns_name(obj);
    let cidrs = obj.pointer("/spec/cidrs");
    if cidrs.and_then(Value::as_array).is_none_or(|c| c.is_empty()) {
        return Err(ApiError::invalid(
            Kind::ServiceCIDR,
            &name,
            "spec.cidrs: Required value",
        ));
    }
    if let Some(old) = old
        && old.pointer("/spec/cidrs") != cidrs
    {
        return Err(ApiError::invalid(
            Kind::ServiceCIDR,
            &name,
            "spec.cidrs: Invalid value: field is immutable",
        ));
    }
    Ok(())
}
