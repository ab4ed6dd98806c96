//! The `serve` bench: requests per second and latency of the http-hello wasi:http
//! component served through a Skiff pod's own listener, against `wasmtime serve` running
//! the same `.wasm` on the same machine in the same run (each request gets a fresh
//! instance in both). Both are separate processes: `skiff up` and `wasmtime serve`. The
//! load comes from this bench's own generator: keep-alive HTTP/1.1 connections, each
//! sending `GET /` back to back for a fixed time, every latency recorded.
//!
//! The same pod is also measured through its Service's ClusterIP and through the Ingress
//! (the node's proxy, in user space), against the pod listener in the same run. And with
//! instance reuse: a pod annotated `skiff.dev/instance-reuse: N` against `wasmtime serve
//! --max-instance-reuse-count N`, and against the pod without reuse.
//!
//! It also measures scale from zero: a pod's creation to its first answer, and the first
//! request an idle pod serves (an idle function pod holds no instance) against warm ones;
//! and how long after a new pod answers its Service's ClusterIP sends to it (the pod's
//! Ready status, the EndpointSlice, and the proxy acting on it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::registry::{Child, example, free_port, skiff_binary, spawn_skiff, start_registry, wait_for_node};
use crate::report::percentile;

/// What one load run saw.
pub(crate) struct Load {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `connections` keep-alive connections to `addr`, each sending `GET /` for `length`.
pub(crate) async fn load(addr: SocketAddr, connections: usize, length: Duration) -> Load {
    let started = Instant::now();
    let until = started + length;
    let per_connection = futures::future::join_all((0..connections).map(|_| async move {
        let mut latencies = Vec::new();
        let mut errors = 0;
        while Instant::now() < until {
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await else {
                errors += 1;
                continue;
            };
            tokio::spawn(connection);
            while Instant::now() < until {
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                let request = hyper::Request::get("/").header("host", "bench").body(http_body_util::Empty::<bytes::Bytes>::new()).expect("a request");
                let sent = Instant::now();
                let ok = match sender.send_request(request).await {
                    Ok(r) => r.status().is_success() & r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                    break; // a new connection
                }
            }
        }
        (latencies, errors)
    }))
    .await;
    let elapsed = started.elapsed();
    let mut all = Load { requests: 0, errors: 0, elapsed, latencies: Vec::new() };
    for (latencies, errors) in per_connection {
        all.requests += latencies.len();
        all.errors += errors;
        all.latencies.extend(latencies);
    }
    all.latencies.sort();
    all
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One request on a fresh connection; its latency if it was answered 200.
pub(crate) async fn one_request(addr: SocketAddr) -> Option<Duration> {
    let sent = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/").header("host", "bench").body(http_body_util::Empty::<bytes::Bytes>::new()).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let ok = response.status().is_success();
    response.into_body().collect().await.ok()?;
    ok.then(|| sent.elapsed())
}

/// `wasmtime serve` of the component, each instance serving up to `reuse` requests,
/// warmed up and loaded as the pod is.
async fn wasmtime_serve(bin: &std::path::Path, wasm: &std::path::Path, reuse: usize, connections: usize, length: Duration) -> anyhow::Result<Load> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let _serve = Child(
        std::process::Command::new(bin)
            .args(["serve", "--addr", &addr.to_string(), "-S", "cli=y", "--max-instance-reuse-count", &reuse.to_string()])
            .arg(wasm)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    wait_answering(addr, "wasmtime serve").await?;
    let _ = load(addr, connections, Duration::from_millis(500)).await;
    Ok(load(addr, connections, length).await)
}

/// `wasmtime`: the one given, on PATH, or in the cache folder `cargo install
/// wasmtime-cli --root ~/.cache/wasmtime-cli` fills.
fn find_wasmtime(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("wasmtime"));
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wasmtime-cli/bin/wasmtime"));
    on_path.chain(cached).find(|p| p.is_file())
}

pub async fn wait_answering(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while one_request(addr).await.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not answer on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Requests per instance in the reuse rows: `wasmtime serve`'s default for WASIp3.
const REUSE: usize = 128;

/// A function pod; `reuse` instances serve that many requests each.
fn function_pod(name: &str, image: &str, reuse: Option<usize>) -> anyhow::Result<Pod> {
    let annotations = match reuse {
        Some(n) => json!({"skiff.dev/instance-reuse": n.to_string()}),
        None => json!({}),
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "fn", "image": image, "ports": [{"containerPort": 8080}]}]}
    }))?)
}

