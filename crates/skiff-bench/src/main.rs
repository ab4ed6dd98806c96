//! Skiff's benchmark harness. Each bench starts what it measures, runs a bounded load on
//! loopback and prints a table of figures (never asserting a speed).
//!
//! Every bench also takes `--json FILE` (its headline figures, with the machine) and
//! `--markdown` (those figures as the README's table); `table FILE…` joins runs' JSON.
//!
//! `cargo run --release -p skiff-bench -- api [--quick]`: durable ConfigMap creates through
//! the API server's HTTP path and through the Store alone, at 1, 16, 64 and 256 concurrent
//! clients, with throughput and p50/p99 latency, against raw puts of the same bytes into
//! a real etcd (Debian's `etcd-server`) started by the bench.
//!
//! `cargo run --release -p skiff-bench -- schedule [--quick]`: pods bound per second by
//! the scheduler on 100, 1,000 and 5,000 simulated nodes (Node objects, no agent), and the time
//! from a ReplicaSet's scale-up to each of its pods being bound (p50/p99), with the
//! controllers running too.
//!
//! `cargo run --release -p skiff-bench -- startup [--quick]`: Wasm pod create → Running
//! (warm and cold), instantiate time and memory per sleeping pod, on a real agent with a
//! docker-registry on loopback.
//!
//! `cargo run --release -p skiff-bench -- containers [--quick]`: OCI container pod create →
//! Running against the runtime's own `run` and `podman run`; pull + unpack of a
//! multi-layer image against `skopeo copy` + serial untar; agent memory per container pod.
//!
//! `cargo run --release -p skiff-bench -- density [--quick]`: memory per idle wasi:http
//! function pod, each listening on its own pod IP.
//!
//! `cargo run --release -p skiff-bench -- serve [--quick]`: requests/s and latency of the
//! http-hello wasi:http component through a pod's listener against `wasmtime serve`, and
//! scale from zero.
//!
//! `cargo run --release -p skiff-bench -- scale [--quick]`: 5,000 hollow nodes and 150,000
//! pods through Deployments, with mutating-API p99 and pod startup p99 against the
//! Kubernetes SLOs, and the control plane's peak RSS.
//!
//! `cargo run --release -p skiff-bench -- footprint [--quick]`: idle RSS and CPU of a whole
//! `skiff up` process, empty and with 10 Deployments, and the binary's size.
//!
//! `cargo run --release -p skiff-bench -- registry [--quick]`: image push and pull
//! throughput of the registry `skiff server` embeds against docker-registry, one at a time
//! and in a burst.
//!
//! `cargo run --release -p skiff-bench -- encoding [--quick]`: pod creates and lists of 1,000
//! pods through the API server with protobuf bodies against JSON, in the same run.
//!
//! `cargo run --release -p skiff-bench -- port-forward [--quick]`: throughput through
//! `kubectl port-forward` against straight to the pod, on a `skiff up`.
//!
//! `cargo run --release -p skiff-bench -- autoscale [--quick]`: first response from zero
//! replicas through the activator, and a load step to a new replica serving.
//!
//! `cargo run --release -p skiff-bench -- dashboard [--quick]`: the dashboard's pod list
//! with 10,000 pods, loaded fresh in headless Chromium, against `kubectl get pods -A`.
//!
//! `cargo run --release -p skiff-bench -- tour [--quick]`: from a fresh `skiff up` to the
//! README tour's first answer (examples/hello.yaml's Service on its ClusterIP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use skiff_store::{RedbStore, Store, StoreOptions};

// The allocator the skiff binary uses, so in-process benches measure what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod containers;
mod dashboard;
mod density;
mod encoding;
mod port_forward;
mod etcd;
mod autoscale;
mod first_answer;
mod handshake;
mod footprint;
mod push_pull;
mod registry;
mod report;
mod scale;
mod schedule;
mod serve;
mod startup;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// Also write the headline figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    /// Also print the headline figures as the README's markdown table.
    #[arg(long, global = true)]
    markdown: bool,
}

