//! `skiff up` and `skiff server`: open the store, bootstrap the cluster, serve the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use skiff_apiserver::{ApiServer, Config};
use skiff_store::{RedbStore, StoreOptions};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where the cluster keeps its state, token and kubeconfig.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Virtual IP range of Services.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: skiff_core::Cidr,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_request_bytes: usize,
    /// How many recent changes watches can resume from.
    #[arg(long, default_value_t = 100_000)]
    watch_history: u64,
    /// How often node and pod usage is read from the agents for `kubectl top` and the
    /// autoscaler (metrics-server's --metric-resolution): `15s`, down to `1s`.
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
    metric_resolution: std::time::Duration,
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    pod_security: PodSecurityArgs,
    #[command(flatten)]
    controllers: ControllerArgs,
    /// The node `skiff up` runs (ignored by `skiff server`).
    #[command(flatten)]
    node: crate::agent::NodeArgs,
}

/// The audit log: on by default, with a policy that logs every write and every read of
/// a credential, never a body.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// The file audit events are appended to, as JSON lines (default: audit.log in the
    /// data directory).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// An audit.k8s.io/v1 Policy (YAML or JSON) to log by instead of the built-in one.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Rotate the audit log past this many megabytes.
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept.
    #[arg(long, default_value_t = 5)]
    audit_log_maxbackup: usize,
}

impl AuditArgs {
    fn auditor(&self, dir: &Path) -> anyhow::Result<skiff_apiserver::audit::Auditor> {
        use skiff_apiserver::audit::{AuditFile, Auditor, Policy, Rotation};
        let policy = match &self.audit_policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading --audit-policy-file {}", path.display()))?;
                Policy::parse(&text).map_err(|e| anyhow::anyhow!("--audit-policy-file {}: {e}", path.display()))?
            }
            None => Policy::default_policy(),
        };
        let path = self.audit_log_path.clone().unwrap_or_else(|| dir.join("audit.log"));
        anyhow::ensure!(self.audit_log_maxsize > 0, "--audit-log-maxsize must be at least 1 (megabyte)");
        let rotation = Rotation { max_bytes: self.audit_log_maxsize * 1024 * 1024, max_backups: self.audit_log_maxbackup };
        let file = AuditFile::open(&path, rotation).with_context(|| format!("opening the audit log {}", path.display()))?;
        Ok(Auditor::new(policy, file))
    }
}

/// PodSecurity levels for namespaces without `pod-security.kubernetes.io/<mode>` labels.
#[derive(clap::Args)]
pub struct PodSecurityArgs {
    /// Pods that violate this level are refused: privileged, baseline or restricted.
    #[arg(long, default_value = "baseline", value_parser = parse_pod_security_level)]
    pod_security_enforce: skiff_apiserver::pod_security::Level,
    /// Violations of this level are noted in the audit log.
    #[arg(long, default_value = "restricted", value_parser = parse_pod_security_level)]
    pod_security_audit: skiff_apiserver::pod_security::Level,
    /// Violations of this level are answered with warnings (kubectl prints them).
    #[arg(long, default_value = "baseline", value_parser = parse_pod_security_level)]
    pod_security_warn: skiff_apiserver::pod_security::Level,
}

fn parse_pod_security_level(text: &str) -> Result<skiff_apiserver::pod_security::Level, String> {
    skiff_apiserver::pod_security::Level::parse(text).ok_or_else(|| format!("{text:?} is not a Pod Security level: privileged, baseline or restricted"))
}

#[derive(clap::Args)]
pub struct ControllerArgs {
    /// How long a node may go without renewing its lease before it is marked unknown
    /// and tainted unreachable (seconds). Agents renew every 10 s, so it must be longer:
    /// a shorter one marks healthy nodes unknown between two renewals.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(11..))]
    node_monitor_grace_period: u64,
    /// The range pod IPs come from; each node gets a share of it (`spec.podCIDR`).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: skiff_core::Cidr,
    /// Prefix length of each node's share of --cluster-cidr. /22 holds 1,022 pods (the
    /// default --max-pods is 1,000), so a /16 serves 64 nodes.
    #[arg(long, default_value_t = 22)]
    node_cidr_mask_size: u8,
    /// The longest life of the certificates the cluster CA signs for nodes (as `8760h`,
    /// `30m`); nodes ask for new ones with a fifth of it left.
    #[arg(long, default_value = "8760h", value_parser = parse_signing_duration)]
    cluster_signing_duration: std::time::Duration,
}

fn parse_signing_duration(text: &str) -> Result<std::time::Duration, String> {
    let span: jiff::Span = text.parse().map_err(|_| format!("{text:?} is not a duration such as 8760h or 30m"))?;
    let duration = jiff::SignedDuration::try_from(span).map_err(|_| format!("{text:?} is not a fixed duration (use hours, not days)"))?;
    std::time::Duration::try_from(duration).ok().filter(|d| *d >= std::time::Duration::from_secs(10)).ok_or_else(|| format!("{text:?}: a certificate lives at least 10s"))
}

