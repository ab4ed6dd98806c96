//! The Wasm runtime as the pod worker sees it ([`Prepared`], [`Exec`]): a loaded program
//! started as a WASI command, or served on the pod's ports when it is a wasi:http
//! component; and exec, which runs the container's command again in its sandbox.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};

use super::command::{GuestSpec, SessionStreams, Stdio};
use super::{Program, WasmRuntime, exec_tar, http, serving};
use crate::runtime::{AbortOnDrop, Exec, ExecIo, Exit, Launch, Mount, Prepared, Running, StartError, Usage, WASM_HANDLER};

/// Exit code of a guest stopped by the agent (as a process killed by SIGKILL).
const KILLED_EXIT_CODE: i32 = 137;

impl WasmRuntime {
    /// Loads the Wasm at `path` (content digest `digest`), compiling it once per digest.
    pub async fn prepare(self: &Arc<Self>, digest: &str, path: PathBuf) -> Result<Arc<dyn Prepared>, StartError> {
        let (this, key) = (self.clone(), digest.to_string());
        let program = tokio::task::spawn_blocking(move || this.load(&key, &path)).await.map_err(|e| StartError(e.to_string()))??;
        let serves = matches!(&program, Program::Component(c) if http::is_proxy(self, c));
        Ok(Arc::new(WasmPrepared { runtime: self.clone(), program, serves }))
    }
}

struct WasmPrepared {
    runtime: Arc<WasmRuntime>,
    program: Program,
    /// A wasi:http component: served, not run.
    serves: bool,
}

#[async_trait::async_trait]
impl Prepared for WasmPrepared {
    fn runtime(&self) -> &'static str {
        WASM_HANDLER
    }

    async fn start(&self, launch: Launch) -> Result<Running, StartError> {
        // Wasm has no image entrypoint to fall back on: argv[0] is the command's first
        // word, or the container's name.
        let mut argv = launch.command.clone();
        if argv.is_empty() {
            argv.push(launch.container.name.clone());
        }
        argv.extend(launch.args.iter().cloned());
        let exec = Arc::new(WasmExec {
            runtime: self.runtime.clone(),
            command: (!self.serves).then(|| self.program.clone()),
            env: launch.env.clone(),
            mounts: launch.mounts.clone(),
            memory_limit: launch.memory_limit,
            cpu_limit_milli: launch.cpu_limit_milli,
        });
        let guest = GuestSpec {
            argv,
            env: launch.env,
            mounts: launch.mounts,
            memory_limit: launch.memory_limit,
            cpu_limit_milli: launch.cpu_limit_milli,
            stdio: Stdio::Log(launch.log),
            usage: launch.usage,
        };
        let mut terminate = launch.terminate;
        if let (true, Program::Component(component)) = (self.serves, &self.program) {
            let (function, ports) = serving::prepare(&self.runtime, component, &launch.pod, &launch.container, guest, launch.cluster_dns.as_ref())?;
            let listeners = serving::bind(&launch.pod_ip, &ports).await?;
            let exit = async move {
                match serving::serve(function, listeners, terminate).await {
                    // Drained for the pod's deletion, as a server ends on SIGTERM.
                    Ok(()) => Ok(Exit::of_code(0)),
                    Err(error) => Ok(Exit { code: 1, reason: "Error", message: Some(format!("serving stopped: {error}")) }),
                }
            };
            return Ok(Running { exit: Box::pin(exit), exec });
        }
        let mut guest = AbortOnDrop(self.runtime.spawn(self.program.clone(), guest));
        let exit = async move {
            tokio::select! {
                result = &mut guest.0 => result.unwrap_or_else(|e| Ok(Exit { code: KILLED_EXIT_CODE, reason: "Error", message: Some(format!("the guest task ended abnormally: {e}")) })),
                // A WASI command cannot catch SIGTERM: it is stopped.
                _ = terminate.wait_for(|t| *t) => Ok(Exit { code: KILLED_EXIT_CODE, reason: "Error", message: Some("stopped by the node agent for the pod's deletion".into()) }),
            }
        };
        Ok(Running { exit: Box::pin(exit), exec })
    }
}

/// Exec into a Wasm container: its command again with the request's words as argv (the
/// first is argv[0]), in its sandbox; `tar` (what `kubectl cp` runs) is served by the
/// node over the container's volumes.
struct WasmExec {
    runtime: Arc<WasmRuntime>,
    /// The container's WASI command; `None` for a wasi:http function.
    command: Option<Program>,
    env: Vec<(String, String)>,
    mounts: Vec<Mount>,
    memory_limit: Option<u64>,
    cpu_limit_milli: Option<u64>,
}

#[async_trait::async_trait]
impl Exec for WasmExec {
    async fn exec(&self, argv: Vec<String>, io: ExecIo) -> Result<Exit, StartError> {
        if let Some(tar) = exec_tar::parse(&argv) {
            use tokio_util::io::SyncIoBridge;
            let stdin: Box<dyn std::io::Read + Send> = match io.stdin {
                Some(stdin) => Box::new(SyncIoBridge::new(stdin)),
                None => Box::new(std::io::empty()),
            };
            let (stdout, stderr, mounts) = (SyncIoBridge::new(io.stdout), SyncIoBridge::new(io.stderr), self.mounts.clone());
            return tokio::task::spawn_blocking(move || exec_tar::run(tar, &mounts, stdin, stdout, stderr)).await.map_err(|e| StartError(e.to_string()));
        }
        let Some(program) = self.command.clone() else {
            return Err(StartError("the container serves a wasi:http function, which has no command to exec: exec runs the container's image when it is a WASI command".into()));
        };
        let streams = SessionStreams {
            stdin: io.stdin.map(AsyncStdinStream::new),
            stdout: AsyncStdoutStream::new(8192, io.stdout),
            stderr: AsyncStdoutStream::new(8192, io.stderr),
        };
        let spec = GuestSpec {
            argv,
            env: self.env.clone(),
            mounts: self.mounts.clone(),
            memory_limit: self.memory_limit,
            cpu_limit_milli: self.cpu_limit_milli,
            stdio: Stdio::Session(Mutex::new(Some(streams))),
            usage: Arc::new(Usage::default()),
        };
        let mut guest = AbortOnDrop(self.runtime.spawn(program, spec));
        (&mut guest.0).await.map_err(|e| StartError(format!("the exec'd guest ended abnormally: {e}")))?
    }
}
