//! Which pod and container a process is in, from its `/proc/<pid>/cgroup`.
//!
//! Pure parsing, bounded input. The formats (kubelet's and the runtimes' documented cgroup
//! naming; docs/kubernetes.md, "How the pod is found"):
//!
//! - cgroupfs driver, v1 or v2: `…/kubepods[/burstable|/besteffort]/pod<uid>/<container>`
//! - systemd driver: `…/kubepods[-<qos>]-pod<uid with '_' for '-'>.slice/<container>.scope`
//!   (kind and other nested setups prefix the slices, e.g. `kubelet-kubepods-…`)
//! - the container segment: 64 hex digits, optionally as `cri-containerd-<id>`,
//!   `crio-<id>` or `docker-<id>` (cri-dockerd), with `.scope` under systemd. CRI-O's
//!   `crio-conmon-<id>` is its monitor, not the container, and names none.
//!
//! Must never: name a pod the kernel's lines do not agree on. Each line is
//! `hierarchy-id:controllers:path`; a path may hold any byte but `/` in a segment, newline
//! included, so a process allowed to create cgroups (systemd's delegation gives users
//! that) could forge a second line. Hence: hierarchy ids are unique, every line is
//! well-formed, the unified (`0::`) line decides when there is one, and any other line
//! naming another pod or container is a refusal, not a guess.

use std::collections::BTreeSet;

/// The pod and container a process runs in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodContainer {
    /// The pod's UID, lowercase, with dashes (as the API server spells it).
    pub pod_uid: String,
    /// The container id: 64 lowercase hex digits, without the runtime's prefix.
    pub container_id: String,
}

/// Why a cgroup file names no pod we can trust.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// Larger than any cgroup file the kernel writes.
    #[error("cgroup file above {MAX_CGROUP_BYTES} bytes")]
    TooLarge,
    /// A line is not `hierarchy-id:controllers:/path`.
    #[error("malformed cgroup line {0}")]
    Malformed(usize),
    /// Two lines of one hierarchy: one of them is not the kernel's.
    #[error("cgroup hierarchy {0} listed twice")]
    DuplicateHierarchy(u32),
    /// Lines name different pods or containers.
    #[error("cgroup lines name different pods or containers")]
    Conflict,
}

/// Largest cgroup file read: a v1 host lists about a dozen hierarchies, each path at most
/// PATH_MAX (4096).
pub const MAX_CGROUP_BYTES: usize = 64 * 1024;

/// Most lines in a cgroup file.
const MAX_LINES: usize = 64;

/// The pod and container named by a cgroup file's text; `Ok(None)` for a process in no
/// pod (not an error: it is attested by its unix selectors alone).
pub fn pod_container(text: &str) -> Result<Option<PodContainer>, CgroupError> {
    if text.len() > MAX_CGROUP_BYTES {
        return Err(CgroupError::TooLarge);
    }
    let mut hierarchies = BTreeSet::new();
    let mut unified: Option<Option<PodContainer>> = None;
    let mut named: BTreeSet<PodContainer> = BTreeSet::new();
    let mut pod_without_container = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if number > MAX_LINES {
            return Err(CgroupError::Malformed(number));
        }
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CgroupError::Malformed(number));
        };
        // Decimal as the kernel prints it: no sign, no leading zero.
        let canonical =
            id.bytes().all(|b| b.is_ascii_digit()) && (id == "0" || !id.starts_with('0'));
        let id: u32 = match id.parse() {
            Ok(id) if canonical => id,
            _ => return Err(CgroupError::Malformed(number)),
        };
        if !path.starts_with('/') || controllers.chars().any(char::is_whitespace) {
            return Err(CgroupError::Malformed(number));
        }
        if !hierarchies.insert(id) {
            return Err(CgroupError::DuplicateHierarchy(id));
        }
        let found = in_path(path);
        match &found {
            Found::Container(pc) => {
                named.insert(pc.clone());
            }
            Found::PodOnly => pod_without_container = true,
            Found::Nothing => {}
        }
        if id == 0 && controllers.is_empty() {
            unified = Some(match found {
                Found::Container(pc) => Some(pc),
                _ => None,
            });
        }
    }
    match unified {
        // cgroup v2 (or hybrid): the unified line decides; v1 lines may only agree.
        Some(Some(pc)) => {
            if named.len() > 1 {
                return Err(CgroupError::Conflict);
            }
            Ok(Some(pc))
        }
        Some(None) => {
            if named.is_empty() {
                Ok(None)
            } else {
                Err(CgroupError::Conflict)
            }
        }
        // cgroup v1: every hierarchy that names a container names the same one, and none
        // places the process in the pod but outside that container.
        None => match named.len() {
            0 => Ok(None),
            1 if !pod_without_container => Ok(named.pop_first()),
            _ => Err(CgroupError::Conflict),
        },
    }
}

