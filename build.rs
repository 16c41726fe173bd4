//! Compiles the protos with protox (pure Rust): a fresh machine needs no protoc. The
//! compiled descriptors are also written, encoded, to `OUT_DIR/writ_descriptors.bin`
//! for gRPC server reflection (`crate::proto::FILE_DESCRIPTOR_SET`).

use prost::Message;

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
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("writ_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
