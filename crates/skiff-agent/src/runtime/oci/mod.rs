//! OCI containers, run with crun or runc (Debian's, found on PATH; crun preferred).
//!
//! [`OciRuntime::prepare`] unpacks an image's layers (all at once, off the async threads,
//! once per digest: [`layers`]); [`Prepared::start`] gives the run its pod's sandbox
//! ([`sandbox`]), a root over the layers ([`rootfs`]: overlayfs, else a copy), and a runtime spec ([`spec`]), then
//! has a [`shim`] run it: the shim holds the container's output and status, so containers
//! outlive the agent. The agent waits for the shim through a pidfd, reads the memory
//! cgroup's OOM kill count, then deletes the container.
//!
//! Containers keep running when the agent stops (as kubelet's do); the next agent on the
//! same data directory adopts each run whose pod is still bound to it
//! ([`OciRuntime::adopt`]), and removes the rest. [`remove_all`] stops every one
//! (`skiff killall`).

pub mod image_config;
pub mod layers;
mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;

use crate::images::{ImageKind, ImageStore, LocalImage};
use crate::runtime::{Exec, ExecIo, Exit, Launch, Prepared, Running, StartError, Usage};
use image_config::ImageDefaults;
use layers::{Compression, LayerStore};
use sandbox::{SandboxSpec, Sandboxes};

/// The cgroup (under every v1 hierarchy) holding the node's container pods.
const CGROUP_PARENT: &str = "skiff";
/// Set as the agent stops: no container starts any more, and the running ones are left
/// running.
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// How often a running container's CPU and memory are read from its cgroup.
const STATS_PERIOD: Duration = Duration::from_secs(2);

/// The node's OCI runtime.
pub struct OciRuntime {
    binary: &'static str,
    version: String,
    /// Where the runtime keeps its state (`--root`), apart from other users of it.
    state: PathBuf,
    containers: PathBuf,
    pub layers: Arc<LayerStore>,
    sandboxes: PathBuf,
    /// The pods' sandboxes, once the node has its pod range on the bridge; else why not.
    network: std::sync::OnceLock<Result<Sandboxes, String>>,
    /// Makes each container run's id unique, across agent restarts too.
    runs: AtomicU64,
    /// Runs a previous agent left, by pod uid and container name, until adopted or removed.
    leftovers: Mutex<HashMap<(String, String), Leftover>>,
}

