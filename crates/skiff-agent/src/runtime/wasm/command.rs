//! Running a WASI command — a preview 1 module (`_start`) or a preview 2 component
//! (`wasi:cli/run`) — to its exit, with its memory cap, CPU share and streams.

use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::Limiter;
use super::{Program, WasmRuntime};
use crate::logs::LogSink;
use crate::runtime::{Exit, Mount, StartError, Usage};

/// Exit code reported for a guest that trapped (as a process killed by SIGABRT).
pub(super) const TRAP_EXIT_CODE: i32 = 134;
/// Exit code reported for a guest stopped for memory (as a process killed by SIGKILL).
pub(super) const OOM_EXIT_CODE: i32 = 137;

/// What a container run needs from the agent.
pub struct GuestSpec {
    /// argv, the first being the program name.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// `resources.limits.memory`.
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_limit_milli: Option<u64>,
    pub stdio: Stdio,
    pub usage: Arc<Usage>,
}

/// Where a guest's standard streams go.
pub enum Stdio {
    /// stdout and stderr to the container's log; stdin empty.
    Log(LogSink),
    /// An exec session's streams, taken by the one guest run that uses them.
    Session(Mutex<Option<SessionStreams>>),
}

pub struct SessionStreams {
    pub stdin: Option<wasmtime_wasi::cli::AsyncStdinStream>,
    pub stdout: wasmtime_wasi::cli::AsyncStdoutStream,
    pub stderr: wasmtime_wasi::cli::AsyncStdoutStream,
}


impl WasmRuntime {
    /// Starts a command guest on the guest runtime. The returned handle resolves when it
    /// exits; aborting the handle stops the guest at its next epoch tick.
    pub fn spawn(self: &Arc<Self>, program: Program, spec: GuestSpec) -> tokio::task::JoinHandle<Result<Exit, StartError>> {
        let this = self.clone();
        let usage = spec.usage.clone();
        let cpu = spec.cpu_limit_milli;
        self.spawn_guest(async move { this.run(program, spec).await }, cpu, usage)
    }


    async fn run(&self, program: Program, spec: GuestSpec) -> Result<Exit, StartError> {
        let mut builder = wasi_builder(&spec)?;
        let limiter = Limiter::new(spec.memory_limit, spec.usage.clone());
        let result = match program {
            Program::Module(module) => {
                let mut store = Store::new(&self.engine, P1State { wasi: builder.build_p1(), limiter });
                store.limiter(|s| &mut s.limiter);
                store.epoch_deadline_async_yield_and_update(1);
                let started = std::time::Instant::now();
                let instance = self.p1_linker.instantiate_async(&mut store, &module).await.map_err(link_error)?;
                crate::metrics::instantiated("command", started.elapsed());
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(|_| StartError("the module exports no `_start`: it is not a WASI command".into()))?;
                let outcome = start.call_async(&mut store, ()).await;
                exit_of(outcome.map(|_| 0), store.data().limiter.exceeded)
            }
            Program::Component(component) => {
                let mut store = Store::new(&self.engine, P2State { wasi: builder.build(), table: ResourceTable::new(), limiter });
                store.limiter(|s| &mut s.limiter);
                store.epoch_deadline_async_yield_and_update(1);
                let started = std::time::Instant::now();
                let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &self.p2_linker)
                    .await
                    .map_err(link_error)?;
                crate::metrics::instantiated("command", started.elapsed());
                let outcome = command.wasi_cli_run().call_run(&mut store).await;
                exit_of(outcome.map(|r| if r.is_ok() { 0 } else { 1 }), store.data().limiter.exceeded)
            }
        };
        if let Stdio::Log(log) = &spec.stdio {
            log.finish();
        }
        Ok(result)
    }

}

/// The guest's WASI context: argv, environment, stdout and stderr to its log, and its
/// mounts as preopened directories (nothing else of the host).
pub(super) fn wasi_builder(spec: &GuestSpec) -> Result<WasiCtxBuilder, StartError> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(&spec.argv).envs(&spec.env);
    match &spec.stdio {
        Stdio::Log(log) => {
            builder.stdout(log.stdout()).stderr(log.stderr());
        }
        Stdio::Session(streams) => {
            let SessionStreams { stdin, stdout, stderr } =
                streams.lock().unwrap().take().ok_or_else(|| StartError("an exec session's streams serve one run".into()))?;
            if let Some(stdin) = stdin {
                builder.stdin(stdin);
            }
            builder.stdout(stdout).stderr(stderr);
        }
    }
    for m in &spec.mounts {
        let perms = if m.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        builder.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| StartError(format!("mounting {} at {}: {e}", m.host_path.display(), m.guest_path)))?;
    }
    Ok(builder)
}

fn link_error(e: wasmtime::Error) -> StartError {
    StartError(format!("instantiating: {e:#}"))
}

/// Turns a guest's outcome into the container's exit.
fn exit_of(outcome: wasmtime::Result<i32>, out_of_memory: bool) -> Exit {
    match outcome {
        Ok(0) => Exit { code: 0, reason: "Completed", message: None },
        Ok(code) => Exit { code, reason: "Error", message: None },
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                let code = exit.0;
                return Exit { code, reason: if code == 0 { "Completed" } else { "Error" }, message: None };
            }
            if out_of_memory {
                return Exit { code: OOM_EXIT_CODE, reason: "OOMKilled", message: Some(format!("{e:#}")) };
            }
            let trap = e.downcast_ref::<wasmtime::Trap>().map(|t| t.to_string());
            let message = match trap {
                Some(t) => format!("the guest trapped: {t}"),
                None => format!("{e:#}"),
            };
            Exit { code: TRAP_EXIT_CODE, reason: "Error", message: Some(message) }
        }
    }
}

pub(super) struct P1State {
    pub(super) wasi: WasiP1Ctx,
    limiter: Limiter,
}

pub(super) struct P2State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
