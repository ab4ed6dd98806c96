//! The listeners of an HTTP function pod: HTTP/1.1 and HTTP/2 cleartext on the pod's IP at
//! each TCP `containerPort`, every request handed to a fresh instance of the component
//! (or a reused one, where the pod opts in: [`super::reuse`]).
//! A pod serves at most its concurrency limit of requests at once; the rest wait. Clients
//! that dribble their headers (slowloris) are cut off, and oversized heads refused, so
//! one bad client costs others nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use wasmtime::component::Component;

use super::http::{Proxy, RequestLimits};
use super::command::GuestSpec;
use super::WasmRuntime;
use crate::runtime::StartError;

/// Requests at once per pod: `skiff.dev/max-concurrency`, else 64 per CPU of the limit
/// (64 without one).
pub const CONCURRENCY_ANNOTATION: &str = "skiff.dev/max-concurrency";
/// Seconds a request may take: `skiff.dev/request-timeout-seconds`, default 30.
pub const TIMEOUT_ANNOTATION: &str = "skiff.dev/request-timeout-seconds";
/// Comma-separated hosts the function may send requests to: names, `*.SUFFIX`, or `*` for
/// any. By default only the cluster's Services, by their DNS names.
pub const ALLOWED_HOSTS_ANNOTATION: &str = "skiff.dev/allowed-outbound-hosts";
const CLUSTER_SERVICES: &str = "*.svc,*.svc.cluster.local";

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head accepted; a bigger one is answered 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Everything a pod's listeners need.
pub struct Function {
    runtime: Arc<WasmRuntime>,
    proxy: Arc<Proxy>,
    guest: GuestSpec,
    limits: RequestLimits,
    permits: Arc<tokio::sync::Semaphore>,
    series: crate::metrics::FunctionSeries,
}

/// Prepares a component to serve, or says why it cannot.
pub fn prepare(runtime: &Arc<WasmRuntime>, component: &Component, pod: &Pod, container: &Container, guest: GuestSpec, dns: Option<&crate::pod_dns::ClusterDns>) -> Result<(Arc<Function>, Vec<u16>), StartError> {
    let reuse = super::reuse::max_requests(pod.annotations().get(super::reuse::REUSE_ANNOTATION).map(String::as_str)).map_err(StartError)?;
    let proxy = Arc::new(runtime.proxy(component, reuse)?);
    let ports: Vec<u16> = container.ports.iter().flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    if ports.is_empty() {
        return Err(StartError("a wasi:http/proxy component serves on its containerPorts, and this container declares none".into()));
    }
    let annotation = |k: &str| pod.annotations().get(k).cloned();
    let cpu_cores = guest.cpu_limit_milli.map(|m| m.div_ceil(1000).max(1));
    let concurrency = match annotation(CONCURRENCY_ANNOTATION) {
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| StartError(format!("{CONCURRENCY_ANNOTATION} {v:?} is not a positive integer")))?,
        None => cpu_cores.map_or(64, |c| 64 * c as usize),
    };
    let timeout = match annotation(TIMEOUT_ANNOTATION) {
        Some(v) => v.parse::<f64>().ok().filter(|s| *s > 0.0).map(Duration::from_secs_f64).ok_or_else(|| StartError(format!("{TIMEOUT_ANNOTATION} {v:?} is not a positive number")))?,
        None => Duration::from_secs(30),
    };
    let allowed_hosts = annotation(ALLOWED_HOSTS_ANNOTATION).unwrap_or_else(|| CLUSTER_SERVICES.into()).split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
    let resolver = dns.map(|d| Arc::new(crate::pod_dns::PodResolver::new(d, &pod.namespace().unwrap_or_default())));
    let limits = RequestLimits { memory_limit: guest.memory_limit, timeout, allowed_hosts: Arc::new(allowed_hosts), resolver };
    let series = crate::metrics::FunctionSeries::new(&pod.namespace().unwrap_or_default(), &pod.name_any());
    Ok((Arc::new(Function { runtime: runtime.clone(), proxy, guest, limits, permits: Arc::new(tokio::sync::Semaphore::new(concurrency)), series }), ports))
}

