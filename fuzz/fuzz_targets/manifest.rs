//! Manifest parsing and validation on arbitrary text: an error that names the
//! problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(objects) = tapestry_cluster::parse_manifests(text, "fuzz") {
            for o in &objects {
                let _ = o.to_json().map(|j| tapestry_cluster::Object::from_json(&j, "fuzz"));
            }
        }
    }
});
