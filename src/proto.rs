//! Generated code for writ's protos (compiled in build.rs through protox).
#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// Every proto above, compiled (an encoded `google.protobuf.FileDescriptorSet`, from
/// build.rs): what gRPC server reflection answers from.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/writ_descriptors.bin"));

/// The SPIFFE Workload API. The proto has no package, so its items live at the root.
pub mod workload {
    tonic::include_proto!("_");
}

/// writ's admin API, `writ.admin.v1`.
pub mod admin {
    tonic::include_proto!("writ.admin.v1");
}

/// writ's node API, `writ.node.v1`.
pub mod node {
    tonic::include_proto!("writ.node.v1");
}

/// writ's agent API, `writ.agent.v1`, served on the agent's socket.
pub mod agent {
    tonic::include_proto!("writ.agent.v1");
}

/// writ's revocation feed, `writ.revocation.v1`, served on the agent's socket.
pub mod revocation {
    tonic::include_proto!("writ.revocation.v1");
}