impl OciRuntime {
    /// The node's OCI runtime under `dir`, or why it has none: crun (after moving the
    /// `hugetlb` controller to a v1 hierarchy where the host's cgroups are hybrid, which
    /// crun refuses) else runc; both need root and the CNI plugins.
    pub fn detect(dir: &Path) -> Result<OciRuntime, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("containers need the agent to run as root".into());
        }
        if !Path::new(sandbox::CNI_BIN).join("bridge").exists() {
            return Err(format!("no CNI plugins in {} (Debian's containernetworking-plugins)", sandbox::CNI_BIN));
        }
        let version = |binary: &str| {
            let out = std::process::Command::new(binary).arg("--version").output().ok().filter(|o| o.status.success())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.lines().next()?.split_whitespace().nth(2).map(|v| v.split('+').next().unwrap_or(v).to_string())
        };
        let binary = match (version("crun"), version("runc")) {
            (Some(v), runc) => match hugetlb_on_v1() {
                Ok(()) => ("crun", v),
                Err(why) => match runc {
                    Some(r) => {
                        tracing::warn!(%why, "crun cannot run here; using runc");
                        ("runc", r)
                    }
                    None => return Err(format!("crun cannot run here ({why}), and runc is not installed")),
                },
            },
            (None, Some(v)) => ("runc", v),
            (None, None) => return Err("neither crun nor runc is installed".into()),
        };
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let containers = dir.join("containers");
        for d in [&containers, &dir.join("state")] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let runtime = OciRuntime {
            binary: binary.0,
            version: binary.1,
            state: dir.join("state"),
            containers,
            layers: Arc::new(LayerStore::open(dir.join("layers")).map_err(|e| e.to_string())?),
            sandboxes: dir.join("sandboxes"),
            network: std::sync::OnceLock::new(),
            runs: AtomicU64::new(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)),
            leftovers: Mutex::default(),
        };
        runtime.find_leftovers(dir);
        std::fs::write(dir.join("runtime"), runtime.binary).map_err(|e| e.to_string())?;
        Ok(runtime)
    }

    /// The runs a previous agent left, to adopt; those that cannot be (no record, no shim
    /// and no status) are removed, as are a second run of one container. Blocking.
    fn find_leftovers(&self, dir: &Path) {
        let previous = std::fs::read_to_string(dir.join("runtime")).ok();
        let mut leftovers = self.leftovers.lock().unwrap();
        for entry in std::fs::read_dir(&self.containers).into_iter().flatten().flatten() {
            let bundle = entry.path();
            // A run of another runtime (crun was replaced by runc) cannot be adopted.
            let adoptable = if previous.as_deref() == Some(self.binary) { Leftover::find(&bundle) } else { None };
            match adoptable {
                Some(run) if !leftovers.contains_key(&run.key()) => {
                    leftovers.insert(run.key(), run);
                }
                _ => {
                    let id = entry.file_name().to_string_lossy().to_string();
                    tracing::info!(container = %id, "removing a container a previous agent left");
                    remove_container(previous.as_deref().unwrap_or(self.binary), &self.state, &id, &bundle, None);
                }
            }
        }
    }

    /// Gives container pods the node's pod network: addresses from `range` on the bridge,
    /// unless the node fell back to loopback addresses (`fallback` says why).
    pub fn set_network(&self, range: skiff_core::Cidr, fallback: Option<String>) {
        let network = match fallback {
            None => Ok(Sandboxes::new(self.sandboxes.clone(), range)),
            Some(why) => Err(format!("container pods need the {} bridge, which this node could not set up: {why}", crate::network::BRIDGE)),
        };
        let _ = self.network.set(network);
    }

    fn sandboxes(&self) -> Result<&Sandboxes, String> {
        self.network.get().ok_or_else(|| "the pod network is not set up yet".to_string())?.as_ref().map_err(Clone::clone)
    }

    /// The runtime's RuntimeClass handler name.
    pub fn name(&self) -> &'static str {
        self.binary
    }

    /// What the Node reports as `nodeInfo.containerRuntimeVersion`.
    pub fn version(&self) -> String {
        format!("{}://{}", self.binary, self.version)
    }

    /// Unpacks the image's layers (each at most once, all at once) and reads its config.
    pub async fn prepare(self: &Arc<Self>, images: &ImageStore, image: &LocalImage) -> Result<Arc<dyn Prepared>, StartError> {
        let ImageKind::Container { config_digest, layers } = &image.kind else {
            return Err(StartError("not a container image".into()));
        };
        let config = tokio::fs::read(images.blob_path(config_digest)).await.map_err(|e| StartError(format!("reading the image config: {e}")))?;
        let defaults = image_config::defaults(&config).map_err(StartError)?;
        let unpacks = layers.iter().map(|layer| {
            let (this, digest, blob) = (self.clone(), layer.digest.clone(), images.blob_path(&layer.digest));
            let compression = Compression::of(&layer.media_type);
            async move {
                let compression = compression.ok_or_else(|| format!("layer {digest} cannot be unpacked here"))?;
                tokio::task::spawn_blocking(move || this.layers.ensure(&digest, compression, &blob)).await.map_err(|e| e.to_string())?
            }
        });
        let dirs = futures::future::try_join_all(unpacks).await.map_err(StartError)?;
        Ok(Arc::new(OciPrepared { runtime: self.clone(), layers: dirs, defaults }))
    }

    /// Removes what a pod's containers left: runs a previous agent left and no worker
    /// adopted, its sandbox and its cgroups. Blocking.
    pub fn remove_pod(&self, uid: &str) {
        let unadopted: Vec<Leftover> = self.leftovers.lock().unwrap().extract_if(|(u, _), _| u == uid).map(|(_, l)| l).collect();
        for l in unadopted {
            remove_container(self.binary, &self.state, &l.id, &l.bundle, None);
        }
        if let Ok(sandboxes) = self.sandboxes() {
            sandboxes.remove(uid);
        }
        for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let pod = controller.path().join(CGROUP_PARENT).join(uid);
            // Empty cgroups are removed with rmdir, children first.
            for child in std::fs::read_dir(&pod).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(&pod);
        }
    }

    fn command(&self) -> tokio::process::Command {
        runtime_command(self.binary, &self.state).into()
    }
}

