//! `skiff agent`: a node agent joining a cluster through its API.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Kubeconfig to reach the API with (default: $KUBECONFIG, then the one `skiff up` wrote).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// API server URL, with --token instead of a kubeconfig.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// PEM file of the CA that signed the API server's certificate (for --server).
    #[arg(long, requires = "server")]
    certificate_authority: Option<PathBuf>,
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

async fn client(args: &AgentArgs) -> anyhow::Result<kube::Client> {
    let config = match (&args.server, &args.token) {
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
    };
    Ok(kube::Client::try_from(config)?)
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text.lines().skip_while(|l| !l.starts_with("-----BEGIN")).skip(1).take_while(|l| !l.starts_with("-----END")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let client = client(&args).await?;
    let Some(count) = args.hollow else {
        anyhow::bail!("this build's agent cannot run pods yet (the Wasm runtime is not built); use --hollow N to simulate nodes");
    };
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.hollow_labels {
        let (k, v) = l.split_once('=').with_context(|| format!("--hollow-label {l:?} is not key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
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
