//! The Wasm runtime: one wasmtime engine per agent (cranelift, the pooling allocator,
//! epoch interruption) and an on-disk cache of compiled code keyed by the Wasm's content
//! digest and the engine's compatibility hash. What it runs is split by concern:
//! [`command`] (WASI commands to their exit), [`serving`] and [`http`] (wasi:http
//! functions on the pod's ports), [`limits`] (memory cap and CPU share), and
//! [`container`] (the [`Prepared`](crate::runtime::Prepared) and
//! [`Exec`](crate::runtime::Exec) the pod worker sees).
//!
//! Guests run on their own tokio runtime, so a busy guest never delays the agent's own
//! work; every guest yields to it at each epoch tick (10 ms), which is also where its CPU
//! share is enforced.

pub mod command;
mod container;
pub mod exec_tar;
pub mod http;
mod limits;
pub mod reuse;
pub mod serving;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig, Precompiled};

use crate::runtime::{StartError, Usage};
use command::{P1State, P2State};
use limits::{MAX_TABLE_ELEMENTS, Throttled};

/// How often the engine's epoch ticks: the longest a guest runs before yielding.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the engine is sized.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Guests running at once (pooling allocator slots).
    pub max_instances: u32,
    /// The most linear memory one guest may have (its slot size).
    pub max_memory_bytes: u64,
    /// Where compiled code is cached.
    pub cache_dir: PathBuf,
    /// Threads running guests.
    pub threads: usize,
}

/// Compiled Wasm, ready to instantiate.
#[derive(Clone)]
pub enum Program {
    /// A WASI preview 1 core module.
    Module(Module),
    /// A component (WASI preview 2 command).
    Component(Component),
}

pub struct WasmRuntime {
    engine: Engine,
    p1_linker: Arc<wasmtime::Linker<P1State>>,
    p2_linker: Arc<wasmtime::component::Linker<P2State>>,
    http_linker: Arc<wasmtime::component::Linker<http::HttpState>>,
    cache_dir: PathBuf,
    compiled: Mutex<HashMap<String, Program>>,
    /// A turn per digest being loaded: the pods that wait for one image share one compile
    /// (fifty replicas compiled fifty times at once, racing to write the cache file).
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// How many times Wasm was compiled (not found in memory or on disk).
    compilations: std::sync::atomic::AtomicU64,
    /// Always `Some` until dropped.
    guests: Option<tokio::runtime::Runtime>,
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async context must not do.
        if let Some(rt) = self.guests.take() {
            rt.shutdown_background();
        }
    }
}

