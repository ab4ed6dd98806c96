//! `skiff`: one binary for the whole orchestrator. `skiff up` runs a single-node cluster,
//! `skiff server` the control plane, and the client commands (`get`, `apply`, `describe`,
//! `delete`, `create namespace`, `logs`, `rollout status`) talk to any Kubernetes-compatible
//! API through a kubeconfig.

mod agent;
mod client;
mod join;
mod logs;
mod print;
mod registry;
mod rollout;
mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skiff", version, about = "A Kubernetes-compatible orchestrator for WebAssembly and OCI workloads")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole single-node cluster in this process.
    Up(server::ServerArgs),
    /// Run only the control plane (API server and store).
    Server(server::ServerArgs),
    /// Run a node agent against a cluster's API.
    Agent(agent::AgentArgs),
    /// Push a Wasm module or component as an OCI artifact (the CNCF Wasm layout), for pods
    /// to use as their image: to the cluster's own registry unless the name says another.
    Push {
        /// The `.wasm` file.
        file: PathBuf,
        /// Where to push it: `hello:v1` goes to the cluster's registry (pods name it
        /// `registry.skiff.internal/hello:v1`); `127.0.0.1:5000/hello:v1` to that registry.
        reference: String,
        /// Kubeconfig of the cluster whose registry takes bare names (default:
        /// $KUBECONFIG, then the one `skiff up` wrote).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Registry user name (with --password, or $SKIFF_REGISTRY_PASSWORD).
        #[arg(long, env = "SKIFF_REGISTRY_USERNAME")]
        username: Option<String>,
        #[arg(long, env = "SKIFF_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Reach the registry over plain HTTP (loopback registries always are).
        #[arg(long)]
        insecure: bool,
    },
    /// Create or update objects from YAML/JSON files (multi-document), a directory, or `-`.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        target: client::TargetArgs,
    },
    /// List objects of a kind, or show one.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        #[arg(short = 'w', long = "watch")]
        watch: bool,
        #[command(flatten)]
        target: client::TargetArgs,
    },
    /// Show an object in detail, with its events.
    Describe {
        kind: String,
        name: String,
        #[command(flatten)]
        target: client::TargetArgs,
    },
    /// Delete objects by kind and name, or those in files.
    Delete {
        kind: Option<String>,
        names: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[command(flatten)]
        target: client::TargetArgs,
    },
    /// Create an object from arguments.
    Create {
        #[command(subcommand)]
        what: CreateWhat,
    },
    /// Print a container's log (of a pod, or of a workload's first pod).
    Logs {
        #[command(flatten)]
        log: logs::LogArgs,
        #[command(flatten)]
        target: client::TargetArgs,
    },
    /// Follow a rollout.
    Rollout {
        #[command(subcommand)]
        what: RolloutWhat,
    },
    /// Stop every container pod a stopped node left running (containers outlive their
    /// agent, as kubelet's do, for the next agent to adopt), with their sandboxes, mounts
    /// and routes: k3s-killall.sh's role.
    Killall {
        /// The data directory given to `skiff up` or `skiff agent` (default: skiff's own).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Bootstrap tokens, with which new nodes join (`skiff agent --server URL --token T`).
    Token {
        #[command(subcommand)]
        what: TokenWhat,
    },
    /// Manage how Secrets are kept at rest.
    Secrets {
        #[command(subcommand)]
        what: SecretsWhat,
    },
    /// Print skiff's version, and the cluster's if one answers.
    Version {
        #[command(flatten)]
        target: client::TargetArgs,
    },
    /// Print a shell completion script: `source <(skiff completion bash)`.
    Completion {
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum SecretsWhat {
    /// Make a new encryption key and re-encrypt every Secret with it (the old keys stay,
    /// to read what a backup holds). Run it with the control plane stopped.
    RotateKey {
        /// The data directory given to `skiff up` or `skiff server` (default: skiff's own).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenWhat {
    /// Make a bootstrap token and print it (`ID.SECRET`): a node joining with it gets a
    /// client certificate of its own.
    Create {
        /// How long the token may be used (`24h`, `90m`; `0s`: until deleted).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// A note kept with the token.
        #[arg(long)]
        description: Option<String>,
        /// Kubeconfig of the cluster (default: $KUBECONFIG, then the one `skiff up` wrote).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RolloutWhat {
    /// Watch a Deployment, StatefulSet or DaemonSet until its rollout is done.
    Status {
        /// KIND/NAME, e.g. deploy/hello.
        target: String,
        /// Give up after this long (`90s`, `5m`; default: wait for good).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        #[command(flatten)]
        args: client::TargetArgs,
    },
}

/// Tells the long-running parts of a process (scheduler, controllers, proxy) to stop.
#[derive(Clone)]
pub(crate) struct Stop(tokio::sync::watch::Sender<bool>);

impl Stop {
    pub(crate) fn new() -> Stop {
        Stop(tokio::sync::watch::Sender::new(false))
    }

    pub(crate) fn now(&self) {
        self.0.send_replace(true);
    }

    /// Completes once `now` has been called.
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// `90`, `90s`, `5m` or `1h`, as kubectl's `--timeout` takes them.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = text.find(|c: char| !c.is_ascii_digit()).map(|i| text.split_at(i)).unwrap_or((text, "s"));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration like 90s or 5m"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?} is not a duration like 90s or 5m")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

/// `skiff version`: this binary's version, then the server's, or why there is none.
async fn version(target: &client::TargetArgs) -> anyhow::Result<()> {
    println!("Client Version: skiff {}", env!("CARGO_PKG_VERSION"));
    let v = client::Session::connect(target).await?.server_version;
    println!("Server Version: {} (skiff {})", v.git_version, v.git_commit);
    Ok(())
}

#[derive(Subcommand)]
enum CreateWhat {
    /// Create a namespace.
    #[command(alias = "ns")]
    Namespace {
        name: String,
        #[command(flatten)]
        target: client::TargetArgs,
    },
}

/// Where `skiff up` keeps its state by default (and so where client commands look for its
/// kubeconfig): `$XDG_DATA_HOME/skiff`, else `~/.local/share/skiff`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("skiff");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/skiff")
}

/// `skiff killall`: the agent's data directory is the one given, or its `agent`
/// directory where it is `skiff up`'s.
async fn killall(data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = data_dir.unwrap_or_else(default_data_dir);
    let agent_dir = [dir.clone(), dir.join("agent")].into_iter().find(|d| d.join("oci").is_dir())
        .ok_or_else(|| anyhow::anyhow!("{} is not the data directory of a node that ran containers (it has no oci/ nor agent/oci/)", dir.display()))?;
    tokio::task::spawn_blocking(move || skiff_agent::stop_containers(&agent_dir)).await?;
    Ok(())
}

async fn push(file: &std::path::Path, reference: &str, kubeconfig: Option<PathBuf>, username: Option<String>, password: Option<String>, insecure: bool) -> anyhow::Result<()> {
    use oci_client::secrets::RegistryAuth;
    use skiff_agent::registries::{CLUSTER_REGISTRY, Registries};
    let auth = match (username, password) {
        (Some(u), Some(p)) => RegistryAuth::Basic(u, p),
        (None, None) => RegistryAuth::Anonymous,
        _ => anyhow::bail!("give both --username and --password, or neither"),
    };
    let reference = if registry::names_no_registry(reference) { format!("{CLUSTER_REGISTRY}/{reference}") } else { reference.to_string() };
    let insecure: Vec<String> = if insecure { reference.split('/').next().map(|r| vec![r.to_string()]).unwrap_or_default() } else { vec![] };
    let mut registries = Registries::new(insecure);
    if reference.starts_with(&format!("{CLUSTER_REGISTRY}/")) {
        let config = client::kube_config(kubeconfig).await?;
        anyhow::ensure!(config.auth_info.token.is_some(), "the kubeconfig has no bearer token, which pushing to the cluster's registry needs");
        registries = registry::with_cluster(registries, &config)?;
    }
    skiff_agent::images::push(file, &reference, &auth, &registries).await?;
    println!("pushed {} as {reference}", file.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    // A container's shim is this binary too (see skiff_agent's OCI runtime).
    skiff_agent::runtime::oci::shim::run_if_asked();
    let cli = Cli::parse();
    // The cluster's parts log what they do; client commands say what went wrong in their
    // own error, without the client library's log lines beside it.
    let serving = matches!(cli.command, Command::Up(_) | Command::Server(_) | Command::Agent(_));
    let default_filter = if serving { "info" } else { "warn,kube_client=off" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .init();
    // One TLS crypto provider for every client in the process (kube, oci-client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => server::run(args, true).await,
            Command::Server(args) => server::run(args, false).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Push { file, reference, kubeconfig, username, password, insecure } => push(&file, &reference, kubeconfig, username, password, insecure).await,
            Command::Apply { files, target } => client::apply(&target, &files).await,
            Command::Get { kind, name, output, selector, watch, target } => {
                client::get(&target, &kind, name.as_deref(), output.as_deref(), selector.as_deref(), watch).await
            }
            Command::Describe { kind, name, target } => client::describe(&target, &kind, &name).await,
            Command::Delete { kind, names, files, target } => client::delete(&target, kind.as_deref(), &names, &files).await,
            Command::Create { what: CreateWhat::Namespace { name, target } } => client::create_namespace(&target, &name).await,
            Command::Logs { log, target } => logs::logs(&target, &log).await,
            Command::Rollout { what: RolloutWhat::Status { target, timeout, args } } => rollout::status(&args, &target, timeout).await,
            Command::Killall { data_dir } => killall(data_dir).await,
            Command::Token { what: TokenWhat::Create { ttl, description, kubeconfig } } => join::create_token(kubeconfig, &ttl, description).await,
            Command::Secrets { what: SecretsWhat::RotateKey { data_dir } } => server::rotate_secrets_key(&data_dir.unwrap_or_else(default_data_dir)).await,
            Command::Version { target } => version(&target).await,
            Command::Completion { shell } => {
                clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "skiff", &mut std::io::stdout());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