/// The runtime's command line, with its state kept apart from other users of it.
fn runtime_command(binary: &str, state: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(binary);
    c.arg("--root").arg(state);
    c
}

/// Stops and removes every container and sandbox of the agent whose OCI directory is
/// `dir` (`skiff killall`, after the agent has stopped), so no container, mount,
/// namespace or route is left. Blocking.
pub fn remove_all(dir: &Path) {
    let Ok(binary) = std::fs::read_to_string(dir.join("runtime")) else { return };
    let state = dir.join("state");
    for entry in std::fs::read_dir(dir.join("containers")).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().to_string();
        tracing::info!(container = %id, "removing a container");
        remove_container(&binary, &state, &id, &entry.path(), None);
    }
    let sandboxes = dir.join("sandboxes");
    for uid in sandbox::leftovers(&sandboxes) {
        sandbox::tear_down(&sandboxes, &uid);
    }
}

/// crun refuses a hybrid cgroup layout where `hugetlb` sits on the v2 mount: moves it to
/// a v1 hierarchy of its own (see ENVIRONMENT.md).
fn hugetlb_on_v1() -> Result<(), String> {
    let v2_controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    let on_v1 = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default().lines().any(|l| l.contains(" cgroup ") && l.contains("hugetlb"));
    if on_v1 || !v2_controllers.split_whitespace().any(|c| c == "hugetlb") {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/cgroup/hugetlb").map_err(|e| format!("creating /sys/fs/cgroup/hugetlb: {e}"))?;
    rustix::mount::mount("cgroup", "/sys/fs/cgroup/hugetlb", "cgroup", rustix::mount::MountFlags::empty(), Some(c"hugetlb"))
        .map_err(|e| format!("mounting the hugetlb cgroup hierarchy: {e}"))
}

/// Layers are unpacked as they download: by the time the image is pulled, most of the
/// unpacking is done (`prepare` waits for the rest, per digest).
impl crate::images::LayerSink for OciRuntime {
    fn layer_arriving(&self, digest: &str, media_type: &str, blob: crate::images::GrowingBlob) {
        let Some(compression) = Compression::of(media_type) else { return };
        let (layers, digest) = (self.layers.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = layers.ensure_from(&digest, compression, blob) {
                // prepare unpacks it again from the whole blob, and reports.
                tracing::debug!(layer = %digest, error = %e, "unpacking a layer as it downloaded");
            }
        });
    }
}

struct OciPrepared {
    runtime: Arc<OciRuntime>,
    /// The unpacked layers, bottom first.
    layers: Vec<PathBuf>,
    defaults: ImageDefaults,
}