/// Binds every port on `ip`; an error names the port.
pub async fn bind(ip: &str, ports: &[u16]) -> Result<Vec<tokio::net::TcpListener>, StartError> {
    let mut listeners = Vec::new();
    for port in ports {
        let listener = tokio::net::TcpListener::bind((ip, *port)).await.map_err(|e| StartError(format!("listening on {ip}:{port}: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// How long a terminating function keeps taking new connections.
const LINGER: Duration = Duration::from_secs(1);

/// Serves until the pod is told to terminate or a listener fails. On termination, as a
/// process would on SIGTERM, it stops taking connections (the proxies move on to other
/// endpoints), lets every open connection finish the requests it has (keep-alive ones
/// close after their current request), and returns Ok.
pub async fn serve(function: Arc<Function>, listeners: Vec<tokio::net::TcpListener>, mut terminate: tokio::sync::watch::Receiver<bool>) -> std::io::Result<()> {
    function.guest.usage.serves_http.store(true, std::sync::atomic::Ordering::Relaxed);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accepting = tokio::task::JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::net::TcpStream>(64);
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    http.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEAD_BYTES as u32);
    let http = Arc::new(http);
    for listener in listeners {
        let tx = tx.clone();
        accepting.spawn(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                if tx.send(stream).await.is_err() {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
    }
    drop(tx);
    let connect = |stream: tokio::net::TcpStream| {
        let (function, http, watcher) = (function.clone(), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let function = function.clone();
                async move { Ok::<_, Infallible>(function.handle(request).await) }
            });
            let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
        });
    };
    // Instances kept for reuse are dropped once idle (a no-op for a pod without reuse).
    let mut prune = tokio::time::interval(super::reuse::IDLE_FOR);
    loop {
        tokio::select! {
            Some(stream) = rx.recv() => connect(stream),
            _ = prune.tick() => function.proxy.release_idle(false),
            Some(done) = accepting.join_next() => {
                return Err(match done {
                    Ok(Err(e)) => e,
                    _ => std::io::Error::other("a listener stopped"),
                });
            }
            _ = terminate.wait_for(|t| *t) => break,
        }
    }
    // Proxies that have not yet seen this endpoint go may still send connections for a
    // moment: take them, then close the listeners (new connections are refused and the
    // proxies move on to another endpoint); every accepted connection is served.
    let linger = tokio::time::sleep(LINGER);
    tokio::pin!(linger);
    loop {
        tokio::select! {
            Some(stream) = rx.recv() => connect(stream),
            _ = &mut linger => break,
        }
    }
    accepting.abort_all();
    rx.close();
    while let Some(stream) = rx.recv().await {
        connect(stream);
    }
    graceful.shutdown().await;
    function.proxy.release_idle(true);
    Ok(())
}

impl Function {
    async fn handle(&self, request: hyper::Request<hyper::body::Incoming>) -> hyper::Response<super::http::HttpBody> {
        use std::sync::atomic::Ordering::Relaxed;
        let usage = &self.guest.usage;
        // Counted from arrival, so requests waiting for a permit count as demand.
        usage.requests.fetch_add(1, Relaxed);
        usage.in_flight.fetch_add(1, Relaxed);
        let started = std::time::Instant::now();
        let response = match self.permits.clone().acquire_owned().await {
            Ok(permit) => self.runtime.handle(&self.proxy, request, &self.guest, &self.limits, permit).await,
            Err(_) => super::http::error(503, "the pod is stopping"),
        };
        usage.in_flight.fetch_sub(1, Relaxed);
        usage.request_nanos.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        self.series.answered(response.status().as_u16(), started.elapsed());
        response
    }
}
