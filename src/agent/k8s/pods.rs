//! The kubelet's pod list (`GET /pods`, a `v1.PodList`) and what a caller's pod says
//! about it: pure, only the fields writ selects on.
//!
//! Must never: answer for a container the list does not place in the cgroup's pod, or for
//! a pod that is no longer running.

use super::cgroup::PodContainer;
use crate::policy::Selector;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// `v1.PodList`, as far as writ reads it.
#[derive(Debug, Default, Deserialize)]
pub struct PodList {
    /// The pods.
    #[serde(default)]
    pub items: Vec<Pod>,
}

/// `v1.Pod`.
#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    /// Name, namespace, uid, labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Service account and node.
    #[serde(default)]
    pub spec: Spec,
    /// Phase and container statuses.
    #[serde(default)]
    pub status: Status,
}

/// `v1.ObjectMeta`.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    /// The pod's name.
    #[serde(default)]
    pub name: String,
    /// Its namespace.
    #[serde(default)]
    pub namespace: String,
    /// Its UID.
    #[serde(default)]
    pub uid: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `v1.PodSpec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The service account the pod runs as.
    #[serde(default)]
    pub service_account_name: String,
    /// The node it was scheduled to.
    #[serde(default)]
    pub node_name: String,
}

/// `v1.PodStatus`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default)]
    pub phase: String,
    /// The app containers.
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    /// The init containers (a process may call while its pod initialises).
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
}

/// `v1.ContainerStatus`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name in the pod.
    #[serde(default)]
    pub name: String,
    /// The image reference it runs.
    #[serde(default)]
    pub image: String,
    /// The image id (usually a digest reference).
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    /// `<runtime>://<id>`; empty until the runtime made the container.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

/// What the pod list says about the caller's pod and container.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The container, in the cgroup's pod, running: its selectors.
    Found(BTreeSet<Selector>),
    /// Not (yet) in the list, or its pod not yet running: a new pod whose status the
    /// kubelet has not written yet. Worth asking again shortly.
    NotYet,
    /// Refused for good: why.
    Refused(&'static str),
}

impl PodList {
    /// Looks the caller's container up. `node_name`, when configured, is the only node
    /// whose pods are answered for.
    pub fn lookup(&self, caller: &PodContainer, node_name: Option<&str>) -> Lookup {
        let mut holder = None;
        for pod in &self.items {
            let statuses = pod
                .status
                .container_statuses
                .iter()
                .chain(&pod.status.init_container_statuses);
            for status in statuses {
                if runtime_id(&status.container_id) == Some(caller.container_id.as_str()) {
                    if holder.is_some() {
                        return Lookup::Refused("two pods list the caller's container");
                    }
                    holder = Some((pod, status));
                }
            }
        }
        let Some((pod, status)) = holder else {
            return Lookup::NotYet;
        };
        if pod.metadata.uid != caller.pod_uid {
            return Lookup::Refused(
                "the caller's container belongs to another pod than its cgroup names",
            );
        }
        if node_name.is_some_and(|node| node != pod.spec.node_name) {
            return Lookup::Refused("the caller's pod is scheduled to another node");
        }
        match pod.status.phase.as_str() {
            "Running" => Lookup::Found(selectors(pod, status)),
            "Succeeded" | "Failed" => Lookup::Refused("the caller's pod has terminated"),
            _ => Lookup::NotYet,
        }
    }
}

/// The id in a `containerID` of the form `<runtime>://<id>`.
fn runtime_id(container_id: &str) -> Option<&str> {
    container_id.split_once("://").map(|(_, id)| id)
}

