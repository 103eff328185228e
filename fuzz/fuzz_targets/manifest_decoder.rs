//! Feeds arbitrary bytes to the repository's document decoder as a snapshot manifest
//! (compressed JSON) and as plain JSON, then checks every decoded path. Decoding must
//! never panic, and no path that passes `safe_relative` may leave its directory.
#![no_main]

use std::path::Component;

use drmesh_repo::testing::decode_doc;
use drmesh_repo::{safe_relative, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode_doc::<Snapshot>(data, None, "fuzz")
        .ok()
        .or_else(|| serde_json::from_slice::<Snapshot>(data).ok());
    if let Some(snap) = decoded {
        for e in &snap.entries {
            if let Ok(p) = safe_relative(&e.path) {
                assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = safe_relative(s) {
            assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
        }
    }
});
