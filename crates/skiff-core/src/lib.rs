//! Shared, I/O-free helpers for the Kubernetes API as Skiff serves it: the registry of
//! resource kinds, label and field selectors, and accessors for object metadata held as
//! JSON. Every other Skiff crate builds on these; none of them touches a disk or socket.

pub mod cidr;
pub mod credentials;
pub mod cron;
pub mod exec;
pub mod fields;
pub mod labels;
pub mod meta;
pub mod names;
pub mod pod_refs;
pub mod quantity;
pub mod quota;
pub mod request_counts;
pub mod resources;

pub use cidr::Cidr;
pub use fields::FieldSelector;
pub use labels::LabelSelector;
pub use resources::{ResourceType, RESOURCES};

/// A query parameter's value, percent-encoded (unreserved characters stay as they are).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

