//! The Node object an agent keeps for its node, and the Lease it renews in
//! `kube-node-lease` to say it is alive.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// How long a lease stays valid; the node lifecycle controller's grace period.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often agents renew their lease.
pub const LEASE_RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The label a node carries for each runtime it offers.
pub const WASM_RUNTIME_LABEL: &str = "skiff.dev/runtime-wasm";
/// The label a node that runs OCI containers carries (with the runtime's name as value).
pub const OCI_RUNTIME_LABEL: &str = "skiff.dev/runtime-oci";
/// The Wasm runtime as `nodeInfo.containerRuntimeVersion` names it.
pub const WASM_RUNTIME_VERSION: &str = "wasmtime://48.0.8";

/// What an agent says about its node.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `cpu`, `memory`, `ephemeral-storage`, `pods`, … as quantities.
    pub capacity: BTreeMap<String, String>,
    pub internal_ip: String,
    pub kernel_version: String,
    pub os_image: String,
    /// `nodeInfo.containerRuntimeVersion`: every runtime the node offers.
    pub runtime_version: String,
    /// Port of the agent's own HTTPS endpoint (logs, stats), if it serves one.
    pub agent_port: Option<u16>,
    pub pressure: Pressure,
    /// How pods are addressed (the `NetworkUnavailable=False` condition's reason and
    /// message), once the agent has set up the pod network.
    pub network: Option<(String, String)>,
    /// Taints the Node is created with (kubelet's `--register-with-taints`); an existing
    /// Node's taints are left as they are, as kubelet leaves them.
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
}

/// Which resources of the machine are short (the node's pressure conditions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// What the agent reads off the machine it runs on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
}

/// How full the filesystem holding `dir` is, in percent (0 when unknown).
pub fn disk_used_percent(dir: &std::path::Path) -> u64 {
    rustix::fs::statvfs(dir).ok().filter(|s| s.f_blocks > 0).map_or(0, |s| 100 - s.f_bavail * 100 / s.f_blocks)
}

impl Machine {
    /// Reads the machine; `data_dir` is where the node keeps pods' files (its
    /// ephemeral storage).
    pub fn read(data_dir: &std::path::Path) -> Machine {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory_bytes = meminfo("MemTotal:").unwrap_or(0);
        let disk_bytes = rustix::fs::statvfs(data_dir).map(|s| s.f_blocks * s.f_frsize).unwrap_or(0);
        let kernel_version = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        Machine { cpus, memory_bytes, disk_bytes, kernel_version, os_image }
    }

    /// Pressure as kubelet's default hard eviction thresholds define it: less than
    /// 100 MiB of memory available, less than 10% of the disk free, more than 90% of
    /// the PID space in use.
    pub fn pressure(data_dir: &std::path::Path) -> Pressure {
        let memory = meminfo("MemAvailable:").is_some_and(|a| a < 100 << 20);
        // Under a tenth of the disk left.
        let disk = disk_used_percent(data_dir) > 90;
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u64::MAX);
        let processes = std::fs::read_dir("/proc").map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count() as u64).unwrap_or(0);
        Pressure { memory, disk, pid: processes * 10 > pid_max * 9 }
    }
}

/// The machine's CPU time spent busy (every state but idle and iowait) since boot, in
/// nanoseconds, from the first line of `/proc/stat`: what kubelet reports as the node's
/// `usageCoreNanoSeconds`, so a rate over two readings is the node's CPU use.
pub fn cpu_busy_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_nanos(stat.lines().next()?, rustix::param::clock_ticks_per_second())
}

fn busy_nanos(cpu_line: &str, ticks_per_second: u64) -> Option<u64> {
    let fields: Vec<u64> = cpu_line.strip_prefix("cpu ")?.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Some(busy * 1_000_000_000 / ticks_per_second.max(1))
}

/// The machine's memory in use (total less available), as kubelet's node working set.
pub fn memory_in_use() -> Option<u64> {
    Some(meminfo("MemTotal:")?.saturating_sub(meminfo("MemAvailable:")?))
}

fn meminfo(key: &str) -> Option<u64> {
    proc_bytes("/proc/meminfo", key)
}

