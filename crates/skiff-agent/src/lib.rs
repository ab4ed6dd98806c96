//! Skiff's node agent (its kubelet): registers the node, renews its lease and makes the
//! pods bound to it real, running Wasm containers in wasmtime and OCI containers with
//! crun or runc ([`runtime`]). Hollow nodes simulate
//! many agents in one process for tests and benchmarks at cluster scale (kubemark).
//!
//! [`run`] is the agent: it watches the pods bound to its node and gives each a
//! [`worker`]; the workers share the [`Agent`] (runtime, images, watches of ConfigMaps
//! and Secrets, log and volume directories) and the agent's HTTPS endpoint ([`server`])
//! serves their logs and usage.

pub mod attach;
pub mod channels;
pub mod env;
pub mod exec;
pub mod hollow;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod pod_dns;
pub mod port_forward;
pub mod port_forward_websocket;
pub mod registries;
pub mod node;
pub mod node_certificates;
pub mod probes;
pub mod referenced;
pub mod runtime;
pub mod server;
pub mod serving_certificate;
pub mod service_account_tokens;
pub mod spdy;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::env::{ConfigSources, PodFacts};
use crate::logs::LogDir;
use crate::node::{LEASE_RENEW_INTERVAL, Machine, NodeRegistration, OCI_RUNTIME_LABEL, WASM_RUNTIME_LABEL, WASM_RUNTIME_VERSION};
use crate::runtime::Usage;
use crate::runtime::wasm::{WasmConfig, WasmRuntime};
use crate::volumes::VolumeRoots;

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's InternalIP: where the API server reaches the agent.
    pub node_ip: String,
    pub data_dir: PathBuf,
    /// Pods the node accepts (`status.allocatable.pods`). Wasm pods are cheap.
    pub max_pods: u32,
    /// Wasm guests that may run at once (pooling allocator slots).
    pub max_instances: u32,
    /// How registries are reached: mirrors, the cluster's registry, plain HTTP ones.
    pub registries: registries::Registries,
    /// Port of the agent's HTTPS endpoint (0: any free port).
    pub port: u16,
    /// The bearer token callers of the agent's endpoint may present (the API server's);
    /// empty: none is taken.
    pub token: String,
    /// The cluster CA (DER): a caller presenting the API server's client certificate
    /// ([`server::API_SERVER_CLIENT`]) signed by it is let in without a token.
    pub cluster_ca: Vec<Vec<u8>>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Taints the Node is registered with.
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The cluster DNS pods resolve names through (none: the host's resolver).
    pub cluster_dns: Option<pod_dns::ClusterDns>,
    /// The HTTP requests the node's proxy and ingress sent to each endpoint, reported in
    /// the stats summary.
    pub proxied_requests: std::sync::Arc<skiff_core::request_counts::RequestCounts>,
    /// The pods here that are ready, told to the node's proxy as they become so.
    pub ready_pods: std::sync::Arc<skiff_client::local_pods::LocalReadyPods>,
    /// The parts beside the agent whose metrics its `/metrics` serves too, each as the
    /// function that registers them (the node's service proxy's).
    pub metrics_of: Vec<fn(&mut prometheus_client::registry::Registry)>,
}

/// What every pod worker of the node shares.
pub struct Agent {
    pub client: Client,
    pub config: AgentConfig,
    pub runtimes: runtime::Runtimes,
    pub images: images::ImageStore,
    pub logs: LogDir,
    pub volumes: VolumeRoots,
    pub sources: ConfigSources,
    /// The ServiceAccount tokens of the pods' projected volumes.
    pub tokens: service_account_tokens::ServiceAccountTokens,
    /// The cluster's RuntimeClasses, for pods that name one.
    runtime_classes: kube::runtime::reflector::Store<k8s_openapi::api::node::v1::RuntimeClass>,
    pub recorder: skiff_client::events::Recorder,
    pub machine: Machine,
    /// Per pod uid: namespace, name and each container's usage.
    usage: Mutex<HashMap<String, PodUsage>>,
    /// Container runs whose guest is running: (uid, container, run).
    running: Mutex<HashSet<(String, String, i32)>>,
    /// Pod addresses; set up once the node has its pod range, before any pod runs.
    network: std::sync::OnceLock<network::PodNetwork>,
    /// Running containers, for exec.
    pub exec: Arc<exec::ExecTargets>,
    /// Per pod uid: the latest object its worker sees, and the worker.
    pods: Mutex<HashMap<String, (watch::Sender<Arc<Pod>>, tokio::task::JoinHandle<()>)>>,
}

