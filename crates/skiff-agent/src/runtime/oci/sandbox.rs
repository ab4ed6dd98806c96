//! A container pod's sandbox (kubelet's pause container, without a process): one network
//! namespace, set up by the Debian CNI plugins (`bridge` onto `skiff0`, `loopback`, and
//! `portmap` for the containers' `hostPort`s) and given the pod's address by the agent's
//! own allocator, plus one IPC and one UTS namespace holding the pod's hostname, each
//! kept by a bind mount, and the `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`
//! its containers see. All of a pod's containers join them.
//!
//! The bridge plugin's run is most of a sandbox's set-up (about 20 ms, as long as the
//! runtime takes to start a container), and it needs nothing of the pod: once the node
//! has run a container pod, a few network namespaces wait, made ahead and bridged with no
//! address ([`WARM`]); a pod takes one, which is renamed for it and given its address.
//!
//! The node's pod range is local to it (Wasm pods bind their addresses with no set-up),
//! so a container pod's address gets a /32 route of its own in the local table, through
//! the bridge to its veth.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use skiff_core::Cidr;

use crate::network::{BRIDGE, ip, run};
use crate::pod_dns::ClusterDns;

/// Where the CNI plugins are (Debian's containernetworking-plugins).
pub const CNI_BIN: &str = "/usr/lib/cni";
/// Network namespaces live where `ip netns` keeps them, so operators can inspect them.
const NETNS_DIR: &str = "/var/run/netns";
/// How many bridged network namespaces wait, made ahead, for the next pods.
pub const WARM: usize = 2;
/// Names the sandboxes of those network namespaces (pods' are named by their uids).
const WARM_PREFIX: &str = "warm-";

/// The namespaces and files one pod's containers share.
#[derive(Debug)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
    pub etc_hosts: PathBuf,
    pub etc_hostname: PathBuf,
    pub resolv_conf: PathBuf,
}

/// The node's container pod sandboxes.
pub struct Sandboxes {
    dir: PathBuf,
    range: Cidr,
    /// Per pod uid, its sandbox once made; each pod's is made under its own lock, so pods
    /// starting together are set up together.
    pods: Mutex<HashMap<String, Arc<Mutex<Option<Arc<Sandbox>>>>>>,
    /// Network namespaces made ahead (see the module's notes), by sandbox name.
    warm: Arc<Mutex<Vec<String>>>,
    /// The first container pod of the node starts making them: a node that runs only
    /// Wasm pods has none.
    warming: std::sync::atomic::AtomicBool,
}

/// What a sandbox is made from.
pub struct SandboxSpec<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub hostname: &'a str,
    /// `hostname.subdomain.namespace.svc.domain` when the pod has a subdomain.
    pub fqdn: Option<String>,
    pub ip: Ipv4Addr,
    pub dns: Option<&'a ClusterDns>,
    pub host_aliases: Vec<(String, Vec<String>)>,
    /// The containers' `hostPort`s, as the CNI `portmap` plugin's `portMappings`.
    pub host_ports: Vec<serde_json::Value>,
}

impl Sandboxes {
    /// Sandboxes under `dir`, addressed from `range` (on the `skiff0` bridge), with those a
    /// previous agent left taken over as they are (their pods' containers may still run).
    /// Blocking.
    pub fn new(dir: PathBuf, range: Cidr) -> Sandboxes {
        let mut pods = HashMap::new();
        let mut addresses = Vec::new();
        for uid in leftovers(&dir) {
            match Sandbox::existing(&dir, &uid) {
                Some(sandbox) => {
                    addresses.extend(ip_of(&uid));
                    pods.insert(uid, Arc::new(Mutex::new(Some(Arc::new(sandbox)))));
                }
                None => tear_down(&dir, &uid),
            }
        }
        forget_routes_except(range, &addresses);
        remove_orphaned_warm_netns();
        Sandboxes { dir, range, pods: Mutex::new(pods), warm: Arc::default(), warming: Default::default() }
    }

