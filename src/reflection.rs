//! gRPC server reflection (through tonic-reflection) on the admin socket and the Workload
//! API socket (docs/architecture.md, "Health and reflection"): a client such as grpcurl
//! or Python's grpcio-reflection lists the services and reads their descriptors without
//! the protos. The SPIFFE Workload API spec recommends it.
//!
//! Both versions are served: `grpc.reflection.v1` and `grpc.reflection.v1alpha`, which
//! many clients (grpcio-reflection's descriptor database among them) still ask first.
//! Each socket lists only the services it serves; the descriptors come from the same
//! compiled protos as the code ([`crate::proto::FILE_DESCRIPTOR_SET`]).

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ServerReflectionAlpha,
    ServerReflectionServer as ServerReflectionAlphaServer,
};

/// The standard health service's name, listed beside a socket's own services.
pub const HEALTH: &str = "grpc.health.v1.Health";

/// Both reflection services' names: each version lists both, as a client may ask one
/// about the other.
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn builder<'a>(services: &[&str]) -> tonic_reflection::server::Builder<'a> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for service in services.iter().chain(&REFLECTION) {
        builder = builder.with_service_name(*service);
    }
    builder
}

/// `grpc.reflection.v1`, listing `services` (fully qualified names) and reflection.
pub fn v1(
    services: &[&str],
) -> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    builder(services).build_v1()
}

/// `grpc.reflection.v1alpha`, listing `services` (fully qualified names) and reflection.
pub fn v1alpha(
    services: &[&str],
) -> Result<ServerReflectionAlphaServer<impl ServerReflectionAlpha>, tonic_reflection::server::Error>
{
    builder(services).build_v1alpha()
}