/// A pod's containers' usage, for the stats endpoint.
#[derive(Clone)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub containers: BTreeMap<String, Arc<Usage>>,
}

impl Agent {
    /// What a pod's environment and downward API may refer to.
    pub fn facts<'a>(&'a self, pod: &'a Pod) -> PodFacts<'a> {
        PodFacts {
            pod,
            pod_ip: self.pod_ip(pod),
            host_ip: &self.config.node_ip,
            node_cpu_milli: self.machine.cpus as i64 * 1000,
            node_memory: self.machine.memory_bytes as i64,
        }
    }

    fn network(&self) -> &network::PodNetwork {
        self.network.get().expect("pods run only once the pod network is set up")
    }

    /// The pod's IP, once [`Agent::assign_pod_ip`] gave it one ("" before).
    pub fn pod_ip(&self, pod: &Pod) -> String {
        self.network().get(&pod.uid().unwrap_or_default()).map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Gives the pod its IP: the one it had if still free (after an agent restart), else
    /// the next free one of the node's range.
    pub fn assign_pod_ip(&self, pod: &Pod) -> Result<String, String> {
        let previous = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
        self.network().assign(&pod.uid().unwrap_or_default(), previous).map(|ip| ip.to_string())
    }

    fn track_usage(&self, pod: &Pod, container: &str, usage: Arc<Usage>) {
        let mut all = self.usage.lock().unwrap();
        let entry = all.entry(pod.uid().unwrap_or_default()).or_insert_with(|| PodUsage {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            containers: BTreeMap::new(),
        });
        entry.containers.insert(container.to_string(), usage);
    }

    /// Usage of every pod on the node.
    pub fn usage(&self) -> Vec<PodUsage> {
        self.usage.lock().unwrap().values().cloned().collect()
    }

    fn set_running(&self, uid: &str, container: &str, run: i32, running: bool) {
        let key = (uid.to_string(), container.to_string(), run);
        let mut set = self.running.lock().unwrap();
        if running {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// Whether run `run` of a container is still going (a followed log may grow).
    pub fn is_running(&self, uid: &str, container: &str, run: i32) -> bool {
        self.running.lock().unwrap().contains(&(uid.to_string(), container.to_string(), run))
    }

    /// Hands a new or changed pod to its worker, starting one for a new pod.
    fn pod_changed(self: &Arc<Self>, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        let mut pods = self.pods.lock().unwrap();
        match pods.get(&uid) {
            Some((tx, _)) => {
                tx.send_replace(Arc::new(pod));
            }
            None => {
                // What a pod names cannot change once it exists: watched from now on.
                self.sources.hold(&pod);
                let (tx, rx) = watch::channel(Arc::new(pod));
                let worker = tokio::spawn(worker::run(self.clone(), rx));
                pods.insert(uid, (tx, worker));
            }
        }
    }

    /// The pod is gone from the API: stop its worker (and so its guests) and remove
    /// what it left on the node.
    fn pod_gone(&self, uid: &str) {
        let Some((tx, worker)) = self.pods.lock().unwrap().remove(uid) else { return };
        worker.abort();
        let pod = tx.borrow().clone();
        self.sources.release(&pod);
        self.usage.lock().unwrap().remove(uid);
        if let Some(oci) = self.runtimes.oci.clone() {
            let uid = uid.to_string();
            tokio::task::spawn_blocking(move || oci.remove_pod(&uid));
        }
        self.network().release(uid);
        self.volumes.clean_up(uid);
        self.tokens.forget(uid);
        let dir = self.logs.pod_dir(&pod.namespace().unwrap_or_default(), &pod.name_any(), uid);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Removes volumes, logs and containers of pods deleted while the agent was not
    /// running.
    fn clean_up_leftovers(&self, live: &HashSet<String>) {
        if let Some(oci) = self.runtimes.oci.clone() {
            let live = live.clone();
            tokio::task::spawn_blocking(move || oci.remove_leftovers(&live));
        }
        // Both roots: a pod whose volumes are all in memory (its credentials alone) has
        // nothing in the other.
        let roots = [&self.volumes.root, &self.volumes.memory_root];
        for entry in roots.into_iter().flat_map(std::fs::read_dir).flatten().flatten() {
            let uid = entry.file_name().to_string_lossy().to_string();
            if !live.contains(&uid) {
                self.volumes.clean_up(&uid);
            }
        }
        for entry in self.logs.pod_dirs() {
            let name = entry.file_name().unwrap_or_default().to_string_lossy().to_string();
            if name.rsplit('_').next().is_none_or(|uid| !live.contains(uid)) {
                let _ = std::fs::remove_dir_all(&entry);
            }
        }
    }

    /// The RuntimeClass handler the pod asks for through `runtimeClassName`, if any.
    pub fn runtime_handler(&self, pod: &Pod) -> Result<Option<String>, String> {
        let Some(name) = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone()) else { return Ok(None) };
        match self.runtime_classes.get(&kube::runtime::reflector::ObjectRef::new(&name)) {
            Some(class) => Ok(Some(class.handler.clone())),
            None => Err(format!("RuntimeClass {name:?} not found")),
        }
    }

    /// Removes the images (and container layers) no pod of the node uses: kubelet's image
    /// garbage collection, all unused images at once rather than the least recently used
    /// first.
    fn remove_unused_images(&self) {
        let in_use: HashSet<String> = self.pods.lock().unwrap().values()
            .flat_map(|(tx, _)| {
                let spec = tx.borrow().spec.clone().unwrap_or_default();
                spec.containers.into_iter().chain(spec.init_containers.into_iter().flatten()).filter_map(|c| c.image).collect::<Vec<_>>()
            })
            .collect();
        let (removed, layers) = self.images.remove_unused(&in_use);
        let layers_removed = self.runtimes.oci.as_ref().map_or(0, |oci| oci.layers.remove_unused(&layers));
        tracing::info!(images = removed, layers = layers_removed, "disk use is high: removed images no pod uses");
    }

    /// The pod with this namespace and name that the agent runs, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.lock().unwrap().values().map(|(tx, _)| tx.borrow().clone()).find(|p| p.namespace().as_deref() == Some(namespace) && p.name_any() == name)
    }
}

/// For the agent's owner to call as it stops: container pods keep running (as kubelet's
/// do when it stops), for the next agent on the same data directory to adopt; no new
/// one starts, and the network namespaces made ahead go. Says how many run on, if any.
/// Blocking.
pub fn leave_containers(data_dir: &std::path::Path) {
    runtime::oci::STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    runtime::oci::sandbox::remove_made_ahead(&data_dir.join("oci").join("sandboxes"));
    let running = std::fs::read_dir(data_dir.join("oci").join("containers")).map(|d| d.count()).unwrap_or(0);
    if running > 0 {
        println!("{running} container(s) keep running for the next agent on {} to adopt; `skiff killall --data-dir {}` stops them", data_dir.display(), data_dir.display());
    }
}

/// Stops every container the agent whose data directory is `data_dir` left running and
/// removes what they held (mounts, namespaces, routes): `skiff killall`, once the agent
/// has stopped. Blocking.
pub fn stop_containers(data_dir: &std::path::Path) {
    runtime::oci::STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    runtime::oci::remove_all(&data_dir.join("oci"));
}

/// Runs the agent until it fails to start; it then runs for good.
pub async fn run(client: Client, config: AgentConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let machine = Machine::read(&config.data_dir);
    let runtime = WasmRuntime::new(&WasmConfig {
        max_instances: config.max_instances,
        // One guest may use up to the machine's memory, within wasm32's 4 GiB.
        max_memory_bytes: machine.memory_bytes.clamp(64 << 20, 4 << 30),
        cache_dir: config.data_dir.join("compiled"),
        threads: machine.cpus,
    })
    .context("starting the Wasm runtime")?;
    let images = images::ImageStore::open(config.data_dir.join("images"), config.registries.clone()).context("opening the image store")?;
    let oci = match runtime::oci::OciRuntime::detect(&config.data_dir.join("oci")) {
        Ok(oci) => {
            tracing::info!(runtime = %oci.version(), "OCI containers run here");
            let oci = Arc::new(oci);
            images.set_layer_sink(oci.clone());
            Some(oci)
        }
        Err(why) => {
            tracing::warn!(%why, "this node runs Wasm pods only");
            None
        }
    };
    let services = skiff_client::SharedInformer::new(Api::<k8s_openapi::api::core::v1::Service>::all(client.clone()));
    let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sources = ConfigSources {
        config_maps: Arc::new(referenced::Referenced::new(client.clone(), changes.clone())),
        secrets: Arc::new(referenced::Referenced::new(client.clone(), changes.clone())),
        services: services.store(),
        changes,
    };
    tokio::spawn(services.run());
    let runtime_classes = skiff_client::SharedInformer::new(Api::<k8s_openapi::api::node::v1::RuntimeClass>::all(client.clone()));
    let runtime_classes_store = runtime_classes.store();
    tokio::spawn(runtime_classes.run());
    let agent = Arc::new(Agent {
        recorder: skiff_client::events::Recorder::new(client.clone(), "kubelet"),
        client: client.clone(),
        logs: LogDir::new(config.data_dir.join("logs")),
        volumes: VolumeRoots::new(&config.data_dir),
        config,
        runtimes: runtime::Runtimes { wasm: runtime, oci },
        images,
        sources,
        tokens: service_account_tokens::ServiceAccountTokens::new(client.clone()),
        runtime_classes: runtime_classes_store,
        machine,
        usage: Mutex::default(),
        running: Mutex::default(),
        exec: Arc::default(),
        pods: Mutex::default(),
        network: Default::default(),
    });
    let (port, certificate, serving) = server::start(agent.clone()).await.context("starting the agent's HTTPS endpoint")?;
    let mut registration = registration(&agent, port);
    let node = registration.register(&client).await.with_context(|| format!("registering node {}", registration.name))?;
    tracing::info!(node = %registration.name, port, "node registered");
    let network = network::PodNetwork::set_up(pod_cidr(&client, &registration.name).await);
    registration.network = Some(network.condition());
    let node = registration.report_status(&client).await.unwrap_or(node);
    // Asked for once the Node's status carries the address the certificate names.
    tokio::spawn(serving_certificate::keep(agent.clone(), certificate));
    let routed = network.fallback.is_none();
    if let Some(oci) = &agent.runtimes.oci {
        oci.set_network(network.range, network.fallback.clone());
    }
    let _ = agent.network.set(network);
    if routed {
        tokio::spawn(network::route_other_nodes(client.clone(), registration.name.clone()));
    }
    let _ = tokio::join!(
        agent.sources.services.wait_until_ready(),
        agent.runtime_classes.wait_until_ready()
    );
    tokio::select! {
        _ = keep_alive(agent.clone(), registration, node) => {}
        _ = run_pods(agent) => {}
        r = serving => r.context("the agent's HTTPS endpoint")??,
    }
    Ok(())
}

/// The node's share of the pod range, given by the node IPAM controller soon after the
/// node registers.
async fn pod_cidr(client: &Client, node: &str) -> Result<skiff_core::Cidr, String> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for _ in 0..100 {
        if let Ok(n) = api.get(node).await
            && let Some(cidr) = n.spec.and_then(|s| s.pod_cidr)
        {
            return cidr.parse().map_err(|e| format!("the node's podCIDR {cidr:?}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the control plane gave the node no podCIDR within 10 s".into())
}

fn registration(agent: &Agent, port: u16) -> NodeRegistration {
    let c = &agent.config;
    let m = &agent.machine;
    let mut labels = NodeRegistration::standard_labels(&c.node_name);
    labels.insert(WASM_RUNTIME_LABEL.into(), "true".into());
    let mut runtime_version = WASM_RUNTIME_VERSION.to_string();
    if let Some(oci) = &agent.runtimes.oci {
        labels.insert(OCI_RUNTIME_LABEL.into(), oci.name().into());
        runtime_version = format!("{runtime_version},{}", oci.version());
    }
    labels.extend(c.labels.clone());
    NodeRegistration {
        name: c.node_name.clone(),
        labels,
        capacity: BTreeMap::from([
            ("cpu".to_string(), m.cpus.to_string()),
            ("memory".to_string(), format!("{}Ki", m.memory_bytes / 1024)),
            ("ephemeral-storage".to_string(), format!("{}Ki", m.disk_bytes / 1024)),
            ("pods".to_string(), c.max_pods.to_string()),
        ]),
        internal_ip: c.node_ip.clone(),
        kernel_version: m.kernel_version.clone(),
        os_image: m.os_image.clone(),
        runtime_version,
        agent_port: Some(port),
        pressure: Machine::pressure(&c.data_dir),
        network: None,
        taints: c.taints.clone(),
    }
}

/// Disk use of the data directory's filesystem at which unused images are removed
/// (kubelet's `imageGCHighThresholdPercent`).
const IMAGE_GC_HIGH_PERCENT: u64 = 85;

/// Renews the lease every 10 s (removing unused images when the disk fills up); reports
/// the node's status when its pressure changes,
/// when something else marked it not ready, and at least every minute.
async fn keep_alive(agent: Arc<Agent>, mut registration: NodeRegistration, mut node: k8s_openapi::api::core::v1::Node) {
    let mut last_report = tokio::time::Instant::now();
    loop {
        if let Err(e) = node::renew_lease(&agent.client, &node).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        tokio::time::sleep(LEASE_RENEW_INTERVAL).await;
        let pressure = Machine::pressure(&agent.config.data_dir);
        if node::disk_used_percent(&agent.config.data_dir) >= IMAGE_GC_HIGH_PERCENT {
            agent.remove_unused_images();
        }
        let current = Api::<k8s_openapi::api::core::v1::Node>::all(agent.client.clone()).get_opt(&registration.name).await;
        let gone = matches!(current, Ok(None));
        let not_ready = matches!(&current, Ok(Some(n)) if skiff_client::nodes::ready_status(n) != Some("True"));
        if gone {
            // Deleted from the API: register again, as kubelets do.
            match registration.register(&agent.client).await {
                Ok(n) => node = n,
                Err(e) => tracing::warn!(error = %e, "registering the node again"),
            }
            continue;
        }
        if pressure != registration.pressure || not_ready || last_report.elapsed() >= Duration::from_secs(60) {
            registration.pressure = pressure;
            match registration.report_status(&agent.client).await {
                Ok(n) => {
                    node = n;
                    last_report = tokio::time::Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "reporting node status"),
            }
        }
    }
}

/// Watches the pods bound to this node and keeps one worker per pod.
async fn run_pods(agent: Arc<Agent>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let selector = format!("spec.nodeName={}", agent.config.node_name);
    let mut events = watcher(api, watcher::Config::default().fields(&selector)).default_backoff().modify(skiff_client::without_managed_fields).boxed();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list = true;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watching the node's pods");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) => {
                listed.insert(pod.uid().unwrap_or_default());
                agent.pod_changed(pod);
            }
            watcher::Event::Apply(pod) => agent.pod_changed(pod),
            watcher::Event::Delete(pod) => agent.pod_gone(&pod.uid().unwrap_or_default()),
            watcher::Event::InitDone => {
                // Pods that went while the watch was down.
                let gone: Vec<String> = agent.pods.lock().unwrap().keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
                for uid in gone {
                    agent.pod_gone(&uid);
                }
                if std::mem::take(&mut first_list) {
                    agent.clean_up_leftovers(&listed);
                }
            }
        }
    }
}