#[async_trait::async_trait]
impl Prepared for OciPrepared {
    fn runtime(&self) -> &'static str {
        self.runtime.binary
    }

    async fn start(&self, launch: Launch) -> Result<Running, StartError> {
        if STOPPING.load(Ordering::SeqCst) {
            return Err(StartError("the node agent is stopping".into()));
        }
        let rt = self.runtime.clone();
        let uid = launch.pod.uid().unwrap_or_default();
        let id = format!("{uid}-{}-{}", launch.container.name, rt.runs.fetch_add(1, Ordering::Relaxed));
        let bundle = rt.containers.join(&id);
        let mut guard = ContainerGuard { runtime: rt.clone(), id: id.clone(), bundle: bundle.clone(), shim: None };
        let rootfs = bundle.join("rootfs");
        let began = std::time::Instant::now();
        std::fs::create_dir_all(&bundle).map_err(|e| StartError(format!("creating {}: {e}", bundle.display())))?;
        // The shim, the pod's sandbox and the container's root are made at once.
        launch.log.set_written_elsewhere();
        let shim = rt.spawn_shim(&id, &bundle, &launch.log)?;
        let mount = {
            let (bundle, rootfs, layers) = (bundle.clone(), rootfs.clone(), self.layers.clone());
            tokio::task::spawn_blocking(move || rootfs::make(&bundle, &rootfs, &layers))
        };
        let (sandbox, mounted) = tokio::join!(rt.sandbox_for(&launch), mount);
        let sandbox = sandbox?;
        mounted.map_err(|e| StartError(e.to_string()))?.map_err(StartError)?;
        let prepared_in = began.elapsed();
        let cgroups_path = format!("/{CGROUP_PARENT}/{uid}/{id}");
        let config = spec::runtime_spec(&launch, &self.defaults, &rootfs, &sandbox, &cgroups_path).map_err(|e| StartError(e.0))?;
        tokio::fs::write(bundle.join("config.json"), config.to_string()).await.map_err(|e| StartError(format!("writing config.json: {e}")))?;
        let record = RunRecord { uid, container: launch.container.name.clone(), cgroups_path, started_at: skiff_client::now() };
        tokio::fs::write(bundle.join(RECORD), serde_json::to_vec(&record).expect("serializable")).await.map_err(|e| StartError(format!("writing {RECORD}: {e}")))?;
        let shim = shim.run(rt.binary, &bundle).await?;
        guard.shim = Some(shim.clone());
        tracing::debug!(container = %id, sandbox_and_root = ?prepared_in, total = ?began.elapsed(), "container started");
        let exec = Arc::new(OciExec { runtime: rt.clone(), id });
        let exit = until_exit(guard, Some(shim), record.cgroups_path, launch.usage, launch.terminate, launch.log);
        Ok(Running { exit: Box::pin(exit), exec })
    }
}

/// What the agent keeps in a run's bundle to adopt it after a restart.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunRecord {
    uid: String,
    container: String,
    cgroups_path: String,
    started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

const RECORD: &str = "run.json";

/// A container run a previous agent started, found in its bundle: still running under
/// its shim, or ended while no agent ran (its shim left the status).
struct Leftover {
    id: String,
    bundle: PathBuf,
    record: RunRecord,
    /// The shim, while it runs.
    shim: Option<Arc<rustix::fd::OwnedFd>>,
}

impl Leftover {
    /// The run in `bundle`, if it can be adopted: its record is there, and its shim runs
    /// or has left the exit status.
    fn find(bundle: &Path) -> Option<Leftover> {
        let id = bundle.file_name()?.to_string_lossy().to_string();
        let record: RunRecord = serde_json::from_slice(&std::fs::read(bundle.join(RECORD)).ok()?).ok()?;
        let shim = std::fs::read_to_string(bundle.join("shim.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok())
            // The pid is this run's shim, not a process that reused it.
            .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == id.as_bytes())))
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok())
            .map(Arc::new);
        (shim.is_some() || shim::exit_status(bundle).is_some()).then_some(Leftover { id, bundle: bundle.to_path_buf(), record, shim })
    }

    /// Its pod's uid and its container's name.
    fn key(&self) -> (String, String) {
        (self.record.uid.clone(), self.record.container.clone())
    }
}

/// A run adopted after an agent restart: "starting" it takes it over as it is.
struct Adopted {
    runtime: Arc<OciRuntime>,
    leftover: Mutex<Option<Leftover>>,
}

#[async_trait::async_trait]
impl Prepared for Adopted {
    fn runtime(&self) -> &'static str {
        self.runtime.binary
    }

    async fn start(&self, launch: Launch) -> Result<Running, StartError> {
        let Leftover { id, bundle, record, shim } = self.leftover.lock().unwrap().take().ok_or_else(|| StartError("the adopted run was taken over already".into()))?;
        launch.log.set_written_elsewhere();
        let guard = ContainerGuard { runtime: self.runtime.clone(), id: id.clone(), bundle, shim: shim.clone() };
        let exec = Arc::new(OciExec { runtime: self.runtime.clone(), id });
        let exit = until_exit(guard, shim, record.cgroups_path, launch.usage, launch.terminate, launch.log);
        Ok(Running { exit: Box::pin(exit), exec })
    }
}

/// An adopted run the worker never took over (its container could not be configured
/// again) is not left running unseen: it is removed, as a started run would be.
impl Drop for Adopted {
    fn drop(&mut self) {
        if let Some(l) = self.leftover.lock().unwrap().take() {
            drop(ContainerGuard { runtime: self.runtime.clone(), id: l.id, bundle: l.bundle, shim: l.shim });
        }
    }
}

