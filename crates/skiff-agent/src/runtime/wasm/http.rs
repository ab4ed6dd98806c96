//! wasi:http function pods: a component that exports `wasi:http/incoming-handler` is
//! served, not run. Every request gets a fresh instance from a pre-instantiated
//! `ProxyPre` in the pooling allocator (or, where the pod opts in, one kept from its
//! previous requests: [`super::reuse`]), so an idle pod holds no instance at all. A
//! request runs under the container's memory limit and a deadline, and a trap, a memory
//! overrun or a deadline fails that request alone (500, 500, 504) and ends its instance.
//! Outgoing requests go only to the hosts a pod is allowed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use wasmtime::Store;
use wasmtime::component::{Component, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::command::GuestSpec;
use super::limits::Limiter;
use super::reuse::{Pool, Warm};
use super::WasmRuntime;
use crate::runtime::StartError;

/// The export that makes a component an HTTP function.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

pub type HttpBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A component ready to serve one pod's requests.
pub struct Proxy {
    pre: ProxyPre<HttpState>,
    /// Instances kept between requests, where the pod opts in to reuse.
    pool: Option<Pool>,
}

impl Proxy {
    /// Drops the instances kept idle too long (or all of them: the pod is stopping).
    pub fn release_idle(&self, all: bool) {
        match &self.pool {
            Some(pool) if all => pool.clear(),
            Some(pool) => pool.prune(),
            None => {}
        }
    }
}

/// What each request's instance gets.
#[derive(Clone)]
pub struct RequestLimits {
    /// `resources.limits.memory`.
    pub memory_limit: Option<u64>,
    /// Longest a request may take to answer.
    pub timeout: Duration,
    /// Hosts outgoing requests may go to.
    pub allowed_hosts: Arc<Vec<String>>,
    /// How the pod resolves names (through the cluster DNS).
    pub resolver: Option<Arc<crate::pod_dns::PodResolver>>,
}

pub struct HttpState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: OutgoingPolicy,
    limiter: Limiter,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { hooks: &mut self.hooks, table: &mut self.table, ctx: &mut self.http }
    }
}

/// Refuses outgoing requests to hosts the pod is not allowed to reach, and resolves the
/// allowed ones as the pod would: cluster names through the cluster DNS.
struct OutgoingPolicy {
    allowed: Arc<Vec<String>>,
    resolver: Option<Arc<crate::pod_dns::PodResolver>>,
}

impl WasiHttpHooks for OutgoingPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<wasmtime_wasi_http::WasiBody>, Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let host = request.uri().host().unwrap_or_default().to_string();
        if !host_allowed(&self.allowed, &host) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        let resolver = self.resolver.clone();
        let mut request = request;
        Box::new(async move {
            // Plain HTTP to a cluster name goes to the address the cluster DNS gives; the
            // Host header keeps the name. (TLS keeps the name for the certificate check.)
            if let Some(resolver) = resolver
                && request.uri().scheme() != Some(&http::uri::Scheme::HTTPS)
                && let Some(ip) = resolver.resolve(&host).await
            {
                let port = request.uri().port_u16().unwrap_or(80);
                let mut parts = request.uri().clone().into_parts();
                parts.authority = http::uri::Authority::try_from(std::net::SocketAddr::new(ip, port).to_string()).ok();
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// Whether `host` matches an allow-list entry: `*` (any host), `*.SUFFIX` (any name
/// under SUFFIX) or the exact name, ignoring case.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            _ if entry == "*" => true,
            Some(suffix) => host.strip_suffix(suffix).is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => entry == host,
        }
    })
}