    /// Makes one more network namespace ahead, on a thread of its own.
    fn make_warm(&self) {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // Unique on the host: agents on other data directories make theirs too.
        let name = format!("{WARM_PREFIX}{}-{}", std::process::id(), MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (dir, warm) = (self.dir.clone(), self.warm.clone());
        std::thread::spawn(move || match bridged_netns(&dir, &name) {
            Ok(()) => warm.lock().unwrap().push(name),
            Err(e) => {
                tracing::debug!(error = %e, "making a pod network namespace ahead");
                tear_down(&dir, &name);
            }
        });
    }

    /// The pod's network namespace: one made ahead, renamed for it (and another made
    /// ahead in its place), else one made now.
    fn netns_for(&self, uid: &str) -> Result<PathBuf, String> {
        let netns = Path::new(NETNS_DIR).join(netns_name(uid));
        if netns.exists() {
            return Ok(netns);
        }
        let taken = self.warm.lock().unwrap().pop();
        let first = !self.warming.swap(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..if first { WARM } else { usize::from(taken.is_some()) } {
            self.make_warm();
        }
        let Some(warm) = taken else {
            bridged_netns(&self.dir, uid)?;
            return Ok(netns);
        };
        let from = Path::new(NETNS_DIR).join(netns_name(&warm));
        std::fs::File::create(&netns).map_err(|e| format!("creating {}: {e}", netns.display()))?;
        // A second mount of the namespace under the pod's name, then the first one goes
        // (a mount cannot be moved under /var/run/netns, which `ip netns` makes shared).
        rustix::mount::mount_bind(&from, &netns).map_err(|e| format!("naming the network namespace for the pod: {e}"))?;
        let _ = rustix::mount::unmount(&from, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_file(&from);
        let _ = std::fs::remove_dir_all(self.dir.join(&warm));
        Ok(netns)
    }

    /// The pod's sandbox, made if it has none. Blocking: call it from `spawn_blocking`.
    pub fn ensure(&self, spec: &SandboxSpec) -> Result<Arc<Sandbox>, String> {
        let slot = self.pods.lock().unwrap().entry(spec.uid.to_string()).or_default().clone();
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let made = self.create(spec);
        if made.is_err() {
            tear_down(&self.dir, spec.uid);
        }
        let sandbox = Arc::new(made?);
        *slot = Some(sandbox.clone());
        Ok(sandbox)
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Sandbox, String> {
        let dir = self.dir.join(spec.uid);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let sandbox = Sandbox::at(&self.dir, spec.uid);
        let (ipc, uts) = (&sandbox.ipc, &sandbox.uts);
        for file in [ipc, uts] {
            std::fs::File::create(file).map_err(|e| format!("creating {}: {e}", file.display()))?;
        }
        let hostname = spec.hostname.chars().take(64).collect::<String>();
        let gateway = self.range.nth(1).to_string();
        let address = format!("{}/{}", spec.ip, self.range.prefix);
        // Each step is a process of its own (a few ms each): the independent ones run at once.
        std::thread::scope(|s| {
            // unshare keeps each new namespace by bind-mounting it on its file; the pod's
            // hostname is set inside the UTS one as it is made.
            let ipc_uts = s.spawn(|| {
                run("unshare", &[&format!("--ipc={}", ipc.display()), &format!("--uts={}", uts.display()), "sh", "-c", "echo \"$1\" > /proc/sys/kernel/hostname", "sh", &hostname])
            });
            // The route only names the bridge: it may come before the pod's veth does.
            let route = s.spawn(|| ip(&["route", "replace", &format!("{}/32", spec.ip), "dev", BRIDGE, "table", "local"]));
            let netns = self.netns_for(spec.uid)?;
            ip_inside(&netns, &format!("addr add {address} dev eth0\nroute add default via {gateway} dev eth0\n"))?;
            if !spec.host_ports.is_empty() {
                // What the bridge plugin would have given portmap, had it assigned the address.
                let attached = serde_json::json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns}], "ips": [{"address": address, "gateway": gateway, "interface": 0}]});
                map_host_ports(&dir, spec, &netns, attached)?;
            }
            route.join().map_err(|_| "the route step panicked".to_string())??;
            ipc_uts.join().map_err(|_| "the namespace step panicked".to_string())?
        })?;
        for (path, text) in [(&sandbox.etc_hosts, hosts_file(spec)), (&sandbox.etc_hostname, format!("{hostname}\n")), (&sandbox.resolv_conf, resolv_conf(spec))] {
            std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(sandbox)
    }

    /// Removes the pod's sandbox: its veth and address (CNI DEL), its route, its
    /// namespaces and files. Safe to call for a pod that has none.
    pub fn remove(&self, uid: &str) {
        self.pods.lock().unwrap().remove(uid);
        tear_down(&self.dir, uid);
    }
}

impl Sandbox {
    /// Where the sandbox of pod `uid` under `dir` keeps its namespaces and files.
    fn at(dir: &Path, uid: &str) -> Sandbox {
        let dir = dir.join(uid);
        Sandbox {
            netns: Path::new(NETNS_DIR).join(netns_name(uid)),
            ipc: dir.join("ipc"),
            uts: dir.join("uts"),
            etc_hosts: dir.join("hosts"),
            etc_hostname: dir.join("hostname"),
            resolv_conf: dir.join("resolv.conf"),
        }
    }

