//! Compiles the protos with protox (pure Rust): a fresh machine needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/workload.proto",
        "proto/writ/admin/v1/admin.proto",
        "proto/writ/node/v1/node.proto",
        "proto/writ/agent/v1/agent.proto",
        "proto/writ/revocation/v1/revocation.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