/// The file of the keys Secrets are encrypted with at rest.
const ENCRYPTION_KEYS: &str = "encryption.keys";

/// The store in `dir`, Secrets encrypted with the keys beside it (made at first start).
fn open_store(dir: &Path, event_retention: u64) -> anyhow::Result<skiff_store::EncryptedSecrets> {
    let store = RedbStore::open(&dir.join("state.redb"), StoreOptions { event_retention, ..Default::default() })
        .with_context(|| format!("opening the store in {} (is another skiff running on it?)", dir.display()))?;
    let keys = skiff_store::encrypted::Keys::load_or_create(&dir.join(ENCRYPTION_KEYS)).map_err(anyhow::Error::msg)?;
    Ok(skiff_store::EncryptedSecrets::new(Arc::new(store), keys))
}

/// `skiff secrets rotate-key`: a new sealing key, and every Secret sealed again with it.
pub async fn rotate_secrets_key(dir: &Path) -> anyhow::Result<()> {
    let keys = dir.join(ENCRYPTION_KEYS);
    anyhow::ensure!(keys.exists(), "{} has no {ENCRYPTION_KEYS}: is it a Skiff control plane's data directory?", dir.display());
    // Opened first: a running control plane holds the store, and nothing is changed then.
    let retention = StoreOptions::default().event_retention;
    drop(open_store(dir, retention)?);
    let id = skiff_store::encrypted::add_sealing_key(&keys).map_err(anyhow::Error::msg)?;
    let store = open_store(dir, retention)?;
    let count = skiff_store::encrypted::reseal_all(&store).await?;
    println!("Secrets are now encrypted with key {id}: {count} re-encrypted (the older keys stay in {} to read backups)", keys.display());
    Ok(())
}

/// The admin token: made at first start, kept in the data directory.
fn admin_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    // 256 bits from the OS, hex-encoded.
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes).context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    skiff_apiserver::tls::write_private(&path, &token)?;
    Ok(token)
}


/// The admin's kubeconfig: the cluster CA and both admin credentials, the token as the
/// current context's user and the client certificate in context `skiff-cert` (a user with
/// both would always be the certificate's: the server takes a certificate first, so
/// `kubectl --token=...` would not act as the token's user).
fn kubeconfig(server: &str, token: &str, ca_pem: &str, (cert, key): &(String, String)) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (ca, cert, key) = (b64(ca_pem), b64(cert), b64(key));
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: skiff-admin\n  user:\n    token: {token}\n- name: skiff-admin-cert\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
         contexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff-admin\n    namespace: default\n\
         - name: skiff-cert\n  context:\n    cluster: skiff\n    user: skiff-admin-cert\n    namespace: default\ncurrent-context: skiff\n"
    )
}

