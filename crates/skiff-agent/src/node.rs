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
        NodeStatus {
            capacity: Some(q.clone()),
            allocatable: Some(q),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: self.internal_ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: self.name.clone() },
            ]),
            conditions: Some(vec![
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: self.labels.get("kubernetes.io/arch").cloned().unwrap_or_default(),
                operating_system: std::env::consts::OS.into(),
                kernel_version: self.kernel_version.clone(),
                os_image: self.os_image.clone(),
                kubelet_version: concat!("v1.32.0-skiff.", env!("CARGO_PKG_VERSION")).into(),
                kube_proxy_version: String::new(),
                container_runtime_version: "wasmtime://48.0.8".into(),
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
        let node = Node { metadata: ObjectMeta { name: Some(self.name.clone()), labels: Some(self.labels.clone()), ..Default::default() }, spec: None, status: None };
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