/// The selectors of `status`'s container in `pod`. A value that is not a valid selector
/// (a name Kubernetes would not allow) is left out: fewer selectors match fewer profiles.
fn selectors(pod: &Pod, status: &ContainerStatus) -> BTreeSet<Selector> {
    let meta = &pod.metadata;
    let mut texts = vec![
        format!("k8s:ns:{}", meta.namespace),
        format!("k8s:sa:{}", pod.spec.service_account_name),
        format!("k8s:pod-name:{}", meta.name),
        format!("k8s:pod-uid:{}", meta.uid),
        format!("k8s:node-name:{}", pod.spec.node_name),
        format!("k8s:container-name:{}", status.name),
        format!("k8s:container-image:{}", status.image),
        format!("k8s:container-image:{}", status.image_id),
    ];
    texts.extend(
        meta.labels
            .iter()
            .map(|(k, v)| format!("k8s:pod-label:{k}:{v}")),
    );
    texts.iter().filter_map(|t| t.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9be0f9a7c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0";

    fn list(phase: &str, container_id: &str) -> PodList {
        serde_json::from_value(serde_json::json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "items": [
                {
                    "metadata": {"name": "other", "namespace": "default", "uid": "00000000-0000-4000-8000-000000000000"},
                    "spec": {"serviceAccountName": "default", "nodeName": "node-1"},
                    "status": {"phase": "Running", "containerStatuses": [
                        {"name": "c", "image": "busybox", "imageID": "", "containerID": "containerd://1111111111111111111111111111111111111111111111111111111111111111"}
                    ]}
                },
                {
                    "metadata": {"name": "triage-7d9f8", "namespace": "sre", "uid": UID,
                                 "labels": {"app": "triage", "bad label": "x"}, "annotations": {"a": "b"}},
                    "spec": {"serviceAccountName": "triage-agent", "nodeName": "node-1", "containers": []},
                    "status": {"phase": phase, "containerStatuses": [
                        {"name": "agent", "image": "registry.example/sre/triage:1.2",
                         "imageID": "registry.example/sre/triage@sha256:abcd", "containerID": container_id, "ready": true}
                    ]}
                }
            ]
        }))
        .unwrap()
    }

    fn caller() -> PodContainer {
        PodContainer {
            pod_uid: UID.into(),
            container_id: CID.into(),
        }
    }

    #[test]
    fn a_running_container_gets_its_pods_selectors() {
        let found =
            list("Running", &format!("containerd://{CID}")).lookup(&caller(), Some("node-1"));
        let expected: BTreeSet<Selector> = [
            "k8s:ns:sre",
            "k8s:sa:triage-agent",
            "k8s:pod-name:triage-7d9f8",
            &format!("k8s:pod-uid:{UID}"),
            "k8s:node-name:node-1",
            "k8s:container-name:agent",
            "k8s:container-image:registry.example/sre/triage:1.2",
            "k8s:container-image:registry.example/sre/triage@sha256:abcd",
            "k8s:pod-label:app:triage",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(found, Lookup::Found(expected));
    }

    #[test]
    fn a_container_not_yet_listed_or_a_pending_pod_is_not_yet() {
        assert_eq!(list("Running", "").lookup(&caller(), None), Lookup::NotYet);
        assert_eq!(
            list("Pending", &format!("cri-o://{CID}")).lookup(&caller(), None),
            Lookup::NotYet
        );
    }

    #[test]
    fn another_pods_container_a_terminated_pod_or_another_node_is_refused() {
        let mut other = caller();
        other.container_id = "1".repeat(64);
        assert!(matches!(
            list("Running", &format!("containerd://{CID}")).lookup(&other, None),
            Lookup::Refused(_)
        ));
        assert!(matches!(
            list("Succeeded", &format!("containerd://{CID}")).lookup(&caller(), None),
            Lookup::Refused(_)
        ));
        assert!(matches!(
            list("Running", &format!("containerd://{CID}")).lookup(&caller(), Some("node-2")),
            Lookup::Refused(_)
        ));
    }

    #[test]
    fn a_container_listed_twice_is_refused() {
        let mut pods = list("Running", &format!("containerd://{CID}"));
        pods.items[0].status.container_statuses[0].container_id = format!("docker://{CID}");
        assert!(matches!(pods.lookup(&caller(), None), Lookup::Refused(_)));
    }
}