pub async fn run(args: ServerArgs, whole_cluster: bool) -> anyhow::Result<()> {
    let c = &args.controllers;
    let pod_ranges = skiff_controllers::node_ipam::PodRanges::new(c.cluster_cidr, c.node_cidr_mask_size).map_err(|e| anyhow::anyhow!("--node-cidr-mask-size: {e}"))?;
    anyhow::ensure!(!c.cluster_cidr.overlaps(&args.service_cidr), "--cluster-cidr {} overlaps --service-cidr {}", c.cluster_cidr, args.service_cidr);
    let dir = args.data_dir.clone().unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let token = admin_token(&dir)?;
    let store = open_store(&dir, args.watch_history.max(1))?;
    let mut config = Config::new(token.clone());
    config.service_cidr = args.service_cidr;
    config.max_body_bytes = args.max_request_bytes;
    let key_path = dir.join("service-account.key");
    config.service_account_key = Some(skiff_apiserver::authz::tokens::SigningKey::load_or_create(&key_path).map_err(anyhow::Error::msg)?);
    let auditor = Arc::new(args.audit.auditor(&dir)?);
    config.audit = Some(auditor.clone());
    let ps = &args.pod_security;
    config.pod_security = skiff_apiserver::pod_security::Defaults { enforce: ps.pod_security_enforce, audit: ps.pod_security_audit, warn: ps.pod_security_warn };
    anyhow::ensure!(args.metric_resolution >= std::time::Duration::from_secs(1), "--metric-resolution must be at least 1s");
    // The scheduler and controllers run here, beside the store: `/metrics` serves theirs.
    config.metrics_of = vec![skiff_store::metrics::register, skiff_scheduler::metrics::register, skiff_controllers::metrics::register];
    let api = ApiServer::new(Arc::new(store), config);
    tokio::spawn(skiff_apiserver::authz::rbac::follow(api.clone()));
    tokio::spawn(skiff_apiserver::resource_quota::follow(api.clone()));
    tokio::spawn(skiff_apiserver::metrics_api::collect(api.clone(), args.metric_resolution));
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Pods reach the API through the `kubernetes` Service; a wildcard listener is
    // advertised at the node's address.
    let advertise = if addr.ip().is_unspecified() { SocketAddr::new(crate::agent::default_ip().parse()?, addr.port()) } else { addr };
    api.bootstrap(advertise).await.map_err(|e| anyhow::anyhow!("bootstrapping the cluster: {}", e.message))?;
    // The serving certificate also names the `kubernetes` Service's address, where pods reach the API.
    let certs = skiff_apiserver::tls::load_or_create(&dir, &[addr.ip().to_string(), args.service_cidr.nth(1).to_string()])?;
    let kubeconfig_path = dir.join("kubeconfig");
    let host = if addr.ip().is_unspecified() { std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let admin = skiff_apiserver::tls::admin_certificate(&dir)?;
    // The API server's own client certificate, which agents take when it calls them (logs,
    // exec, stats): made anew at each start. Agents' serving certificates are the CA's.
    let (cert, key) = skiff_apiserver::tls::client_certificate(&dir, skiff_agent::server::API_SERVER_CLIENT, &["system:masters"], 365)?;
    skiff_apiserver::pod_logs::set_agent_tls(format!("{cert}{key}"), certs.ca_pem.clone());
    skiff_apiserver::tls::write_private(&kubeconfig_path, &kubeconfig(&format!("https://{host}"), &token, &certs.ca_pem, &admin))?;
    let what = if whole_cluster { "Skiff cluster" } else { "Skiff control plane" };
    println!("{what} is up: API at https://{host}");
    println!("  export KUBECONFIG={}", kubeconfig_path.display());
    println!("  kubectl get namespaces");
    tracing::info!(%addr, data_dir = %dir.display(), "serving the Kubernetes API");
    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let registry = crate::registry::start(&dir, &token, Some(crate::registry::pod_pull_tokens(api.clone())))?;
    let router = skiff_apiserver::router(api).merge(skiff_registry::router(registry));
    // The scheduler, controllers, proxy and agent are API clients like any other, wired
    // straight to the router (no socket, no TLS, same request path), each as its own user
    // with only its own role's rights.
    use skiff_apiserver::authz::{UserInfo, node::node_user};
    let client = |user, component| skiff_apiserver::in_process_client(router.clone(), user, component);
    let stop = crate::Stop::new();
    let scheduler = tokio::spawn(skiff_scheduler::run(client(UserInfo::scheduler(), "skiff-scheduler"), stop.wait()));
    let options = skiff_controllers::Options {
        node_monitor_grace_period: std::time::Duration::from_secs(args.controllers.node_monitor_grace_period),
        pod_ranges: Some(pod_ranges),
        root_ca: Some(certs.ca_pem.clone()),
        signer: Some(skiff_controllers::certificates::Signer {
            ca_cert_pem: certs.ca_pem.clone(),
            ca_key_pem: std::fs::read_to_string(dir.join("ca.key")).with_context(|| format!("reading {}", dir.join("ca.key").display()))?,
            duration: args.controllers.cluster_signing_duration,
        }),
    };
    let controllers = tokio::spawn(skiff_controllers::run(client(UserInfo::controllers(), "skiff-controllers"), options, stop.wait()));
    let mut loops = vec![scheduler, controllers];
    let mut agent_dir = None;
    if whole_cluster {
        // This node reaches the cluster's registry where the API listens, as any client would.
        let ca = crate::agent::pem_to_der(certs.ca_pem.as_bytes()).context("the cluster CA is not PEM")?;
        let registries = args.node.registries(&dir)?.with_cluster(&host.to_string(), vec![ca.clone()], Some(&token));
        let config = args.node.config(dir.join("agent"), &token, vec![ca], args.service_cidr, registries)?;
        loops.push(crate::agent::spawn_proxy(client(UserInfo::proxy(), "skiff-proxy"), &args.node, &config, args.service_cidr, stop.clone()));
        let client = client(node_user(&config.node_name), "skiff-agent");
        agent_dir = Some(config.data_dir.clone());
        tokio::spawn(async move {
            if let Err(e) = skiff_agent::run(client, config).await {
                tracing::error!(error = format!("{e:#}"), "the node agent stopped");
            }
        });
    }
    let serving = tokio::spawn(async move {
        skiff_apiserver::tls::serve(listener, router, &certs, async move {
            let _ = stopped.await;
        })
        .await
    });
    shutdown_signal().await;
    let _ = stop_serving.send(());
    // The scheduler, controllers and proxy stop at once; their in-flight requests end with them.
    stop.now();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), futures::future::join_all(loops)).await;
    // Open watches would hold a graceful shutdown for their whole timeout; every
    // acknowledged write is already durable, so give requests a moment and go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), serving).await;
    auditor.close();
    if let Some(dir) = agent_dir {
        let _ = tokio::task::spawn_blocking(move || skiff_agent::leave_containers(&dir)).await;
    }
    println!("{what} stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