/// Whether a component is an HTTP function (exports `wasi:http/incoming-handler`).
pub fn is_proxy(runtime: &WasmRuntime, component: &Component) -> bool {
    component.component_type().exports(runtime.engine()).any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

impl WasmRuntime {
    /// Pre-instantiates an HTTP function, checking its imports once; with
    /// `reuse: Some(n)` its instances serve up to n requests each.
    pub fn proxy(&self, component: &Component, reuse: Option<usize>) -> Result<Proxy, StartError> {
        let pre = self.http_linker().instantiate_pre(component).map_err(|e| StartError(format!("instantiating: {e:#}")))?;
        let pre = ProxyPre::new(pre).map_err(|e| StartError(format!("not a wasi:http/proxy component: {e:#}")))?;
        Ok(Proxy { pre, pool: reuse.map(Pool::new) })
    }

    /// A store for a new instance of the pod's function.
    fn http_store(&self, guest: &GuestSpec, limits: &RequestLimits) -> Result<Store<HttpState>, StartError> {
        let mut builder = super::command::wasi_builder(guest)?;
        let limiter = Limiter::new(limits.memory_limit, guest.usage.clone());
        let state = HttpState { wasi: builder.build(), table: ResourceTable::new(), http: WasiHttpCtx::new(), hooks: OutgoingPolicy { allowed: limits.allowed_hosts.clone(), resolver: limits.resolver.clone() }, limiter };
        let mut store = Store::new(self.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }

    /// Handles one request, on the guest runtime, on a fresh instance or one the pod's
    /// pool kept. `permit` is held until the guest is done (its body streamed, its
    /// instance back in the pool), so a pod's concurrency bounds its running guests.
    pub async fn handle(self: &Arc<Self>, proxy: &Arc<Proxy>, request: hyper::Request<Incoming>, guest: &GuestSpec, limits: &RequestLimits, permit: tokio::sync::OwnedSemaphorePermit) -> hyper::Response<HttpBody> {
        let (mut store, warm) = match proxy.pool.as_ref().and_then(Pool::take) {
            Some(Warm { store, proxy, served }) => (store, Some((proxy, served))),
            None => match self.http_store(guest, limits) {
                Ok(store) => (store, None),
                Err(e) => return error(500, &e.0),
            },
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let incoming = match store.data_mut().http().new_incoming_request(wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http, request) {
            Ok(r) => r,
            Err(e) => return error(400, &format!("bad request: {e}")),
        };
        let out = match store.data_mut().http().new_response_outparam(tx) {
            Ok(o) => o,
            Err(e) => return error(500, &format!("{e}")),
        };
        let function = proxy.clone();
        let usage = guest.usage.clone();
        let timeout = limits.timeout;
        // The deadline is kept on the guest's side, covering the answer and the body
        // streamed after it: one timer, and no task to watch the guest.
        let guest_task = self.spawn_guest(
            async move {
                let _permit = permit;
                let run = async {
                    let (instance, served) = match warm {
                        Some(warm) => warm,
                        None => {
                            let started = std::time::Instant::now();
                            let instance = function.pre.instantiate_async(&mut store).await.map_err(|e| Ended::Failed(format!("instantiating: {e:#}")))?;
                            crate::metrics::instantiated("http", started.elapsed());
                            (instance, 0)
                        }
                    };
                    let result = instance.wasi_http_incoming_handler().call_handle(&mut store, incoming, out).await;
                    // The root cause says what happened (the trap, the limit); the backtrace
                    // above it means nothing to a client. An instance that failed is dropped.
                    result.map_err(|e| Ended::Failed(e.root_cause().to_string()))?;
                    Ok((instance, served + 1))
                };
                let (instance, served) = tokio::time::timeout(timeout, run).await.map_err(|_| Ended::Deadline)??;
                if let Some(pool) = &function.pool {
                    pool.put(Warm { store, proxy: instance, served });
                }
                Ok(())
            },
            None,
            usage,
        );
        // A client that goes away drops this future: the guest must not run on unseen.
        let mut abandoned = AbortOnDrop(Some(guest_task.abort_handle()));
        match rx.await {
            Ok(Ok(response)) => {
                // The guest may still be streaming the body, within its deadline.
                abandoned.0 = None;
                response.map(|b| b.map_err(|e| std::io::Error::other(format!("{e:?}"))).boxed_unsync())
            }
            Ok(Err(code)) => error(500, &format!("the function failed the request: {code:?}")),
            // The guest ended without answering: a trap, a memory overrun, an error or the deadline.
            Err(_) => match guest_task.await {
                Ok(Err(Ended::Deadline)) => error(504, &format!("the function did not answer within {} ms", timeout.as_millis())),
                Ok(Err(Ended::Failed(e))) => error(500, &format!("the function failed: {e}")),
                _ => error(500, "the function ended without a response"),
            },
        }
    }
}

/// Why a request's guest ended without finishing.
enum Ended {
    Deadline,
    Failed(String),
}

/// Aborts a guest's task when dropped, unless disarmed (set to `None`).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.abort();
        }
    }
}

/// A plain-text error response for a request the function could not answer.
pub fn error(status: u16, message: &str) -> hyper::Response<HttpBody> {
    let body = Full::new(Bytes::from(format!("{message}\n"))).map_err(|never| match never {}).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn allow_list_entries_match_names_suffixes_or_anything() {
        let cluster = ["*.svc".to_string(), "*.svc.cluster.local".to_string()];
        assert!(host_allowed(&cluster, "api.shop.svc.cluster.local"));
        assert!(host_allowed(&cluster, "API.shop.svc."));
        assert!(!host_allowed(&cluster, "svc.cluster.local"));
        assert!(!host_allowed(&cluster, "example.com"));
        assert!(!host_allowed(&cluster, "evil-svc"));
        assert!(host_allowed(&["example.com".into()], "Example.COM"));
        assert!(!host_allowed(&["example.com".into()], "www.example.com"));
        assert!(host_allowed(&["*".into()], "anything"));
        assert!(!host_allowed(&[], "anything"));
    }
}
