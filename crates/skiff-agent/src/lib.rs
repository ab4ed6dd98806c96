//! Skiff's node agent. This release holds what every node shares (registering the Node
//! object and renewing its Lease) and hollow nodes: many simulated nodes in one process
//! that accept bound pods and report them running without running anything, for tests
//! and benchmarks at cluster scale (Kubernetes' kubemark).

pub mod hollow;
pub mod node;
