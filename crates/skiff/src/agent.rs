//! `skiff agent`: a node agent joining a cluster through its API.

use std::path::PathBuf;

use anyhow::Context;
use skiff_agent::registries::Registries;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Kubeconfig to reach the API with (default: $KUBECONFIG, then the one `skiff up` wrote).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// API server URL, with --token instead of a kubeconfig.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// Token for --server: a bootstrap token from `skiff token create` (`ID.SECRET`),
    /// exchanged once for the node's own client certificate, or a bearer token.
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// PEM file of the CA that signed the API server's certificate (for --server).
    #[arg(long, requires = "server")]
    certificate_authority: Option<PathBuf>,
    /// Where the agent keeps images, compiled code, logs and pod volumes (default: `agent`
    /// under skiff's data directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
    /// Virtual IP range of the cluster's Services (as given to `skiff server`).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: skiff_core::Cidr,
    /// Simulate this many hollow nodes (register, renew leases, report bound pods running)
    /// instead of running pods: for tests and benchmarks at scale.
    #[arg(long, hide = true)]
    hollow: Option<usize>,
    /// Name prefix of hollow nodes (`PREFIX-0`, `PREFIX-1`, …).
    #[arg(long, hide = true, default_value = "hollow")]
    hollow_prefix: String,
    /// Pods each hollow node accepts.
    #[arg(long, hide = true, default_value_t = 110)]
    hollow_pods: u32,
    /// CPU of each hollow node.
    #[arg(long, hide = true, default_value = "4")]
    hollow_cpu: String,
    /// Memory of each hollow node.
    #[arg(long, hide = true, default_value = "16Gi")]
    hollow_memory: String,
    /// Extra label for hollow nodes, `key=value` (repeatable).
    #[arg(long = "hollow-label", hide = true)]
    hollow_labels: Vec<String>,
}

/// How a real node is set up; shared by `skiff agent` and `skiff up`.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP, where the API server reaches its agent (default: the
    /// address of the default route, else 127.0.0.1).
    #[arg(long)]
    node_ip: Option<String>,
    /// Pods the node accepts.
    #[arg(long, default_value_t = 1000)]
    max_pods: u32,
    /// Wasm guests that may run at once.
    #[arg(long, default_value_t = 500)]
    max_instances: u32,
    /// A registry (`host[:port]`) to reach over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Registry mirrors and credentials, in k3s's `registries.yaml` form (default:
    /// `registries.yaml` in skiff's data directory, if it exists).
    #[arg(long)]
    registry_config: Option<PathBuf>,
    /// The resolver configuration names outside the cluster are forwarded from (as
    /// kubelet's --resolv-conf).
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Port the ingress controller serves HTTP on, on the node's address and 127.0.0.1 (0: none).
    #[arg(long, default_value_t = 80)]
    pub ingress_http_port: u16,
    /// Port the ingress controller serves HTTPS on (0: none).
    #[arg(long, default_value_t = 443)]
    pub ingress_https_port: u16,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Port of the agent's HTTPS endpoint (logs, stats); 0 picks a free one.
    #[arg(long, default_value_t = 10250)]
    agent_port: u16,
    /// Extra node label, `key=value` (repeatable).
    #[arg(long = "node-label")]
    node_labels: Vec<String>,
    /// Taints a new Node is registered with, `key[=value]:Effect` (comma-separated or
    /// repeated), as kubelet's flag.
    #[arg(long = "register-with-taints", value_delimiter = ',', value_parser = parse_taint)]
    register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
}

/// `key[=value]:Effect`, Effect one of NoSchedule, PreferNoSchedule, NoExecute.
fn parse_taint(text: &str) -> Result<k8s_openapi::api::core::v1::Taint, String> {
    let (key_value, effect) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not key[=value]:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!("{text:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute, not {effect:?}"));
    }
    let (key, value) = key_value.split_once('=').map_or((key_value, None), |(k, v)| (k, Some(v.to_string())));
    skiff_core::names::validate_qualified_name(key).map_err(|e| format!("{text:?}: the key {key:?} {e}"))?;
    Ok(k8s_openapi::api::core::v1::Taint { key: key.into(), value, effect: effect.into(), time_added: None })
}

impl NodeArgs {
    /// The agent's settings; it keeps images, compiled code, logs and volumes in `data_dir`.
    /// The registry set-up from `--registry-config` (else `registries.yaml` in `skiff_dir`)
    /// and `--insecure-registry`.
    pub fn registries(&self, skiff_dir: &std::path::Path) -> anyhow::Result<Registries> {
        let path = self.registry_config.clone().unwrap_or_else(|| skiff_dir.join("registries.yaml"));
        if self.registry_config.is_some() && !path.exists() {
            anyhow::bail!("--registry-config {}: no such file", path.display());
        }
        Registries::load(&path, self.insecure_registries.clone()).map_err(anyhow::Error::msg)
    }

