//! The runtimes a node offers, behind one interface the pod worker calls without knowing
//! the kind: an image is [prepared](Runtimes::prepare) (Wasm compiled, a container image's
//! layers unpacked), then [started](Prepared::start) for each container run, which gives a
//! [`Running`] container: a future of its [`Exit`] and a way to [`Exec`] into it.
//!
//! Which runtime a container gets is decided in one place, [`Runtimes::prepare`]: by the
//! pod's RuntimeClass handler where it names one, else by the image's media types. A run
//! that outlived an agent restart is [adopted](Runtimes::adopt) through the same
//! interface.

pub mod oci;
pub mod wasm;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::io::DuplexStream;

use crate::images::{ImageKind, ImageStore, LocalImage};
use crate::logs::LogSink;

/// The RuntimeClass handler of Wasm pods.
pub const WASM_HANDLER: &str = "wasmtime";

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: i32,
    /// Kubernetes' terminated reason: `Completed`, `Error` or `OOMKilled`.
    pub reason: &'static str,
    pub message: Option<String>,
}

impl Exit {
    /// The exit of a process that returned `code`.
    pub fn of_code(code: i32) -> Exit {
        Exit { code, reason: if code == 0 { "Completed" } else { "Error" }, message: None }
    }
}

/// Why a container could not be started (its `CreateContainerError`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// CPU time and memory of a running container, and the requests it served (HTTP
/// functions), for the stats endpoint.
#[derive(Debug, Default)]
pub struct Usage {
    pub cpu_nanos: AtomicU64,
    pub memory_bytes: AtomicU64,
    /// Whether the container serves HTTP requests the node can count (a Wasm HTTP
    /// function); only then are the request fields reported.
    pub serves_http: std::sync::atomic::AtomicBool,
    /// Requests taken, ever.
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    /// Time spent on requests that finished: over a period, its growth divided by the
    /// period is the average concurrency.
    pub request_nanos: AtomicU64,
}

/// A directory the container sees at `guest_path`.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Everything one run of a container gets, whatever runs it.
pub struct Launch {
    pub pod: Arc<Pod>,
    pub container: Container,
    /// The pod's IP.
    pub pod_ip: String,
    /// `command` and `args` with `$(VAR)` expanded; empty where the container gives none.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_limit_milli: Option<u64>,
    /// Where stdout and stderr go.
    pub log: LogSink,
    pub usage: Arc<Usage>,
    /// The cluster DNS the pod resolves names through.
    pub cluster_dns: Option<crate::pod_dns::ClusterDns>,
    /// Turns true when the pod is deleted and its preStop hooks have run: the container
    /// is to stop as a process does on SIGTERM.
    pub terminate: tokio::sync::watch::Receiver<bool>,
}

/// A container run under way.
pub struct Running {
    /// Resolves when the container has ended, or with why it could not start after all
    /// (a Wasm guest's imports are linked on its own task). Dropping it stops the
    /// container at once.
    pub exit: BoxFuture<'static, Result<Exit, StartError>>,
    /// Runs commands inside it (exec, exec probes and hooks).
    pub exec: Arc<dyn Exec>,
}

/// The standard streams of an exec'd command.
pub struct ExecIo {
    pub stdin: Option<DuplexStream>,
    pub stdout: DuplexStream,
    pub stderr: DuplexStream,
}

/// Runs a command inside a running container.
#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    /// Runs `argv` with `io` as its streams; resolves when it exits.
    async fn exec(&self, argv: Vec<String>, io: ExecIo) -> Result<Exit, StartError>;
}

/// An image made ready to run by one runtime.
#[async_trait::async_trait]
pub trait Prepared: Send + Sync {
    /// The runtime's name, as the RuntimeClass handler says it.
    fn runtime(&self) -> &'static str;
    /// Starts one run of a container.
    async fn start(&self, launch: Launch) -> Result<Running, StartError>;
}

/// The node's runtimes.
pub struct Runtimes {
    pub wasm: Arc<wasm::WasmRuntime>,
    /// Absent where the node has no OCI runtime (crun or runc) or cannot run containers.
    pub oci: Option<Arc<oci::OciRuntime>>,
}

impl Runtimes {
    /// The handlers this node offers.
    pub fn handlers(&self) -> Vec<&'static str> {
        let mut handlers = vec![WASM_HANDLER];
        if let Some(oci) = &self.oci {
            handlers.push(oci.name());
        }
        handlers
    }

    /// Readies a pulled image for the runtime its kind (or the pod's RuntimeClass
    /// handler) asks for: compiles Wasm, unpacks a container image's layers.
    pub async fn prepare(&self, images: &ImageStore, image: &LocalImage, handler: Option<&str>) -> Result<Arc<dyn Prepared>, StartError> {
        match (&image.kind, handler) {
            (ImageKind::Wasm { .. }, Some(h)) if h != WASM_HANDLER => {
                Err(StartError(format!("the image is a Wasm artifact, which the RuntimeClass handler {h:?} cannot run; use the {WASM_HANDLER:?} handler")))
            }
            (ImageKind::Wasm { wasm_digest }, _) => Ok(self.wasm.prepare(wasm_digest, images.blob_path(wasm_digest)).await?),
            (ImageKind::Container { .. }, Some(WASM_HANDLER)) => {
                Err(StartError(format!("the image is a container image, which the RuntimeClass handler {WASM_HANDLER:?} cannot run")))
            }
            (ImageKind::Container { .. }, _) => {
                let oci = self.oci.as_ref().ok_or_else(|| StartError("the image is a container image, and this node has no OCI runtime (crun or runc): it runs Wasm images only".into()))?;
                if let Some(h) = handler
                    && h != oci.name()
                {
                    return Err(StartError(format!("the RuntimeClass handler {h:?} is not one this node offers ({})", self.handlers().join(", "))));
                }
                Ok(oci.prepare(images, image).await?)
            }
        }
    }

    /// The run of the pod's container that a previous agent left running (containers
    /// outlive the agent; Wasm guests, in its process, do not), to be "started" as it
    /// is: with when it started.
    pub fn adopt(&self, uid: &str, container: &str) -> Option<(Arc<dyn Prepared>, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)> {
        self.oci.as_ref()?.adopt(uid, container)
    }
}

/// Aborts a task when dropped: a stopped container's work stops with it.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
