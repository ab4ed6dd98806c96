//! Resource quantities ("100m", "1.5Gi", "2e3"): parsing answers a number or an error,
//! never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_core::quantity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = quantity::parse_milli(text);
    let _ = quantity::parse_units(text);
    let _ = skiff_core::quota::parse("requests.memory", text);
    let _ = skiff_core::quota::parse("limits.cpu", text);
});