/// Creates a function pod and waits for its first answer: (its address, create → first
/// answer, the first request's own latency).
async fn scale_from_zero(api: &Api<Pod>, name: &str, image: &str, reuse: Option<usize>) -> anyhow::Result<(SocketAddr, Duration, Duration)> {
    let created = Instant::now();
    api.create(&PostParams::default(), &function_pod(name, image, reuse)?).await?;
    let deadline = created + Duration::from_secs(60);
    let ip = loop {
        if let Some(ip) = api.get(name).await?.status.and_then(|s| s.pod_ip) {
            break ip;
        }
        anyhow::ensure!(Instant::now() < deadline, "pod {name} got no IP");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let addr: SocketAddr = format!("{ip}:8080").parse()?;
    loop {
        if let Some(first) = one_request(addr).await {
            return Ok((addr, created.elapsed(), first));
        }
        anyhow::ensure!(Instant::now() < deadline, "pod {name} did not answer");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A ClusterIP Service for the pods labelled `app: NAME`, and its address.
async fn service_for(client: &kube::Client, name: &str) -> anyhow::Result<SocketAddr> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}))?;
    let created = api.create(&PostParams::default(), &svc).await?;
    let ip = created.spec.and_then(|s| s.cluster_ip).ok_or_else(|| anyhow::anyhow!("Service {name} got no ClusterIP"))?;
    Ok(format!("{ip}:80").parse()?)
}

/// A new pod behind a new Service: (its pod IP answering → the ClusterIP answering).
async fn endpoint_propagation(client: &kube::Client, api: &Api<Pod>, name: &str, image: &str) -> anyhow::Result<Duration> {
    let vip = service_for(client, name).await?;
    let (_, _, _) = scale_from_zero(api, name, image, None).await?;
    let answering = Instant::now();
    let deadline = answering + Duration::from_secs(30);
    while one_request(vip).await.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the ClusterIP of {name} did not answer");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(answering.elapsed())
}

pub struct Options {
    pub quick: bool,
    pub seconds: u64,
    pub connections: usize,
    pub cold_pods: usize,
    pub wasm: Option<PathBuf>,
    pub binary: Option<PathBuf>,
    pub wasmtime: Option<PathBuf>,
}