    /// The sandbox a previous agent made for pod `uid` under `dir`, if it is whole.
    fn existing(dir: &Path, uid: &str) -> Option<Sandbox> {
        let sandbox = Sandbox::at(dir, uid);
        [&sandbox.netns, &sandbox.ipc, &sandbox.uts, &sandbox.etc_hosts, &sandbox.etc_hostname, &sandbox.resolv_conf].iter().all(|p| p.exists()).then_some(sandbox)
    }
}

/// Removes the /32 routes of container pods in `range` but those of `kept`: a stopped
/// agent's would hide addresses that Wasm pods may now get.
fn forget_routes_except(range: Cidr, kept: &[Ipv4Addr]) {
    let Ok(out) = Command::new("ip").args(["-o", "route", "show", "table", "local", "root", &range.to_string(), "type", "unicast", "dev", BRIDGE]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(Ok(address)) = line.split_whitespace().next().map(str::parse::<Ipv4Addr>) else { continue };
        if !kept.contains(&address) {
            let _ = ip(&["route", "del", &format!("{address}/32"), "dev", BRIDGE, "table", "local"]);
        }
    }
}

/// The bridge plugin's network config: the pod's veth onto the bridge, with no address
/// (the agent gives it).
fn bridge_config() -> serde_json::Value {
    serde_json::json!({"cniVersion": "1.0.0", "name": "skiff", "type": "bridge", "bridge": BRIDGE, "isGateway": false, "ipMasq": false, "hairpinMode": true})
}

/// A network namespace for sandbox `name` (its directory under `dir` made, so that it is
/// torn down with it), with loopback up and `eth0` on the bridge. Blocking.
fn bridged_netns(dir: &Path, name: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir.join(name)).map_err(|e| format!("creating {}: {e}", dir.join(name).display()))?;
    let ns = netns_name(name);
    ip(&["netns", "add", &ns])?;
    let netns = Path::new(NETNS_DIR).join(&ns);
    std::thread::scope(|s| {
        let loopback = s.spawn(|| cni("ADD", "loopback", &serde_json::json!({"cniVersion": "1.0.0", "name": "skiff-lo", "type": "loopback"}), name, &netns, "lo"));
        cni("ADD", "bridge", &bridge_config(), name, &netns, "eth0")?;
        loopback.join().map_err(|_| "the loopback step panicked".to_string())?.map(|_| ())
    })
}

/// Runs `ip -batch` with `commands` inside the network namespace at `netns`: from a
/// thread that enters it, so that the process starts there. (`ip -n` would also remount
/// /sys in a mount namespace of its own, which takes longer than the commands.)
fn ip_inside(netns: &Path, commands: &str) -> Result<(), String> {
    use std::io::Write;
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(netns).map_err(|e| format!("opening {}: {e}", netns.display()))?;
            rustix::thread::move_into_link_name_space(rustix::fd::AsFd::as_fd(&ns), Some(rustix::thread::LinkNameSpaceType::Network))
                .map_err(|e| format!("entering {}: {e}", netns.display()))?;
            let mut child = Command::new("ip").args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
                .map_err(|e| format!("running ip: {e}"))?;
            child.stdin.take().expect("piped").write_all(commands.as_bytes()).map_err(|e| e.to_string())?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if out.status.success() { Ok(()) } else { Err(format!("ip -batch ({}): {}", commands.trim().replace('\n', "; "), String::from_utf8_lossy(&out.stderr).trim())) }
        })
        .join()
        .map_err(|_| "the ip step panicked".to_string())?
    })
}

/// The address a sandbox's eth0 has, read back from its namespace.
fn ip_of(uid: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip").args(["-n", &netns_name(uid), "-o", "-4", "addr", "show", "eth0"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next()?.parse().ok()
}

fn netns_name(uid: &str) -> String {
    format!("skiff-{uid}")
}

/// Removes a pod's sandbox (kept under `dir`): its veth and address (CNI DEL), its
/// route, its namespaces and files. Safe to call for a pod that has none.
pub fn tear_down(dir: &Path, uid: &str) {
    let Sandbox { netns, ipc, uts, .. } = Sandbox::at(dir, uid);
    let address = ip_of(uid);
    if let Ok(portmap) = std::fs::read(dir.join(uid).join("portmap.json")) {
        let config: serde_json::Value = serde_json::from_slice(&portmap).unwrap_or_default();
        let _ = cni("DEL", "portmap", &config, uid, &netns, "eth0");
    }
    if netns.exists() {
        let _ = cni("DEL", "bridge", &bridge_config(), uid, &netns, "eth0");
        let _ = ip(&["netns", "delete", &netns_name(uid)]);
    }
    if let Some(address) = address {
        let _ = ip(&["route", "del", &format!("{address}/32"), "dev", BRIDGE, "table", "local"]);
    }
    for ns in [ipc, uts] {
        let _ = rustix::mount::unmount(&ns, rustix::mount::UnmountFlags::DETACH);
    }
    let _ = std::fs::remove_dir_all(dir.join(uid));
}