    /// The node's name: `--node-name`, else the host name.
    pub fn name(&self) -> String {
        let hostname = || std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_lowercase()).unwrap_or_else(|_| "skiff-node".into());
        self.node_name.clone().unwrap_or_else(hostname)
    }

    /// `cluster_ca` (DER) signs the API server's client certificate, which the agent's
    /// endpoint lets in without `token`.
    pub fn config(&self, data_dir: PathBuf, token: &str, cluster_ca: Vec<Vec<u8>>, service_cidr: skiff_core::Cidr, registries: Registries) -> anyhow::Result<skiff_agent::AgentConfig> {
        Ok(skiff_agent::AgentConfig {
            node_name: self.name(),
            node_ip: self.node_ip.clone().unwrap_or_else(default_ip),
            data_dir,
            max_pods: self.max_pods,
            max_instances: self.max_instances,
            registries,
            port: self.agent_port,
            token: token.to_string(),
            cluster_ca,
            labels: key_values(&self.node_labels, "--node-label")?,
            taints: self.register_with_taints.clone(),
            cluster_dns: Some(skiff_agent::pod_dns::ClusterDns { server: cluster_dns(service_cidr), domain: self.cluster_domain.trim_matches('.').to_lowercase() }),
            // Shared with the node's proxy (`spawn_proxy`), whose ingress counts into it.
            proxied_requests: Default::default(),
            ready_pods: Default::default(),
            // The node's service proxy runs beside it (`spawn_proxy`).
            metrics_of: vec![skiff_proxy::metrics::register],
        })
    }
}