pub async fn run(o: Options) -> anyhow::Result<Vec<crate::report::Row>> {
    let length = Duration::from_secs(if o.quick { 1 } else { o.seconds });
    let cold_pods = if o.quick { 2 } else { o.cold_pods };
    let binary = skiff_binary(o.binary)?;
    let (wasm_path, _) = example(o.wasm, "wasm32-wasip2", "http-hello")?;
    let dir = tempfile::tempdir()?;
    let registry = start_registry(dir.path()).await?;
    let image = format!("{}/http-hello:v1", registry.host);
    skiff_agent::images::push(&wasm_path, &image, &oci_client::secrets::RegistryAuth::Anonymous, &Default::default()).await?;
    let (port, ingress_port) = (free_port()?, free_port()?);
    let (listen, ingress) = (format!("127.0.0.1:{port}"), ingress_port.to_string());
    let args = ["up", "--listen", &listen, "--agent-port", "0", "--node-name", "serve", "--node-ip", "127.0.0.1", "--cluster-cidr", "10.250.0.0/16",
        "--service-cidr", "10.251.0.0/16", "--ingress-http-port", &ingress, "--ingress-https-port", "0", "--data-dir"];
    let _cluster = spawn_skiff(&binary, &args, &dir.path().join("up"))?;
    let client = wait_for_node(&dir.path().join("up/kubeconfig"), "serve").await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Scale from zero, pod by pod; the first pod also pulls and compiles (not counted).
    let (pod_addr, _, _) = scale_from_zero(&api, "fn", &image, None).await?;
    let (reuse_addr, _, _) = scale_from_zero(&api, "fn-reuse", &image, Some(REUSE)).await?;
    let mut to_first_answer = Vec::new();
    let mut first_request = Vec::new();
    for i in 0..cold_pods {
        let (_, ready, first) = scale_from_zero(&api, &format!("cold-{i}"), &image, None).await?;
        to_first_answer.push(ready);
        first_request.push(first);
    }
    to_first_answer.sort();
    first_request.sort();
    let mut propagation = Vec::new();
    for i in 0..cold_pods {
        propagation.push(endpoint_propagation(&client, &api, &format!("ep-{i}"), &image).await?);
    }
    propagation.sort();

    // The first pod behind a Service and an Ingress.
    let vip = service_for(&client, "fn").await?;
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(client.clone(), "default");
    ingresses.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "fn"},
        "spec": {"rules": [{"host": "bench", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "fn", "port": {"number": 80}}}}]}}]}}))?).await?;
    let ingress_addr: SocketAddr = format!("127.0.0.1:{ingress_port}").parse()?;
    wait_answering(vip, "the ClusterIP").await?;
    wait_answering(ingress_addr, "the ingress").await?;

    // Warm up, then measure the pod's listener.
    let _ = load(pod_addr, o.connections, Duration::from_millis(500)).await;
    let skiff = load(pod_addr, o.connections, length).await;
    let _ = load(vip, o.connections, Duration::from_millis(500)).await;
    let cluster_ip = load(vip, o.connections, length).await;
    let _ = load(ingress_addr, o.connections, Duration::from_millis(500)).await;
    let through_ingress = load(ingress_addr, o.connections, length).await;
    let _ = load(reuse_addr, o.connections, Duration::from_millis(500)).await;
    let reused = load(reuse_addr, o.connections, length).await;

    let wasmtime_bin = find_wasmtime(o.wasmtime);
    let (wasmtime, wasmtime_reused) = match &wasmtime_bin {
        Some(bin) => (
            Some((bin.clone(), wasmtime_serve(bin, &wasm_path, 1, o.connections, length).await?)),
            Some(wasmtime_serve(bin, &wasm_path, REUSE, o.connections, length).await?),
        ),
        None => (None, None),
    };

    println!("serve: the http-hello component, {} keep-alive connections for {} s each, load from the bench itself (same 2 cores)", o.connections, length.as_secs());
    println!("{:<36} {:>10} {:>10} {:>10} {:>8}", "what", "req/s", "p50", "p99", "errors");
    let row = |what: &str, l: &Load| println!("{:<36} {:>10.0} {:>10} {:>10} {:>8}", what, l.rps(), ms(percentile(&l.latencies, 0.5)), ms(percentile(&l.latencies, 0.99)), l.errors);
    row("skiff pod listener (pod IP)", &skiff);
    row("through the Service's ClusterIP", &cluster_ip);
    row("through the Ingress", &through_ingress);
    row(&format!("skiff pod, instance reuse {REUSE}"), &reused);
    match (&wasmtime, &wasmtime_reused) {
        (Some((bin, w)), Some(wr)) => {
            row("wasmtime serve, same component", w);
            row(&format!("wasmtime serve, reuse {REUSE}"), wr);
            println!("{:<36} {:>9.2}×  (goal ≥ 0.9×; {})", "ratio skiff / wasmtime serve", skiff.rps() / w.rps(), bin.display());
            println!("{:<36} {:>9.2}×  (goal ≥ 1×)", "ratio with reuse", reused.rps() / wr.rps());
        }
        _ => println!("wasmtime serve: not found (on PATH or in ~/.cache/wasmtime-cli); install it with `cargo install wasmtime-cli --locked --version 48.0.8 --root ~/.cache/wasmtime-cli`"),
    }
    println!("scale from zero over {} pods: create → first answer p50 {} p99 {}; that first request p50 {} p99 {}; warm request p50 {}",
        to_first_answer.len(), ms(percentile(&to_first_answer, 0.5)), ms(percentile(&to_first_answer, 0.99)),
        ms(percentile(&first_request, 0.5)), ms(percentile(&first_request, 0.99)), ms(percentile(&skiff.latencies, 0.5)));
    println!("new pod answering → its ClusterIP answering, over {} pods: p50 {} p99 {}", propagation.len(), ms(percentile(&propagation, 0.5)), ms(percentile(&propagation, 0.99)));
    anyhow::ensure!(skiff.requests > 0 && cluster_ip.requests > 0 && through_ingress.requests > 0 && reused.requests > 0, "the pod answered no request on one of its paths");
    anyhow::ensure!(wasmtime.as_ref().is_none_or(|(_, w)| w.requests > 0) && wasmtime_reused.as_ref().is_none_or(|w| w.requests > 0), "wasmtime serve answered no request");
    use crate::report::{Row, thousands};
    let figure = |l: &Load| format!("{} req/s, p50 {} p99 {}", thousands(l.rps()), ms(percentile(&l.latencies, 0.5)), ms(percentile(&l.latencies, 0.99)));
    let (reference, ratio) = match &wasmtime {
        Some((_, w)) => (format!("wasmtime serve, same run: {}", figure(w)), Some(skiff.rps() / w.rps())),
        None => ("wasmtime serve not found".to_string(), None),
    };
    let direct = format!("pod listener, same run: {} req/s", thousands(skiff.rps()));
    let (reuse_reference, reuse_ratio) = match &wasmtime_reused {
        Some(w) => (format!("wasmtime serve --max-instance-reuse-count {REUSE}, same run: {}", figure(w)), Some(reused.rps() / w.rps())),
        None => ("wasmtime serve not found".to_string(), None),
    };
    Ok(vec![
        Row::new(format!("http-hello through the pod listener, {} connections", o.connections), figure(&skiff), reference, ratio),
        Row::new(format!("http-hello with instance reuse {REUSE}, {} connections", o.connections), figure(&reused), reuse_reference, reuse_ratio),
        Row::new(format!("http-hello, instance reuse {REUSE} against none"), format!("{} req/s", thousands(reused.rps())), direct.clone(), Some(reused.rps() / skiff.rps())),
        Row::new("http-hello through its Service's ClusterIP (userspace proxy)", figure(&cluster_ip), direct.clone(), Some(cluster_ip.rps() / skiff.rps())),
        Row::new("http-hello through the Ingress", figure(&through_ingress), direct, Some(through_ingress.rps() / skiff.rps())),
        Row::new(format!("new pod answering → its ClusterIP answering, p50 / p99 ({} pods)", propagation.len()),
            format!("{} / {}", ms(percentile(&propagation, 0.5)), ms(percentile(&propagation, 0.99))), "goal: within 1 s", None),
        Row::new(format!("scale from zero: pod create → first answer, p50 / p99 ({} pods)", to_first_answer.len()),
            format!("{} / {}", ms(percentile(&to_first_answer, 0.5)), ms(percentile(&to_first_answer, 0.99))), "—", None),
    ])
}