impl OciRuntime {
    /// Takes over the run of the pod's container that a previous agent left, if there is
    /// one: the worker "starts" it, which adopts it as it is. With when it started.
    pub fn adopt(self: &Arc<Self>, uid: &str, container: &str) -> Option<(Arc<dyn Prepared>, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)> {
        let leftover = self.leftovers.lock().unwrap().remove(&(uid.to_string(), container.to_string()))?;
        tracing::info!(container = %leftover.id, "adopting a container a previous agent started");
        let started_at = leftover.record.started_at.clone();
        Some((Arc::new(Adopted { runtime: self.clone(), leftover: Mutex::new(Some(leftover)) }), started_at))
    }

    /// Removes what previous agents left of pods that are gone (`live` are the node's
    /// pods): their container runs and sandboxes. Blocking.
    pub fn remove_leftovers(&self, live: &std::collections::HashSet<String>) {
        let mut gone: std::collections::BTreeSet<String> = self.leftovers.lock().unwrap().keys().map(|(uid, _)| uid.clone()).collect();
        gone.extend(sandbox::pods_with_sandboxes(&self.sandboxes));
        for uid in gone.iter().filter(|uid| !live.contains(*uid)) {
            self.remove_pod(uid);
        }
    }

    /// Starts the run's shim (see [`shim`]), to wait for the word to run the container.
    fn spawn_shim(&self, id: &str, bundle: &Path, log: &crate::logs::LogSink) -> Result<ShimStarting, StartError> {
        let shim_log = std::fs::File::create(bundle.join("shim.log")).map_err(|e| StartError(format!("creating shim.log: {e}")))?;
        let mut command = shim::command(self.binary, &self.state, bundle, id, &log.path()).map_err(|e| StartError(format!("finding the agent's executable: {e}")))?;
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(shim_log);
        let child = command.spawn().map_err(|e| StartError(format!("starting the container's shim: {e}")))?;
        Ok(ShimStarting(Some(child)))
    }
}

/// A shim waiting for the word to run its container; dropped unsaid, it exits.
struct ShimStarting(Option<std::process::Child>);

impl ShimStarting {
    /// Has the shim run the container: the shim's pidfd once the container has started,
    /// or the runtime's error.
    async fn run(mut self, binary: &'static str, bundle: &Path) -> Result<Arc<rustix::fd::OwnedFd>, StartError> {
        let mut child = self.0.take().expect("run once");
        let bundle = bundle.to_path_buf();
        tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Write};
            let pid = rustix::process::Pid::from_child(&child);
            let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(|e| StartError(format!("opening the shim's process: {e}")))?;
            let _ = std::fs::write(bundle.join("shim.pid"), pid.as_raw_nonzero().to_string());
            let _ = child.stdin.take().expect("piped").write_all(b"run\n");
            let mut said = String::new();
            let _ = std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut said);
            if said.starts_with("started ") {
                return Ok(Arc::new(pidfd));
            }
            let _ = child.wait();
            let why = std::fs::read_to_string(bundle.join("runtime.log")).unwrap_or_default();
            let why = if why.trim().is_empty() { std::fs::read_to_string(bundle.join("shim.log")).unwrap_or_default() } else { why };
            Err(StartError(runtime_error(&why, binary, "run")))
        })
        .await
        .map_err(|e| StartError(e.to_string()))?
    }
}

impl Drop for ShimStarting {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            drop(child.stdin.take());
            std::thread::spawn(move || child.wait());
        }
    }
}

