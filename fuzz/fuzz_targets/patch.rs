//! Patch application: the input is `original NUL patch` (JSON), the first byte picks
//! merge, JSON, strategic merge or server-side apply. Applying answers an object or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skiff_apiserver::field_manager::{Apply, apply};
use skiff_apiserver::patch::{PatchType, apply as patch};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(2, |b| *b == 0);
    let (Some(original), Some(change)) = (parts.next(), parts.next()) else { return };
    let (Ok(original), Ok(change)) = (serde_json::from_slice::<Value>(original), serde_json::from_slice::<Value>(change)) else { return };
    match pick % 4 {
        0 => drop(patch(PatchType::Merge, &original, &change)),
        1 => drop(patch(PatchType::Json, &original, &change)),
        2 => drop(patch(PatchType::Strategic, &original, &change)),
        _ => {
            let a = Apply { manager: "fuzz", force: pick & 0x80 != 0, subresource: None, has_status: true, now: "2026-01-01T00:00:00Z" };
            drop(apply(Some(&original), &change, &a));
        }
    }
});
