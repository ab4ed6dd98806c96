//! Request paths (`/api/v1/namespaces/NS/pods/NAME/log`, `/apis/GROUP/VERSION/…`):
//! parsing answers a target or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(target) = skiff_apiserver::request::parse(path) {
        let _ = target.key();
    }
});