impl OciRuntime {
    /// The pod's sandbox, made by its first container.
    async fn sandbox_for(self: &Arc<Self>, launch: &Launch) -> Result<Arc<sandbox::Sandbox>, StartError> {
        let pod = &launch.pod;
        let uid = pod.uid().unwrap_or_default();
        let ip = launch.pod_ip.parse().map_err(|_| StartError(format!("the pod has no usable address ({:?})", launch.pod_ip)))?;
        let spec = pod.spec.clone().unwrap_or_default();
        let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
        let namespace = pod.namespace().unwrap_or_default();
        let fqdn = match (&spec.subdomain, &launch.cluster_dns) {
            (Some(sub), Some(dns)) => Some(format!("{hostname}.{sub}.{namespace}.svc.{}", dns.domain)),
            _ => None,
        };
        let host_aliases = spec.host_aliases.iter().flatten().map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default())).collect();
        let host_ports = spec.containers.iter().chain(spec.init_containers.iter().flatten()).flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let host_port = p.host_port.filter(|h| *h > 0)?;
                let mut mapping = serde_json::json!({"hostPort": host_port, "containerPort": p.container_port, "protocol": p.protocol.as_deref().unwrap_or("TCP").to_lowercase()});
                if let Some(ip) = p.host_ip.as_ref().filter(|ip| !ip.is_empty()) {
                    mapping["hostIP"] = serde_json::json!(ip);
                }
                Some(mapping)
            })
            .collect();
        let (this, dns) = (self.clone(), launch.cluster_dns.clone());
        tokio::task::spawn_blocking(move || {
            this.sandboxes()?.ensure(&SandboxSpec { uid: &uid, namespace: &namespace, hostname: &hostname, fqdn, ip, dns: dns.as_ref(), host_aliases, host_ports })
        })
        .await
        .map_err(|e| StartError(e.to_string()))?
        .map_err(|e| StartError(format!("setting up the pod's sandbox: {e}")))
    }
}

/// Until the container's run ends (its shim exits, leaving the status): its CPU and
/// memory read every few seconds, and SIGTERM when the pod is told to terminate (the
/// worker drops this future, and so kills the container, at the grace period's end).
/// Then its OOM kills are read, and it is removed.
async fn until_exit(
    guard: ContainerGuard,
    shim: Option<Arc<rustix::fd::OwnedFd>>,
    cgroups_path: String,
    usage: Arc<Usage>,
    mut terminate: tokio::sync::watch::Receiver<bool>,
    log: crate::logs::LogSink,
) -> Result<Exit, StartError> {
    let exited = async {
        if let Some(shim) = shim {
            wait_exit(shim).await;
        }
    };
    tokio::pin!(exited);
    let mut stats = tokio::time::interval(STATS_PERIOD);
    let mut terminating = false;
    loop {
        tokio::select! {
            _ = &mut exited => break,
            _ = stats.tick() => read_usage(&cgroups_path, &usage),
            changed = terminate.changed(), if !terminating => {
                terminating = changed.is_err() || *terminate.borrow();
                if terminating {
                    let _ = guard.runtime.command().args(["kill", &guard.id, "TERM"]).output().await;
                }
            }
        }
    }
    log.finish();
    let oom_killed = memory_cgroup(&cgroups_path).and_then(|d| std::fs::read_to_string(d.join("memory.oom_control")).ok())
        .is_some_and(|text| text.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0")));
    let status = shim::exit_status(&guard.bundle);
    drop(guard);
    Ok(exit_of(status, oom_killed))
}

/// The runtime's own error, as its log has it (crun and runc write JSON or plain lines).
fn runtime_error(log: &str, binary: &str, step: &str) -> String {
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let message = serde_json::from_str::<serde_json::Value>(last).ok().and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string)).unwrap_or_else(|| last.to_string());
    format!("{binary} {step}: {message}")
}

