//! Service address allocation: cluster IPs from the service CIDR and node ports from
//! their range, unique across the live Services (which are the allocation record).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use skiff_core::Cidr;

use crate::error::FieldError;

/// Addresses below this offset are only handed out on request (kube-dns takes .10), as
/// Kubernetes reserves a static band at the bottom of the range.
const DYNAMIC_START: u32 = 16;

pub struct InUse {
    ips: HashSet<String>,
    node_ports: HashSet<i64>,
}

impl InUse {
    pub fn from_services<'a>(services: impl Iterator<Item = &'a Value>) -> Self {
        let mut ips = HashSet::new();
        let mut node_ports = HashSet::new();
        for s in services {
            if let Some(ip) = s.pointer("/spec/clusterIP").and_then(Value::as_str) {
                ips.insert(ip.to_string());
            }
            for p in s.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                    node_ports.insert(n);
                }
            }
        }
        Self { ips, node_ports }
    }
}

/// Fills in (or checks) the cluster IP and node ports of a Service spec.
pub fn allocate(spec: &mut Value, cidr: Cidr, node_ports: (u16, u16), in_use: &InUse) -> Result<(), Vec<FieldError>> {
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    if kind == "ExternalName" {
        return Ok(());
    }
    let mut errs = Vec::new();
    match spec.get("clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some("None") => {}
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(addr) if !cidr.contains(addr) => errs.push(FieldError::invalid("spec.clusterIPs", ip, format!("failed to allocate IP {ip}: the provided IP is not in the valid range; the range of valid IPs is {cidr}"))),
            Ok(_) if in_use.ips.contains(ip) => errs.push(FieldError::invalid("spec.clusterIPs", ip, format!("failed to allocate IP {ip}: provided IP is already allocated"))),
            Ok(_) => {}
            Err(_) => errs.push(FieldError::invalid("spec.clusterIPs", ip, "must be a valid IP address")),
        },
        None => {
            let free = (DYNAMIC_START..cidr.size() - 1).map(|o| cidr.nth(o)).find(|ip| !in_use.ips.contains(&ip.to_string()));
            match free {
                Some(ip) => spec["clusterIP"] = json!(ip.to_string()),
                None => errs.push(FieldError::invalid("spec.clusterIPs", "", "range is full: no cluster IP left")),
            }
        }
    }
    if let Some(ip) = spec.get("clusterIP").cloned() {
        spec["clusterIPs"] = json!([ip]);
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        let mut taken = in_use.node_ports.clone();
        for (i, p) in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().enumerate() {
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(n) if !(i64::from(node_ports.0)..=i64::from(node_ports.1)).contains(&n) => errs.push(FieldError::invalid_number(
                    &format!("spec.ports[{i}].nodePort"), n,
                    format!("provided port is not in the valid range. The range of valid ports is {}-{}", node_ports.0, node_ports.1))),
                Some(n) if taken.contains(&n) => errs.push(FieldError::invalid_number(&format!("spec.ports[{i}].nodePort"), n, "provided port is already allocated")),
                Some(n) => {
                    taken.insert(n);
                }
                None => match (i64::from(node_ports.0)..=i64::from(node_ports.1)).find(|n| !taken.contains(n)) {
                    Some(n) => {
                        taken.insert(n);
                        p["nodePort"] = json!(n);
                    }
                    None => errs.push(FieldError::invalid(&format!("spec.ports[{i}].nodePort"), "", "range is full: no node port left")),
                },
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_addresses() {
        let cidr: Cidr = "10.43.0.0/16".parse().unwrap();
        let existing = [json!({"spec": {"clusterIP": "10.43.0.16", "ports": [{"nodePort": 30000}]}})];
        let in_use = InUse::from_services(existing.iter());
        let mut spec = json!({"type": "NodePort", "ports": [{"port": 80}]});
        allocate(&mut spec, cidr, (30000, 32767), &in_use).unwrap();
        assert_eq!(spec["clusterIP"], "10.43.0.17");
        assert_eq!(spec["ports"][0]["nodePort"], 30001);
        let mut taken = json!({"clusterIP": "10.43.0.16", "ports": [{"port": 80}]});
        assert!(allocate(&mut taken, cidr, (30000, 32767), &in_use).is_err());
        let mut outside = json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]});
        assert!(allocate(&mut outside, cidr, (30000, 32767), &in_use).is_err());
        assert!("10.43.0.0".parse::<Cidr>().is_err());
    }
}
