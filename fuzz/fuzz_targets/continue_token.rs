//! The `continue` token of a paginated list: any string decodes to a position or an
//! error, and a position survives encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_store::continue_token::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((revision, start)) = decode(text) {
        assert_eq!(decode(&encode(revision, &start)).expect("an encoded token decodes"), (revision, start));
    }
    let revision = text.len() as u64 * 7919;
    assert_eq!(decode(&encode(revision, text)).expect("an encoded token decodes"), (revision, text.to_string()));
});
