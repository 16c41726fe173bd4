//! Arbitrary `/proc/<pid>/cgroup` text through the Kubernetes attestor's parser.
//!
//! Run: `cargo +nightly fuzz run k8s_cgroup` (from the repository root).
//! Checks that parsing never panics, and that a pod it names is well-formed: a pod UID of
//! lowercase hex and dashes, a container id of 64 lowercase hex digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ::agent::k8s::cgroup::pod_container;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(Some(found)) = pod_container(text) {
        let hex = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        assert_eq!(found.container_id.len(), 64);
        assert!(found.container_id.bytes().all(hex));
        assert!(matches!(found.pod_uid.len(), 32 | 36));
        assert!(found.pod_uid.bytes().all(|b| hex(b) || b == b'-'));
    }
});
