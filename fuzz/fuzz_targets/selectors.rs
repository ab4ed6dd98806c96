//! Label and field selectors as a query string carries them: parsing answers a selector
//! or an error, and a selector that parses matches an object without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_core::{FieldSelector, LabelSelector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let object = serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web", "tier": "front", "v": "2"}},
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Running"},
    });
    if let Ok(selector) = LabelSelector::parse(text) {
        selector.matches_object(&object);
    }
    if let Ok(selector) = FieldSelector::parse(text) {
        selector.matches(&object);
    }
});