#[derive(Subcommand)]
enum Bench {
    /// Joins the JSON of several runs (`--json FILE`) into one markdown table.
    Table {
        files: Vec<std::path::PathBuf>,
    },
    /// Create throughput and latency: API (HTTP) and Store layer.
    Api {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Creates per concurrency level.
        #[arg(long, default_value_t = 20_000)]
        creates: usize,
        /// Concurrent client counts to measure (each at least 1).
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<std::num::NonZeroUsize>,
    },
    /// A new client's TLS handshake and first request to the API, against etcd over TLS.
    Handshake {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Connections per path, one at a time.
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
    },
    /// Bytes through `kubectl port-forward` against straight to the pod.
    PortForward {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// MiB per echo.
        #[arg(long, default_value_t = 16)]
        mib: usize,
        /// Echoes per path.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The skiff binary (default: beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Pod creates and lists with protobuf bodies against JSON, through the API server.
    Encoding {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Creates per encoding (16 clients).
        #[arg(long, default_value_t = 10_000)]
        creates: usize,
        /// Pods in the listed namespace.
        #[arg(long, default_value_t = 1_000)]
        list_size: usize,
        /// Lists per encoding.
        #[arg(long, default_value_t = 50)]
        lists: usize,
    },
    /// Scheduling throughput and ReplicaSet scale-up to bound latency on simulated nodes.
    Schedule {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Pods to schedule per node count.
        #[arg(long, default_value_t = 5_000)]
        pods: usize,
        /// ReplicaSet size for the scale-up latency.
        #[arg(long, default_value_t = 1_000)]
        replicas: usize,
    },
    /// Wasm pod start latency (warm and cold), instantiate time and memory per pod, on a
    /// real agent in process with a docker-registry on loopback.
    Startup {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Pods started one at a time with the image cached.
        #[arg(long, default_value_t = 200)]
        warm: usize,
        /// Pods started one at a time, each with a new image.
        #[arg(long, default_value_t = 20)]
        cold: usize,
        /// Sleeping pods at the end, for the memory figure.
        #[arg(long, default_value_t = 500)]
        sleeping: usize,
        /// The WASI command to run (default: the wasi-hello example built for wasm32-wasip1).
        #[arg(long)]
        wasm: Option<std::path::PathBuf>,
    },
    /// OCI container pods: start against crun/runc and podman, pull + unpack against
    /// skopeo + serial untar, agent memory per pod (needs root, crun or runc, busybox-static).
    Containers {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Pods started one at a time with the image present.
        #[arg(long, default_value_t = 20)]
        pods: usize,
        /// Idle pods at the end, for the memory figure.
        #[arg(long, default_value_t = 50)]
        idle: usize,
        /// MiB of files in each of the big image's 4 layers.
        #[arg(long, default_value_t = 32)]
        layer_mib: usize,
    },
    /// Memory per idle wasi:http function pod on one node.
    /// Requests/s and latency through a pod's listener vs `wasmtime serve`; scale from zero.
    Serve {
        /// Short runs, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Seconds of load on each server.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep-alive connections the load generator holds open.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Pods created one by one to time scale from zero.
        #[arg(long, default_value_t = 20)]
        cold_pods: usize,
        /// The wasi:http component (default: the http-hello example built for wasm32-wasip2).
        #[arg(long)]
        wasm: Option<std::path::PathBuf>,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// The wasmtime CLI (default: on PATH, else ~/.cache/wasmtime-cli/bin/wasmtime).
        #[arg(long)]
        wasmtime: Option<std::path::PathBuf>,
    },
    /// The scalability envelope: hollow nodes, pods through Deployments, SLO latencies.
    Scale {
        /// Tiny sizes, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Hollow nodes.
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Pods, created through Deployments.
        #[arg(long, default_value_t = 150_000)]
        pods: usize,
        /// Replicas per Deployment.
        #[arg(long, default_value_t = 100)]
        per_deployment: usize,
        /// Pods per second the Deployments are created at: a pace the control plane
        /// sustains on 2 cores (500/s overran it).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Stop early when the control plane's RSS passes this many GiB.
        #[arg(long, default_value_t = 18.0)]
        max_rss_gib: f64,
        /// Stop early (and report) this many minutes after the first Deployment.
        #[arg(long, default_value_t = 60.0)]
        max_minutes: f64,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    Density {
        /// A few pods, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Pod counts to measure, each on a fresh cluster.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        counts: Vec<usize>,
        /// The wasi:http component (default: the http-hello example built for wasm32-wasip2).
        #[arg(long)]
        wasm: Option<std::path::PathBuf>,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Scale from zero through the activator, and a load step to a new replica serving.
    Autoscale {
        /// A few trials, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Requests from zero, each after the function went back to zero.
        #[arg(long, default_value_t = 50)]
        trials: usize,
        /// Load steps from one replica.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Keep-alive clients of the load step.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// From a fresh `skiff up` to the README tour's first answer.
    Tour {
        /// One run, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Fresh clusters started, one after another.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// The dashboard's pod list with 10,000 pods in headless Chromium, against kubectl.
    Dashboard {
        /// 500 pods, one load, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Pods in the cluster.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Fresh page loads (and kubectl runs) measured.
        #[arg(long, default_value_t = 5)]
        loads: usize,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Image push and pull throughput of the embedded registry against docker-registry.
    Registry {
        /// Small images, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Images pushed and pulled per phase.
        #[arg(long, default_value_t = 32)]
        images: usize,
        /// Size of each image's one layer, in MiB.
        #[arg(long, default_value_t = 8)]
        layer_mib: usize,
        /// Images pushed (and pulled) at once in the burst phase.
        #[arg(long, default_value_t = 8)]
        at_once: usize,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Idle RSS and CPU of a whole `skiff up`, empty and with 10 Deployments, and the
    /// binary's size.
    Footprint {
        /// A short idle window, to check the bench still runs.
        #[arg(long)]
        quick: bool,
        /// Length of each idle window, in seconds.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
        /// The skiff binary (default: the one built beside this bench).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// The WASI command the Deployments run (default: the wasi-hello example).
        #[arg(long)]
        wasm: Option<std::path::PathBuf>,
    },
}

struct Figures {
    what: String,
    clients: usize,
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn percentile(&self, p: f64) -> Duration {
        report::percentile(&self.latencies, p)
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            self.what,
            self.clients,
            self.ops,
            self.rate(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
        )
    }
}

fn configmap(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "namespace": "default",
        "labels": {"bench": "api"}}, "data": {"key": "value", "index": i.to_string()}})
}

/// Runs `total` operations split over `clients` tasks; each op is timed.
async fn drive<F, Fut>(what: &str, clients: usize, total: usize, op: F) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while i < total {
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
                i += clients;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    latencies.sort();
    Ok(Figures { what: what.into(), clients, ops: total, elapsed: start.elapsed(), latencies })
}

async fn api_bench(quick: bool, creates: usize, levels: Vec<std::num::NonZeroUsize>) -> anyhow::Result<Vec<report::Row>> {
    let creates = if quick { 200 } else { creates };
    let mut rows = Vec::new();
    for clients in levels.into_iter().map(std::num::NonZeroUsize::get) {
        let level_creates = if clients == 1 { creates / 10 } else { creates };
        // The reference: the same object bytes put raw into a real etcd.
        let dir = tempfile::tempdir()?;
        let etcd = etcd::start(dir.path()).await?;
        let kv = etcd.client.kv_client();
        rows.push(drive("etcd raw put (gRPC, reference)", clients, level_creates, move |i| {
            let mut kv = kv.clone();
            async move {
                kv.put(format!("/registry/configmaps/default/cm-{i}"), serde_json::to_vec(&configmap(i))?, None).await?;
                Ok(())
            }
        }).await.context("etcd reference")?);
        drop(etcd);

        // A fresh store per path and level, so every run writes into the same-sized database.
        let dir = tempfile::tempdir()?;
        let store = Arc::new(RedbStore::open(&dir.path().join("db"), StoreOptions::default())?);
        rows.push(drive("Store (redb, no HTTP)", clients, level_creates, move |i| {
            let s = store.clone();
            async move {
                s.create(&format!("/core/configmaps/default/cm-{i}"), configmap(i)).await?;
                Ok(())
            }
        }).await?);

        rows.push(api_path(clients, level_creates, ApiMode::AS_SERVED).await.context("API bench")?);
        rows.push(api_path(clients, level_creates, ApiMode { authorization: false, ..ApiMode::AS_SERVED }).await.context("API bench without authorization")?);
        rows.push(api_path(clients, level_creates, ApiMode { audit: false, ..ApiMode::AS_SERVED }).await.context("API bench without the audit log")?);
        rows.push(api_path(clients, level_creates, ApiMode { as_editor: true, ..ApiMode::AS_SERVED }).await.context("API bench as a user bound to edit")?);
        rows.push(api_path(clients, level_creates, ApiMode { metrics: false, ..ApiMode::AS_SERVED }).await.context("API bench without request metrics")?);
    }
    println!("api bench: durable ConfigMap creates ({})", report::machine());
    println!("| path | clients | creates | creates/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", r.row());
    }
    // Headlines: each path against etcd's raw puts at the same concurrency, from 64
    // clients up (or the highest level measured, when all are below).
    let headline_from = rows.iter().map(|r| r.clients).max().unwrap_or(0).min(64);
    let mut headlines = Vec::new();
    for level in rows.chunks(7) {
        let [etcd, paths @ ..] = level else { continue };
        if etcd.clients < headline_from {
            continue;
        }
        let reference = format!("etcd raw put, same run: {}/s", report::thousands(etcd.rate()));
        let figure = |f: &Figures| format!("{}/s, p99 {:.1} ms", report::thousands(f.rate()), f.percentile(0.99).as_secs_f64() * 1e3);
        for f in paths {
            headlines.push(report::Row::new(format!("durable creates/s, {} clients, {}", f.clients, f.what), figure(f), reference.clone(), Some(f.rate() / etcd.rate())));
        }
        if let [_, with, no_authorization, no_audit, editor, no_metrics] = paths {
            headlines.push(report::Row::new(format!("durable creates/s, {} clients, with request metrics against without", with.clients), figure(with),
                format!("without, same run: {}/s (goal ≥ 0.97×)", report::thousands(no_metrics.rate())), Some(with.rate() / no_metrics.rate())));
            headlines.push(report::Row::new(format!("durable creates/s, {} clients, as a user RBAC allows against no authorization", editor.clients), figure(editor),
                format!("no authorization, same run: {}/s (goal ≥ 0.9×)", report::thousands(no_authorization.rate())), Some(editor.rate() / no_authorization.rate())));
            headlines.push(report::Row::new(format!("durable creates/s, {} clients, with authorization against without", with.clients), figure(with),
                format!("without, same run: {}/s (goal ≥ 0.9×)", report::thousands(no_authorization.rate())), Some(with.rate() / no_authorization.rate())));
            headlines.push(report::Row::new(format!("durable creates/s, {} clients, with the audit log against without", with.clients), figure(with),
                format!("without, same run: {}/s (goal ≥ 0.9×)", report::thousands(no_audit.rate())), Some(with.rate() / no_audit.rate())));
        }
    }
    Ok(headlines)
}

/// What of the API server's request path runs: all of it as `skiff up` serves it, or
/// without a part, to measure what it costs.
#[derive(Clone, Copy)]
struct ApiMode {
    /// Impersonation and RBAC.
    authorization: bool,
    /// The audit log, with the default policy (every create logged).
    audit: bool,
    /// Requests impersonate a user RBAC allows through a RoleBinding to `edit` (the admin
    /// is in `system:masters`, which RBAC never consults).
    as_editor: bool,
    /// Requests counted in `/metrics`.
    metrics: bool,
}

/// The user the bench's requests impersonate in [`ApiMode::as_editor`].
const EDITOR: &str = "bench-editor";

impl ApiMode {
    const AS_SERVED: ApiMode = ApiMode { authorization: true, audit: true, as_editor: false, metrics: true };

    fn name(self) -> &'static str {
        match (self.authorization, self.audit) {
            _ if self.as_editor => "API server (HTTP, JSON), as a user bound to edit",
            _ if !self.metrics => "API server (HTTP, JSON), no request metrics",
            (true, true) => "API server (HTTP, JSON)",
            (false, _) => "API server (HTTP, JSON), no authorization",
            (true, false) => "API server (HTTP, JSON), no audit log",
        }
    }
}

/// An API server over a fresh store, on plain HTTP on loopback (token `bench-token`): its
/// address, its task, and the store's directory (removed when dropped; it holds the
/// audit log too).
async fn serve_api(mode: ApiMode) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("db"), StoreOptions::default())?);
    let audit = match mode.audit {
        true => {
            use skiff_apiserver::audit::{AuditFile, Auditor, Policy, Rotation};
            let file = AuditFile::open(&dir.path().join("audit.log"), Rotation { max_bytes: 100 << 20, max_backups: 5 })?;
            Some(Arc::new(Auditor::new(Policy::default_policy(), file)))
        }
        false => None,
    };
    let config = skiff_apiserver::Config { authorization: mode.authorization, audit, request_metrics: mode.metrics, ..skiff_apiserver::Config::new("bench-token".into()) };
    let server = skiff_apiserver::ApiServer::new(store, config);
    server.bootstrap(([127, 0, 0, 1], 6443).into()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    if mode.as_editor {
        let bindings = skiff_core::resources::find("rbac.authorization.k8s.io", "v1", "rolebindings").expect("served");
        let binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "bench-editor"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": EDITOR}]});
        server.create_object(bindings, Some("default"), binding, Default::default()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(listener, skiff_apiserver::router(server)).await });
    Ok((addr, serving, dir))
}