/// A `key: N kB` line of a /proc file (`/proc/meminfo`, `/proc/PID/status`), in bytes.
pub fn proc_bytes(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kib: u64 = text.lines().find_map(|l| l.strip_prefix(key))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

impl NodeRegistration {
    /// The well-known labels every node carries.
    pub fn standard_labels(name: &str) -> BTreeMap<String, String> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), std::env::consts::OS.to_string()),
            ("kubernetes.io/arch".to_string(), arch.to_string()),
            ("beta.kubernetes.io/os".to_string(), std::env::consts::OS.to_string()),
            ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
        ])
    }

    /// The node's status as the agent reports it: capacity, addresses, and conditions
    /// saying it is ready with no pressure.
    pub fn status(&self) -> NodeStatus {
        let q: BTreeMap<String, Quantity> = self.capacity.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect();
        let now = skiff_client::now();
        let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        };
        let p = self.pressure;
        NodeStatus {
            daemon_endpoints: self.agent_port.map(|port| k8s_openapi::api::core::v1::NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: port.into() }),
            }),
            capacity: Some(q.clone()),
            allocatable: Some(q),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: self.internal_ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: self.name.clone() },
            ]),
            conditions: Some(self.network.iter().map(|(reason, message)| condition("NetworkUnavailable", "False", reason, message)).chain([
                if p.memory {
                    condition("MemoryPressure", "True", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
                } else {
                    condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available")
                },
                if p.disk {
                    condition("DiskPressure", "True", "KubeletHasDiskPressure", "kubelet has disk pressure")
                } else {
                    condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure")
                },
                if p.pid {
                    condition("PIDPressure", "True", "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
                } else {
                    condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available")
                },
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ]).collect()),
            node_info: Some(NodeSystemInfo {
                architecture: self.labels.get("kubernetes.io/arch").cloned().unwrap_or_default(),
                operating_system: std::env::consts::OS.into(),
                kernel_version: self.kernel_version.clone(),
                os_image: self.os_image.clone(),
                kubelet_version: concat!("v1.32.0-skiff.", env!("CARGO_PKG_VERSION")).into(),
                kube_proxy_version: String::new(),
                container_runtime_version: self.runtime_version.clone(),
                boot_id: String::new(),
                machine_id: String::new(),
                system_uuid: String::new(),
                swap: None,
                running_in_user_namespace: None,
            }),
            ..Default::default()
        }
    }

    /// Creates the Node, or brings an existing one's labels and status up to date.
    pub async fn register(&self, client: &Client) -> Result<Node, kube::Error> {
        let api: Api<Node> = Api::all(client.clone());
        let spec = (!self.taints.is_empty()).then(|| k8s_openapi::api::core::v1::NodeSpec { taints: Some(self.taints.clone()), ..Default::default() });
        let node = Node { metadata: ObjectMeta { name: Some(self.name.clone()), labels: Some(self.labels.clone()), ..Default::default() }, spec, status: None };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                api.patch(&self.name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": self.labels}}))).await?;
            }
            Err(e) => return Err(e),
        }
        self.report_status(client).await
    }

    /// Writes the node's status (the agent's heartbeat).
    pub async fn report_status(&self, client: &Client) -> Result<Node, kube::Error> {
        let api: Api<Node> = Api::all(client.clone());
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": self.status()}))).await
    }
}

/// Renews (creating if needed) the node's Lease, owned by its Node so it goes with it.
pub async fn renew_lease(client: &Client, node: &Node) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let name = node.name_any();
    let now = MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({"spec": {"renewTime": now, "holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS}});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node.uid().unwrap_or_default(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec { holder_identity: Some(name), lease_duration_seconds: Some(LEASE_DURATION_SECONDS), renew_time: Some(now), ..Default::default() }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_cpu_time_leaves_out_idle_and_iowait() {
        // user 100, nice 10, system 50, idle 1000, iowait 40, irq 5, softirq 5, steal 0, guest 7.
        let line = "cpu  100 10 50 1000 40 5 5 0 7 0";
        assert_eq!(super::busy_nanos(line, 100), Some(170 * 10_000_000));
        assert_eq!(super::busy_nanos("intr 1 2", 100), None);
        assert!(super::cpu_busy_nanos().is_some_and(|n| n > 0));
    }
}