/// The container's memory cgroup directory (cgroup v1).
fn memory_cgroup(cgroups_path: &str) -> Option<PathBuf> {
    let dir = Path::new("/sys/fs/cgroup/memory").join(cgroups_path.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Reads the container's CPU time and memory from its cgroups.
fn read_usage(cgroups_path: &str, usage: &Usage) {
    let read = |controller: &str, file: &str| std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(controller).join(cgroups_path.trim_start_matches('/')).join(file)).ok().and_then(|t| t.trim().parse::<u64>().ok());
    if let Some(cpu) = read("cpuacct", "cpuacct.usage") {
        usage.cpu_nanos.store(cpu, Ordering::Relaxed);
    }
    if let Some(memory) = read("memory", "memory.usage_in_bytes") {
        usage.memory_bytes.store(memory, Ordering::Relaxed);
    }
}

/// Waits for a process (the container's shim) to exit, and reaps it if it is the
/// agent's child (a shim adopted after a restart is not).
async fn wait_exit(pidfd: Arc<rustix::fd::OwnedFd>) {
    // SAFETY: the registration holds an `Arc` of the descriptor, which so outlives it.
    if let Ok(readable) = unsafe { tokio::io::unix::AsyncFd::register_with_interest(Fd(pidfd.clone()), tokio::io::Interest::READABLE) } {
        let _ = readable.readable().await;
    }
    let _ = tokio::task::spawn_blocking(move || reap(&pidfd)).await;
}

/// Reaps an exited child. Blocking.
fn reap(pidfd: &rustix::fd::OwnedFd) {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let _ = waitid(WaitId::PidFd(rustix::fd::AsFd::as_fd(pidfd)), WaitIdOptions::EXITED);
}

/// A pidfd as tokio's `AsyncFd` wants it.
struct Fd(Arc<rustix::fd::OwnedFd>);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The container's exit as Kubernetes reports it: its code, or 128 + the signal.
fn exit_of(status: Option<shim::ExitStatus>, oom_killed: bool) -> Exit {
    if oom_killed {
        return Exit { code: 137, reason: "OOMKilled", message: Some("the container exceeded its memory limit".into()) };
    }
    match status {
        Some(shim::ExitStatus::Code(code)) => Exit::of_code(code),
        Some(shim::ExitStatus::Signal(signal)) => Exit { code: 128 + signal, reason: "Error", message: None },
        None => Exit { code: 137, reason: "Error", message: Some("the container's shim ended without its exit status".into()) },
    }
}

/// Stops and removes a container run when dropped, on a thread of its own (a pod worker
/// may be dropped anywhere): SIGKILL, reap its shim, delete, unmount, remove the bundle.
/// Not while the agent stops: the run goes on, for the next agent to adopt.
struct ContainerGuard {
    runtime: Arc<OciRuntime>,
    id: String,
    bundle: PathBuf,
    shim: Option<Arc<rustix::fd::OwnedFd>>,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if STOPPING.load(Ordering::SeqCst) {
            return;
        }
        let (runtime, id, bundle, shim) = (self.runtime.clone(), self.id.clone(), self.bundle.clone(), self.shim.take());
        std::thread::spawn(move || remove_container(runtime.binary, &runtime.state, &id, &bundle, shim));
    }
}

/// Kills a container, reaps its shim (once the container is gone, the shim goes too),
/// deletes it from the runtime, unmounts its root and removes its bundle. Blocking.
fn remove_container(binary: &str, state: &Path, id: &str, bundle: &Path, shim: Option<Arc<rustix::fd::OwnedFd>>) {
    let runtime = || runtime_command(binary, state);
    let _ = runtime().args(["kill", id, "KILL"]).output();
    if let Some(shim) = shim {
        reap(&shim);
    }
    let _ = runtime().args(["delete", "--force", id]).output();
    rootfs::remove(bundle, &bundle.join("rootfs"));
}

/// Exec into a container: the runtime's `exec`, with the container's environment.
struct OciExec {
    runtime: Arc<OciRuntime>,
    id: String,
}

#[async_trait::async_trait]
impl Exec for OciExec {
    async fn exec(&self, argv: Vec<String>, io: ExecIo) -> Result<Exit, StartError> {
        let mut command = self.runtime.command();
        command.args(["exec", &self.id]).args(&argv).kill_on_drop(true);
        command.stdin(if io.stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| StartError(format!("running {}: {e}", self.runtime.binary)))?;
        let mut copies = Vec::new();
        if let (Some(mut from), Some(mut to)) = (io.stdin, child.stdin.take()) {
            copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }));
        }
        let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let (mut stdout, mut stderr) = (io.stdout, io.stderr);
        let outputs = async {
            let _ = tokio::join!(tokio::io::copy(&mut out, &mut stdout), tokio::io::copy(&mut err, &mut stderr));
        };
        let (status, _) = tokio::join!(child.wait(), outputs);
        for c in copies {
            c.abort();
        }
        let status = status.map_err(|e| StartError(e.to_string()))?;
        Ok(match status.code() {
            Some(code) => Exit::of_code(code),
            None => Exit { code: 137, reason: "Error", message: Some("the exec'd process was killed".into()) },
        })
    }
}