impl WasmRuntime {
    pub fn new(config: &WasmConfig) -> anyhow::Result<Arc<WasmRuntime>> {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances.max(1);
        // A component may hold a few core instances and memories (its module plus adapters).
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_memory_size(config.max_memory_bytes as usize);
        let mut wasm = Config::new();
        wasm.strategy(wasmtime::Strategy::Cranelift)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_reservation(config.max_memory_bytes.max(1 << 20))
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
        let engine = Engine::new(&wasm)?;
        let ticker = engine.weak();
        std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        let mut p1_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut P1State| &mut s.wasi)?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)?;
        let mut http_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut http_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut http_linker)?;
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("wasm-guest")
            .enable_all()
            .build()?;
        let cache_dir = config.cache_dir.join(engine_key(&engine));
        std::fs::create_dir_all(&cache_dir)?;
        Ok(Arc::new(WasmRuntime {
            engine,
            p1_linker: Arc::new(p1_linker),
            p2_linker: Arc::new(p2_linker),
            http_linker: Arc::new(http_linker),
            cache_dir,
            compiled: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            compilations: Default::default(),
            guests: Some(guests),
        }))
    }

    /// The compiled program for the Wasm at `path` whose content digest is `digest`: from
    /// memory, else from the on-disk cache, else compiled (and cached). Blocking: call it
    /// from `spawn_blocking`.
    pub fn load(&self, digest: &str, path: &Path) -> Result<Program, StartError> {
        if let Some(p) = self.compiled.lock().unwrap().get(digest) {
            return Ok(p.clone());
        }
        let turn = self.loading.lock().unwrap().entry(digest.to_string()).or_default().clone();
        let _turn = turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Loaded by the caller whose turn came first?
        if let Some(p) = self.compiled.lock().unwrap().get(digest) {
            return Ok(p.clone());
        }
        let cached = self.cache_dir.join(format!("{}.cwasm", digest.replace(':', "-")));
        let program = match self.load_cached(&cached) {
            Some(p) => p,
            None => {
                let bytes = std::fs::read(path).map_err(|e| StartError(format!("reading {}: {e}", path.display())))?;
                self.compilations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (program, artifact) = self.compile(&bytes)?;
                // Written then renamed, so a crash never leaves a torn artifact to load.
                let tmp = cached.with_extension("tmp");
                if std::fs::write(&tmp, artifact).and_then(|_| std::fs::rename(&tmp, &cached)).is_err() {
                    tracing::warn!(path = %cached.display(), "could not cache compiled Wasm");
                }
                program
            }
        };
        self.compiled.lock().unwrap().insert(digest.to_string(), program.clone());
        self.loading.lock().unwrap().remove(digest);
        Ok(program)
    }

    /// How many times Wasm has been compiled since start.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Compiles Wasm bytes, returning the program and its serialized form.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Program, Vec<u8>), StartError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(StartError("not a WebAssembly binary (no \\0asm header)".into()));
        }
        let invalid = |e: wasmtime::Error| StartError(format!("invalid Wasm: {e:#}"));
        let started = std::time::Instant::now();
        if is_component(bytes) {
            let c = Component::new(&self.engine, bytes).map_err(invalid)?;
            crate::metrics::compiled("component", started.elapsed());
            let artifact = c.serialize().map_err(invalid)?;
            Ok((Program::Component(c), artifact))
        } else {
            let m = Module::new(&self.engine, bytes).map_err(invalid)?;
            crate::metrics::compiled("module", started.elapsed());
            let artifact = m.serialize().map_err(invalid)?;
            Ok((Program::Module(m), artifact))
        }
    }

    fn load_cached(&self, path: &Path) -> Option<Program> {
        // SAFETY: wasmtime trusts deserialized artifacts. These are files this agent wrote
        // into its own private cache directory, named by content digest and engine hash.
        let loaded = match Engine::detect_precompiled_file(path).ok()?? {
            Precompiled::Module => unsafe { Module::deserialize_file(&self.engine, path) }.map(Program::Module),
            Precompiled::Component => unsafe { Component::deserialize_file(&self.engine, path) }.map(Program::Component),
        };
        match loaded {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding cached compiled Wasm");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Runs guest work on the guest runtime, its CPU time counted (and capped) in `usage`.
    pub(super) fn spawn_guest<F: Future + Send + 'static>(&self, work: F, cpu_limit_milli: Option<u64>, usage: Arc<Usage>) -> tokio::task::JoinHandle<F::Output>
    where
        F::Output: Send,
    {
        self.guests.as_ref().expect("runtime is live").spawn(Throttled::new(work, cpu_limit_milli, usage))
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(super) fn http_linker(&self) -> &wasmtime::component::Linker<http::HttpState> {
        &self.http_linker
    }

    /// Compiled programs held in memory.
    pub fn compiled_count(&self) -> usize {
        self.compiled.lock().unwrap().len()
    }
}

fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A component's preamble has layer 1 where a core module's has version 1.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::command::{GuestSpec, OOM_EXIT_CODE, Stdio, TRAP_EXIT_CODE};
    use super::*;
    use crate::logs::LogSink;
    use crate::runtime::Exit;

    fn runtime(dir: &Path) -> Arc<WasmRuntime> {
        WasmRuntime::new(&WasmConfig { max_instances: 8, max_memory_bytes: 256 << 20, cache_dir: dir.join("cache"), threads: 1 }).unwrap()
    }

    fn spec(dir: &Path, memory_limit: Option<u64>) -> (GuestSpec, PathBuf) {
        let log = dir.join("run.log");
        let spec = GuestSpec {
            argv: vec!["guest".into()],
            env: vec![],
            mounts: vec![],
            memory_limit,
            cpu_limit_milli: None,
            stdio: Stdio::Log(LogSink::create(&log).unwrap()),
            usage: Arc::default(),
        };
        (spec, log)
    }

    async fn run_wat(wat: &str, memory_limit: Option<u64>) -> (Result<Exit, StartError>, String) {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let bytes = wat::parse_str(wat).unwrap();
        let (program, _) = rt.compile(&bytes).unwrap();
        let (spec, log) = spec(dir.path(), memory_limit);
        let exit = rt.spawn(program, spec).await.unwrap();
        (exit, std::fs::read_to_string(log).unwrap())
    }

    const HELLO: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "hello\n")
        (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 6))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (call $exit (i32.const 3))))"#;

    #[tokio::test]
    async fn a_command_writes_its_log_and_exit_code() {
        let (exit, log) = run_wat(HELLO, None).await;
        assert_eq!(exit.unwrap(), Exit { code: 3, reason: "Error", message: None });
        assert!(log.ends_with(" stdout F hello\n"), "{log}");
    }

    #[tokio::test]
    async fn a_trap_ends_the_guest_with_a_message() {
        let (exit, _) = run_wat(r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#, None).await;
        let exit = exit.unwrap();
        assert_eq!((exit.code, exit.reason), (TRAP_EXIT_CODE, "Error"));
        assert!(exit.message.unwrap().contains("unreachable"));
    }

    #[tokio::test]
    async fn growing_past_the_memory_limit_is_oom_killed() {
        let hog = r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#;
        let (exit, _) = run_wat(hog, Some(8 << 20)).await;
        let exit = exit.unwrap();
        assert_eq!((exit.code, exit.reason), (OOM_EXIT_CODE, "OOMKilled"), "{exit:?}");
    }

    #[tokio::test]
    async fn a_module_without_start_is_a_start_error() {
        let (exit, _) = run_wat(r#"(module (memory (export "memory") 1))"#, None).await;
        assert!(exit.unwrap_err().0.contains("_start"));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        assert!(rt.compile(b"not wasm").err().unwrap().0.contains("not a WebAssembly binary"));
        assert!(rt.compile(b"\0asm\x01\0\0\0\x99").err().unwrap().0.contains("invalid Wasm"));
    }

    #[test]
    fn compiled_code_is_cached_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("m.wasm");
        std::fs::write(&wasm, wat::parse_str(HELLO).unwrap()).unwrap();
        runtime(dir.path()).load("sha256:abc", &wasm).unwrap();
        std::fs::remove_file(&wasm).unwrap();
        // A new runtime (a restarted agent) finds it without the source.
        assert!(matches!(runtime(dir.path()).load("sha256:abc", &wasm), Ok(Program::Module(_))));
    }

    #[test]
    fn pods_waiting_for_one_image_share_one_compile() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("m.wasm");
        std::fs::write(&wasm, wat::parse_str(HELLO).unwrap()).unwrap();
        let rt = runtime(dir.path());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| rt.load("sha256:shared", &wasm).unwrap());
            }
        });
        assert_eq!(rt.compilations(), 1);
        assert_eq!(std::fs::read_dir(dir.path().join("cache")).unwrap().flatten().flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten()).count(), 1);
    }

    #[tokio::test]
    async fn a_spinning_guest_is_stopped_by_abort() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let (program, _) = rt.compile(&wat::parse_str(r#"(module (func (export "_start") (loop (br 0))))"#).unwrap()).unwrap();
        let (spec, _) = spec(dir.path(), None);
        let usage = spec.usage.clone();
        let handle = rt.spawn(program, spec);
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        assert!(usage.cpu_nanos.load(Ordering::Relaxed) > 0);
    }
}