/// ConfigMap creates through a fresh API server's whole HTTP request path, each client on
/// its own HTTP/1.1 connection, as separate processes would be. (Multiplexing them all on
/// one HTTP/2 connection, as the etcd reference's gRPC channel does, measured slower.)
async fn api_path(clients: usize, creates: usize, mode: ApiMode) -> anyhow::Result<Figures> {
    let (addr, serving, _dir) = serve_api(mode).await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let url = format!("http://{addr}/api/v1/namespaces/default/configmaps");
    let figures = drive(mode.name(), clients, creates, move |i| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut req = http::Request::post(&url);
            if mode.as_editor {
                req = req.header("Impersonate-User", EDITOR);
            }
            let req = req
                .header("Authorization", "Bearer bench-token")
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&configmap(i))?)))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(status == 201, "create answered {status}: {}", String::from_utf8_lossy(&body));
            Ok(())
        }
    })
    .await;
    serving.abort();
    figures
}

fn main() -> anyhow::Result<()> {
    // The containers bench runs a node agent in this process, whose containers' shims are
    // this binary.
    skiff_agent::runtime::oci::shim::run_if_asked();
    // The in-process parts log only when asked (SKIFF_LOG, as for `skiff`): a bench's
    // output is its figures, and the logs say where the time went.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    // One TLS crypto provider for the process's HTTPS clients (oci-client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let (name, quick) = match &cli.bench {
        Bench::Table { files } => {
            let runs = files.iter().map(|f| Ok(serde_json::from_slice(&std::fs::read(f).with_context(|| format!("reading {}", f.display()))?)?)).collect::<anyhow::Result<Vec<serde_json::Value>>>()?;
            print!("{}", report::markdown(&runs)?);
            return Ok(());
        }
        Bench::Api { quick, .. } => ("api", *quick),
        Bench::Encoding { quick, .. } => ("encoding", *quick),
        Bench::Handshake { quick, .. } => ("handshake", *quick),
        Bench::PortForward { quick, .. } => ("port-forward", *quick),
        Bench::Schedule { quick, .. } => ("schedule", *quick),
        Bench::Startup { quick, .. } => ("startup", *quick),
        Bench::Containers { quick, .. } => ("containers", *quick),
        Bench::Serve { quick, .. } => ("serve", *quick),
        Bench::Density { quick, .. } => ("density", *quick),
        Bench::Scale { quick, .. } => ("scale", *quick),
        Bench::Footprint { quick, .. } => ("footprint", *quick),
        Bench::Registry { quick, .. } => ("registry", *quick),
        Bench::Tour { quick, .. } => ("tour", *quick),
        Bench::Dashboard { quick, .. } => ("dashboard", *quick),
        Bench::Autoscale { quick, .. } => ("autoscale", *quick),
    };
    let rows = match cli.bench {
        Bench::Table { .. } => unreachable!("answered above"),
        Bench::Api { quick, creates, clients } => api_bench(quick, creates, clients).await,
        Bench::Handshake { quick, connections } => handshake::run(quick, connections).await,
        Bench::Encoding { quick, creates, list_size, lists } => encoding::run(quick, creates, list_size, lists).await,
        Bench::PortForward { quick, mib, rounds, binary } => port_forward::run(quick, mib, rounds, binary).await,
        Bench::Schedule { quick, pods, replicas } => schedule::run(quick, pods, replicas).await,
        Bench::Startup { quick, warm, cold, sleeping, wasm } => startup::run(quick, warm, cold, sleeping, wasm).await,
        Bench::Containers { quick, pods, idle, layer_mib } => containers::run_bench(quick, pods, idle, layer_mib).await,
        Bench::Serve { quick, seconds, connections, cold_pods, wasm, binary, wasmtime } => {
            serve::run(serve::Options { quick, seconds, connections, cold_pods, wasm, binary, wasmtime }).await
        }
        Bench::Scale { quick, nodes, pods, per_deployment, rate, max_rss_gib, max_minutes, binary } => {
            scale::run(scale::Options { quick, nodes, pods, per_deployment, rate, max_rss_gib, max_minutes, binary }).await
        }
        Bench::Density { quick, counts, wasm, binary } => density::run(quick, counts, wasm, binary).await,
        Bench::Footprint { quick, idle_seconds, binary, wasm } => footprint::run(quick, idle_seconds, binary, wasm).await,
        Bench::Registry { quick, images, layer_mib, at_once, binary } => push_pull::run(quick, images, layer_mib, at_once, binary).await,
        Bench::Tour { quick, runs, binary } => first_answer::run(quick, runs, binary).await,
        Bench::Dashboard { quick, pods, loads, binary } => dashboard::run(quick, pods, loads, binary).await,
        Bench::Autoscale { quick, trials, steps, connections, binary } => autoscale::run(quick, trials, steps, connections, binary).await,
    }?;
    anyhow::ensure!(!rows.is_empty(), "the {name} bench produced no figures");
    let run = report::to_json(name, quick, &rows);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&run)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if cli.markdown {
        println!();
        print!("{}", report::markdown(&[run])?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Bench, Cli};

    #[test]
    fn api_client_counts_parse_and_zero_is_refused() {
        let cli = Cli::try_parse_from(["skiff-bench", "api", "--clients", "1,64"]).unwrap();
        let Bench::Api { clients, .. } = cli.bench else { panic!("not the api bench") };
        assert_eq!(clients.iter().map(|c| c.get()).collect::<Vec<_>>(), [1, 64]);
        let err = Cli::try_parse_from(["skiff-bench", "api", "--clients", "64,0"]).err().expect("0 clients refused").to_string();
        assert!(err.contains("--clients"), "{err}");
    }
}
