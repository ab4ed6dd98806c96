//! The runtimes a node offers. Wasm is the first; OCI containers come in their own issue.

pub mod http;
pub mod wasm;