/// The sandboxes on the node left by an agent that stopped: pods' (by uid) and those made
/// ahead.
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()
}

/// Deletes the network namespaces made ahead by agents that are gone without tearing
/// them down (killed): their names carry the agent's pid. Deleting one deletes its veth.
fn remove_orphaned_warm_netns() {
    let prefix = netns_name(WARM_PREFIX);
    for entry in std::fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|rest| rest.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// Tears down the network namespaces made ahead under `dir` (as the agent stops: they
/// belong to no pod). Blocking.
pub fn remove_made_ahead(dir: &Path) {
    for name in leftovers(dir).into_iter().filter(|name| name.starts_with(WARM_PREFIX)) {
        tear_down(dir, &name);
    }
}

/// The pod uids with a sandbox on the node.
pub fn pods_with_sandboxes(dir: &Path) -> Vec<String> {
    leftovers(dir).into_iter().filter(|name| !name.starts_with(WARM_PREFIX)).collect()
}

/// Forwards the pod's host ports to it with the `portmap` plugin, chained after `bridge`
/// (whose result it is given), and keeps its config for the DEL. The node's own
/// addresses forward by DNAT; 127.0.0.1 needs `route_localnet`, which kube-proxy sets too.
fn map_host_ports(dir: &Path, spec: &SandboxSpec, netns: &Path, attached: serde_json::Value) -> Result<(), String> {
    let _ = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
    let mut config = serde_json::json!({
        "cniVersion": "1.0.0", "name": "skiff", "type": "portmap", "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": spec.host_ports},
    });
    std::fs::write(dir.join("portmap.json"), config.to_string()).map_err(|e| format!("writing portmap.json: {e}"))?;
    config["prevResult"] = attached;
    cni("ADD", "portmap", &config, spec.uid, netns, "eth0").map(|_| ())
}

/// Runs a CNI plugin as the CNI spec says: the command and its arguments in the
/// environment, the network config on stdin, the result (or error) on stdout; returns
/// the result.
fn cni(command: &str, plugin: &str, config: &serde_json::Value, container_id: &str, netns: &Path, ifname: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(Path::new(CNI_BIN).join(plugin))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_BIN)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running the CNI plugin {plugin} from {CNI_BIN} (Debian's containernetworking-plugins): {e}"))?;
    child.stdin.take().expect("piped").write_all(config.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let message = reply.get("msg").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
    Err(format!("CNI {plugin} {command}: {message}"))
}

/// `/etc/hosts` as kubelet writes it: localhost, the pod's own address and names, and
/// the pod's `hostAliases`.
fn hosts_file(spec: &SandboxSpec) -> String {
    let mut text = String::from("# Kubernetes-managed hosts file (Skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match &spec.fqdn {
        Some(fqdn) => text.push_str(&format!("{}\t{fqdn}\t{}\n", spec.ip, spec.hostname)),
        None => text.push_str(&format!("{}\t{}\n", spec.ip, spec.hostname)),
    }
    for (ip, names) in &spec.host_aliases {
        text.push_str(&format!("\n# Entries added by HostAliases.\n{ip}\t{}\n", names.join("\t")));
    }
    text
}

/// The pod's resolver: the cluster DNS with Kubernetes' search list, or the host's own
/// resolv.conf where there is no cluster DNS.
fn resolv_conf(spec: &SandboxSpec) -> String {
    match spec.dns {
        Some(dns) => {
            let d = &dns.domain;
            format!("search {ns}.svc.{d} svc.{d} {d}\nnameserver {}\noptions ndots:5\n", dns.server, ns = spec.namespace)
        }
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_say_what_kubelet_would() {
        let dns = ClusterDns { server: "10.43.0.10".parse().unwrap(), domain: "cluster.local".into() };
        let spec = SandboxSpec { uid: "u", namespace: "shop", hostname: "web-1", fqdn: None, ip: "10.42.0.7".parse().unwrap(), dns: Some(&dns), host_aliases: vec![("1.2.3.4".into(), vec!["a".into(), "b".into()])], host_ports: vec![] };
        assert_eq!(resolv_conf(&spec), "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n");
        let hosts = hosts_file(&spec);
        assert!(hosts.contains("10.42.0.7\tweb-1\n") && hosts.contains("1.2.3.4\ta\tb\n"), "{hosts}");
    }
}
