//! A request body in each media type the API server decodes (the first byte picks it):
//! decoding answers an object or an error, never a panic; a protobuf object that decodes
//! encodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_apiserver::rest::parse_body;

const MEDIA: &[&str] = &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf", "application/apply-patch+yaml", "text/plain"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let media = MEDIA[pick as usize % MEDIA.len()];
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(media));
    if let Ok(object) = parse_body(&headers, &bytes::Bytes::copy_from_slice(body))
        && media.contains("protobuf")
    {
        let _ = skiff_apiserver::protobuf::encode(&object);
    }
});