/// What one cgroup path says.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A container of a pod.
    Container(PodContainer),
    /// A pod's cgroup, but no container's (the pod's own slice, a runtime's monitor).
    PodOnly,
    /// No pod.
    Nothing,
}

/// The pod and container in one cgroup path: the first segment naming a pod under
/// `kubepods`, and the segment right after it.
fn in_path(path: &str) -> Found {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut under_kubepods = false;
    for (i, segment) in segments.iter().enumerate() {
        if let Some(uid) = pod_segment(segment, under_kubepods) {
            return match segments.get(i + 1).and_then(|s| container_segment(s)) {
                Some(container_id) => Found::Container(PodContainer {
                    pod_uid: uid,
                    container_id,
                }),
                None => Found::PodOnly,
            };
        }
        if segment.contains("kubepods") {
            under_kubepods = true;
        }
    }
    Found::Nothing
}

/// The pod UID a segment names: `pod<uid>` below a kubepods segment (cgroupfs), or
/// `…kubepods…-pod<uid>.slice` (systemd, `_` standing for `-`).
fn pod_segment(segment: &str, under_kubepods: bool) -> Option<String> {
    if let Some(slice) = segment.strip_suffix(".slice") {
        if !slice.contains("kubepods") {
            return None;
        }
        let (_, uid) = slice.rsplit_once("-pod")?;
        return pod_uid(&uid.replace('_', "-"));
    }
    let uid = segment.strip_prefix("pod")?;
    if !under_kubepods {
        return None;
    }
    pod_uid(uid)
}

/// A pod UID: a lowercase UUID with dashes, or 32 hex digits (a static pod's hash).
fn pod_uid(uid: &str) -> Option<String> {
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let uuid = uid.len() == 36
        && uid.split('-').map(str::len).eq([8usize, 4, 4, 4, 12])
        && uid.split('-').all(hex);
    let static_pod = uid.len() == 32 && hex(uid);
    (uuid || static_pod).then(|| uid.to_owned())
}

