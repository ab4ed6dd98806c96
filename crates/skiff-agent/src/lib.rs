//! Skiff's node agent (its kubelet): registers the node, renews its lease and makes the
//! pods bound to it real, running Wasm containers in wasmtime. Hollow nodes simulate
//! many agents in one process for tests and benchmarks at cluster scale (kubemark).

pub mod env;
pub mod hollow;
pub mod images;
pub mod logs;
pub mod node;
pub mod runtime;
pub mod volumes;
