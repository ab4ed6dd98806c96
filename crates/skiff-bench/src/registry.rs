//! What several benches share: a whole node in process, a real `docker-registry` on
//! 127.0.0.1, the Wasm examples they run, and reading a process's memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Registry {
    pub host: String,
    child: std::process::Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_registry(dir: &Path) -> anyhow::Result<Registry> {
    start_registry_with(dir, None).await
}

/// A docker-registry on 127.0.0.1 serving HTTPS with `tls` (certificate and key files)
/// when given, else plain HTTP.
pub async fn start_registry_with(dir: &Path, tls: Option<(&Path, &Path)>) -> anyhow::Result<Registry> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let host = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    let tls = tls.map(|(cert, key)| format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())).unwrap_or_default();
    std::fs::write(&config, format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n{tls}", dir.join("blobs").display()))?;
    let child = std::process::Command::new("docker-registry").arg("serve").arg(&config)
        .stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting docker-registry ({e}); install Debian's docker-registry package"))?;
    let registry = Registry { host, child };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&registry.host).await.is_ok() {
            return Ok(registry);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("docker-registry did not listen on {}", registry.host)
}

/// The API server (in process), the scheduler and a real agent for node `bench-node`,
/// once the node is ready. Returns the client and the agent's task.
pub async fn in_process_node(dir: &Path, max_instances: u32) -> anyhow::Result<(kube::Client, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    use kube::api::Api;
    const TOKEN: &str = "bench-token";
    let store: std::sync::Arc<dyn skiff_store::Store> = std::sync::Arc::new(skiff_store::RedbStore::open(&dir.join("db"), Default::default())?);
    // Pods get ServiceAccount tokens and the cluster CA, as under `skiff up`.
    let mut config = skiff_apiserver::Config::new(TOKEN.into());
    config.service_account_key = Some(skiff_apiserver::authz::tokens::SigningKey::load_or_create(&dir.join("service-account.key")).map_err(anyhow::Error::msg)?);
    let certs = skiff_apiserver::tls::load_or_create(dir, &["127.0.0.1".into()])?;
    let server = skiff_apiserver::ApiServer::new(store, config);
    server.bootstrap(([127, 0, 0, 1], 6443).into()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    // Each part as its own user, as under `skiff up` (the agent under the Node authorizer).
    use skiff_apiserver::authz::{UserInfo, node::node_user};
    let router = skiff_apiserver::router(server);
    let as_user = |user, component| skiff_apiserver::in_process_client(router.clone(), user, component);
    let client = as_user(UserInfo::admin(), "skiff-bench");
    tokio::spawn(skiff_scheduler::run(as_user(UserInfo::scheduler(), "skiff-scheduler"), std::future::pending()));
    // The controllers give the node its pod range: a /16, room for the biggest density run.
    let ranges = skiff_controllers::node_ipam::PodRanges::new("10.240.0.0/12".parse().map_err(anyhow::Error::msg)?, 16).map_err(anyhow::Error::msg)?;
    // They sign the agent's serving certificate with the cluster CA, as under `skiff up`.
    let signer = skiff_controllers::certificates::Signer { ca_cert_pem: certs.ca_pem.clone(), ca_key_pem: std::fs::read_to_string(dir.join("ca.key"))?, duration: skiff_controllers::certificates::DEFAULT_DURATION };
    let cluster_ca = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        vec![CertificateDer::from_pem_slice(certs.ca_pem.as_bytes())?.to_vec()]
    };
    let options = skiff_controllers::Options { pod_ranges: Some(ranges), root_ca: Some(certs.ca_pem), signer: Some(signer), ..Default::default() };
    tokio::spawn(skiff_controllers::run(as_user(UserInfo::controllers(), "skiff-controllers"), options, std::future::pending()));
    let config = skiff_agent::AgentConfig {
        node_name: "bench-node".into(),
        node_ip: "127.0.0.1".into(),
        data_dir: dir.join("agent"),
        max_pods: 20_000,
        max_instances,
        registries: Default::default(),
        port: 0,
        token: TOKEN.into(),
        cluster_ca,
        labels: Default::default(),
        taints: vec![],
        // The in-process node runs no proxy, so pods resolve as the host does (and no
        // ingress counts requests).
        cluster_dns: None,
        proxied_requests: Default::default(),
        ready_pods: Default::default(),
        metrics_of: vec![],
    };
    let agent = tokio::spawn(skiff_agent::run(as_user(node_user("bench-node"), "skiff-agent"), config));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while nodes.get_opt("bench-node").await?.is_none_or(|n| skiff_client::nodes::ready_status(&n) != Some("True")) {
        anyhow::ensure!(std::time::Instant::now() < deadline && !agent.is_finished(), "the agent did not register its node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((client, agent))
}

/// The WASI command benches run: `wasm`, or the wasi-hello example built for wasm32-wasip1.
pub fn example_wasm(wasm: Option<PathBuf>) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    example(wasm, "wasm32-wasip1", "wasi-hello")
}

/// `wasm`, or an example built by the test command for `target`.
pub fn example(wasm: Option<PathBuf>, target: &str, name: &str) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let path = wasm.unwrap_or_else(|| {
        let out = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
        out.join(target).join("release").join(format!("{name}.wasm"))
    });
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e} (build examples/{name} for {target}, or pass --wasm)", path.display()))?;
    Ok((path, bytes))
}

/// Resident memory of a process (`self` or a pid), in bytes.
/// The `skiff` binary: `binary`, or the one built beside this bench.
pub fn skiff_binary(binary: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let binary = match binary {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("skiff"),
    };
    anyhow::ensure!(binary.exists(), "{} is missing: build the skiff binary in the same profile (cargo build [--release] -p skiff) or pass --binary", binary.display());
    Ok(binary)
}

/// A child process killed when the bench ends, however it ends.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `skiff ARGS… DATA_DIR` as a child process (the last flag takes `data_dir`).
pub fn spawn_skiff(binary: &Path, args: &[&str], data_dir: &Path) -> anyhow::Result<Child> {
    let child = std::process::Command::new(binary).args(args).arg(data_dir).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
    Ok(Child(child))
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The kubeconfig a starting `skiff server` or `skiff up` writes into its `data_dir`.
pub async fn wait_for_kubeconfig(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let kubeconfig = data_dir.join("kubeconfig");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no kubeconfig in {} after 60 s", data_dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(kubeconfig)
}

/// A client of the cluster whose `kubeconfig` this is, once its API answers (polled
/// every `every`, for up to 60 s).
pub async fn wait_for_api(kubeconfig: &Path, every: Duration) -> anyhow::Result<kube::Client> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = client_for(kubeconfig).await
            && c.apiserver_version().await.is_ok()
        {
            return Ok(c);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the API did not answer within 60 s");
        tokio::time::sleep(every).await;
    }
}

/// A client once the cluster has written `kubeconfig` and `node` is registered with its
/// pod network set up (so pods can start on it).
pub async fn wait_for_node(kubeconfig: &Path, node: &str) -> anyhow::Result<kube::Client> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(std::time::Instant::now() < deadline, "node {node} did not come up within 60 s");
        if kubeconfig.exists()
            && let Ok(c) = client_for(kubeconfig).await
            && let Ok(Some(n)) = kube::api::Api::<k8s_openapi::api::core::v1::Node>::all(c.clone()).get_opt(node).await
            && n.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "NetworkUnavailable")
        {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(kubeconfig)?, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

pub fn rss_of(pid: &str) -> u64 {
    skiff_agent::node::proc_bytes(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)
}