/// The container id a segment names: 64 lowercase hex digits, bare or as
/// `cri-containerd-`, `crio-` or `docker-` `<id>`, with or without `.scope`.
fn container_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    let ok = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9be0f9a7c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0";

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cgroup")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn expected() -> Option<PodContainer> {
        Some(PodContainer {
            pod_uid: UID.into(),
            container_id: CID.into(),
        })
    }

    #[test]
    fn every_runtime_and_driver_names_the_pod_and_container() {
        for name in [
            "v1-cgroupfs-containerd.txt",
            "v1-cgroupfs-docker.txt",
            "v1-cgroupfs-guaranteed.txt",
            "v1-systemd-containerd.txt",
            "v1-systemd-crio.txt",
            "v1-systemd-docker.txt",
            "v2-systemd-containerd.txt",
            "v2-systemd-crio.txt",
            "v2-systemd-docker.txt",
            "v2-cgroupfs-containerd.txt",
            "v2-cgroupfs-crio.txt",
            "v2-kind-nested.txt",
            "v2-cgroup-namespace.txt",
            "hybrid-systemd-containerd.txt",
        ] {
            assert_eq!(pod_container(&fixture(name)), Ok(expected()), "{name}");
        }
    }

    #[test]
    fn a_static_pods_hash_uid_is_a_uid() {
        let uid = "6c2a2e3f1b9e4c6d8f0a1b2c3d4e5f60";
        let text =
            format!("0::/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{CID}.scope\n");
        assert_eq!(
            pod_container(&text),
            Ok(Some(PodContainer {
                pod_uid: uid.into(),
                container_id: CID.into()
            }))
        );
    }

    #[test]
    fn a_process_outside_any_pod_has_no_pod() {
        for name in [
            "v1-host-process.txt",
            "v2-host-process.txt",
            "v2-root.txt",
            "empty.txt",
        ] {
            assert_eq!(pod_container(&fixture(name)), Ok(None), "{name}");
        }
    }

    #[test]
    fn a_pod_cgroup_without_a_container_names_none() {
        // CRI-O's conmon sits beside the container in the pod's slice.
        assert_eq!(pod_container(&fixture("v2-crio-conmon.txt")), Ok(None));
        assert_eq!(
            pod_container(&format!("0::/kubepods/burstable/pod{UID}\n")),
            Ok(None)
        );
        // A "pod…" directory anywhere but under kubepods is not a pod.
        assert_eq!(
            pod_container(&format!("0::/user.slice/pod{UID}/{CID}\n")),
            Ok(None)
        );
    }

    #[test]
    fn forged_and_conflicting_lines_are_refused() {
        for (name, err) in [
            (
                "hostile-injected-unified.txt",
                CgroupError::DuplicateHierarchy(0),
            ),
            ("hostile-injected-v1-line.txt", CgroupError::Conflict),
            ("hostile-two-pods-v1.txt", CgroupError::Conflict),
            ("hostile-v1-outside-unified-pod.txt", CgroupError::Conflict),
        ] {
            assert_eq!(pod_container(&fixture(name)), Err(err), "{name}");
        }
    }

    #[test]
    fn malformed_lines_are_refused() {
        for (name, line) in [
            ("malformed-no-colons.txt", 2),
            ("malformed-relative-path.txt", 1),
            ("malformed-bad-id.txt", 1),
        ] {
            assert_eq!(
                pod_container(&fixture(name)),
                Err(CgroupError::Malformed(line)),
                "{name}"
            );
        }
        for text in [
            "+0::/\n",
            "00::/\n",
            "-1::/\n",
            "0:: /x\n",
            "0:cpu cpuacct:/x\n",
        ] {
            assert!(pod_container(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn near_misses_name_no_container() {
        for segment in [
            &CID[..63],
            &format!("{CID}0"),
            &CID.to_uppercase(),
            &format!("crio-conmon-{CID}"),
            &format!("podman-{CID}.scope"),
            &format!("cri-containerd-{CID}.scope.extra"),
        ] {
            assert_eq!(container_segment(segment), None, "{segment}");
        }
        for uid in [
            "2c48913c-b29f-11e7-9350-02096814779",
            "2C48913C-B29F-11E7-9350-020968147796",
            "2c48913cb29f-11e7-9350-020968147796-",
            "../../etc",
            "",
        ] {
            assert_eq!(pod_uid(uid), None, "{uid}");
        }
    }

    #[test]
    fn very_long_files_are_refused_unread() {
        let long = fixture("very-long.txt");
        assert!(long.len() > MAX_CGROUP_BYTES);
        assert_eq!(pod_container(&long), Err(CgroupError::TooLarge));
        let many: String = (1..=65).map(|i| format!("{i}:c{i}:/\n")).collect();
        assert!(many.len() < MAX_CGROUP_BYTES);
        assert_eq!(pod_container(&many), Err(CgroupError::Malformed(65)));
    }

    proptest::proptest! {
        /// Whatever bytes come, parsing ends with an answer.
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = pod_container(&text);
        }

        /// A forged extra line never changes the pod a v2 file names: it is refused or
        /// agrees.
        #[test]
        fn a_forged_line_never_changes_the_pod(id in 0u32..20, uid in "[0-9a-f]{8}") {
            let forged_uid = format!("{uid}-b29f-11e7-9350-020968147796");
            let text = format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope\n{id}:cpu:/kubepods/pod{forged_uid}/{CID}\n",
                UID.replace('-', "_")
            );
            let answer = pod_container(&text);
            proptest::prop_assert!(answer.is_err() || answer == Ok(expected()));
        }
    }
}