/// The node's service proxy, beside its agent. Without the service range made local
/// (no root, no `ip`), ClusterIPs cannot be served; NodePorts still are.
pub fn spawn_proxy(client: kube::Client, args: &NodeArgs, node: &skiff_agent::AgentConfig, service_cidr: skiff_core::Cidr, stop: crate::Stop) -> tokio::task::JoinHandle<()> {
    if let Err(why) = skiff_agent::network::make_services_local(service_cidr) {
        tracing::warn!(%service_cidr, %why, "ClusterIPs cannot be served on this node");
    }
    let node_ips: Vec<std::net::IpAddr> = node.node_ip.parse().into_iter().collect();
    // The ingress serves on the node's addresses and loopback.
    let mut ingress_ips = node_ips.clone();
    if !ingress_ips.contains(&std::net::Ipv4Addr::LOCALHOST.into()) {
        ingress_ips.push(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let on = |port: u16| if port == 0 { vec![] } else { ingress_ips.iter().map(|ip| std::net::SocketAddr::new(*ip, port)).collect() };
    let config = skiff_proxy::ProxyConfig {
        node_name: node.node_name.clone(),
        node_ips,
        cluster_dns: cluster_dns(service_cidr),
        cluster_domain: args.cluster_domain.trim_matches('.').to_lowercase(),
        ingress_http: on(args.ingress_http_port),
        ingress_https: on(args.ingress_https_port),
        proxied_requests: node.proxied_requests.clone(),
        ready_pods: node.ready_pods.clone(),
        upstream_dns: match std::fs::read_to_string(&args.resolv_conf) {
            Ok(conf) => skiff_proxy::dns::host_resolvers(&conf, cluster_dns(service_cidr)),
            Err(e) => {
                tracing::warn!(path = %args.resolv_conf.display(), error = %e, "no upstream resolvers: names outside the cluster will not resolve");
                Vec::new()
            }
        },
    };
    tokio::spawn(skiff_proxy::run(client, config, stop.wait()))
}

/// The cluster DNS address in a service range.
fn cluster_dns(service_cidr: skiff_core::Cidr) -> std::net::IpAddr {
    std::net::IpAddr::V4(service_cidr.dns_address())
}

/// The source address of the default route, found by connecting a UDP socket (which
/// sends nothing); 127.0.0.1 on a machine without one.
pub fn default_ip() -> String {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("10.255.255.255:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().map(|ip| ip.to_string()).unwrap_or_else(|_| "127.0.0.1".into())
}

fn key_values(items: &[String], flag: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    items
        .iter()
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("{flag} {l:?} is not key=value")))
        .collect()
}

/// How the agent reaches the API: `--server` and `--token`, else a kubeconfig.
async fn kube_config(args: &AgentArgs) -> anyhow::Result<kube::Config> {
    Ok(match (&args.server, &args.token) {
        (Some(server), Some(token)) => {
            let mut config = kube::Config::new(server.parse().with_context(|| format!("--server {server:?} is not a URL"))?);
            config.auth_info.token = Some(token.clone().into());
            match &args.certificate_authority {
                Some(ca) => {
                    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                    config.root_cert = Some(vec![pem_to_der(&pem).with_context(|| format!("{} holds no PEM certificate", ca.display()))?]);
                }
                None => config.accept_invalid_certs = true,
            }
            config
        }
        _ => crate::client::kube_config(args.kubeconfig.clone()).await?,
    })
}

/// The first certificate of a PEM file, DER.
pub fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem).ok().map(|c| c.to_vec())
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut kube_config = kube_config(&args).await?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| crate::default_data_dir().join("agent"));
    let joining = args.hollow.is_none() && args.token.as_deref().is_some_and(crate::join::is_bootstrap_token);
    // The agent's writes are recorded under its name (the field manager).
    kube_config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static("skiff-agent")));
    let client = if joining {
        // The bootstrap token asks for the node's certificate once; the node then is its
        // own user, and renews its certificate itself.
        let issued = crate::join::node_credential(&kube_config, &args.node.name(), &data_dir).await?;
        kube_config.auth_info.token = None;
        let node_client = crate::join::NodeClient::new(kube_config.clone(), &issued, &args.node.name(), &data_dir)?;
        tokio::spawn(node_client.clone().keep_renewed());
        node_client.client()
    } else {
        kube::Client::try_from(kube_config.clone())?
    };
    let Some(count) = args.hollow else {
        // The agent's endpoint takes the cluster's token, or (a joined node, which has none)
        // the API server's client certificate.
        let token = kube_config.auth_info.token.as_ref().map(|t| secrecy::ExposeSecret::expose_secret(t).to_string()).unwrap_or_default();
        anyhow::ensure!(joining || !token.is_empty(), "the kubeconfig has no bearer token; the agent's endpoint accepts the cluster's token");
        let registries = args.node.registries(&crate::default_data_dir())?;
        // A joined node holds no cluster token: its pods pull from the cluster's registry
        // with their own ServiceAccount tokens.
        let registries = crate::registry::with_cluster(registries, &kube_config)?;
        let cluster_ca = kube_config.root_cert.clone().unwrap_or_default();
        let config = args.node.config(data_dir, &token, cluster_ca, args.service_cidr, registries)?;
        println!("node agent {} starting", config.node_name);
        let stop = crate::Stop::new();
        let proxy = spawn_proxy(client.clone(), &args.node, &config, args.service_cidr, stop.clone());
        let dir = config.data_dir.clone();
        tokio::select! {
            r = skiff_agent::run(client, config) => r?,
            _ = crate::server::shutdown_signal() => {}
        }
        stop.now();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), proxy).await;
        tokio::task::spawn_blocking(move || skiff_agent::leave_containers(&dir)).await?;
        return Ok(());
    };
    let labels = key_values(&args.hollow_labels, "--hollow-label")?;
    let config = skiff_agent::hollow::HollowConfig {
        prefix: args.hollow_prefix,
        count,
        cpu: args.hollow_cpu,
        memory: args.hollow_memory,
        pods: args.hollow_pods,
        labels,
    };
    println!("simulating {count} hollow node(s) named {}-N", config.prefix);
    tokio::select! {
        r = skiff_agent::hollow::run(client, config) => r.context("hollow nodes")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_taint;

    #[test]
    fn taints_read_as_kubelet_reads_them() {
        let t = parse_taint("skiff.dev/wasm=true:NoSchedule").unwrap();
        assert_eq!((t.key.as_str(), t.value.as_deref(), t.effect.as_str()), ("skiff.dev/wasm", Some("true"), "NoSchedule"));
        let t = parse_taint("dedicated:NoExecute").unwrap();
        assert_eq!((t.key.as_str(), t.value, t.effect.as_str()), ("dedicated", None, "NoExecute"));
        assert!(parse_taint("dedicated").unwrap_err().contains("is not key[=value]:Effect"));
        assert!(parse_taint("a=b:Sometimes").unwrap_err().contains("the effect must be NoSchedule, PreferNoSchedule or NoExecute"));
        assert!(parse_taint("bad key!=x:NoSchedule").unwrap_err().contains("the key \"bad key!\""));
    }
}
