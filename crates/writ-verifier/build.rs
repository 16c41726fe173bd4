//! With the `workload-api` feature: compiles the client of writ's revocation feed
//! (`writ.revocation.v1`) with protox (pure Rust, no protoc). The standard Workload API
//! client is the `spiffe` crate's, so `workload.proto` is not compiled here.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "workload-api")]
    {
        let proto = "writ/revocation/v1/revocation.proto";
        println!("cargo:rerun-if-changed=../../proto/{proto}");
        let descriptors = protox::compile([proto], ["../../proto"])?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(false)
            .compile_fds(descriptors)?;
    }
    Ok(())
}
