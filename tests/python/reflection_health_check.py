#!/usr/bin/env python3
"""Stock grpcio clients against a running `writ dev`: reflection, health and a real admin
call, on the admin socket and on the Workload API socket (tests/grpc_health.rs).

Every channel is a plain `grpc.insecure_channel("unix:PATH")` with no options: grpcio
then sends the socket path, percent-encoded, as :authority, which the server must repair
(src/h2_authority) on both sockets, or every call here is reset.

Usage: reflection_health_check.py ADMIN_SOCKET WORKLOAD_SOCKET TRUST_DOMAIN

Prints one line per step, "ok <step> ..." or "FAIL <step> ..."; exits 1 if any failed.
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

HEALTH = "grpc.health.v1.Health"
REFLECTION = {
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
ADMIN_SERVICES = {"writ.admin.v1.Admin", HEALTH} | REFLECTION
WORKLOAD_SERVICES = {
    "SpiffeWorkloadAPI",
    "writ.agent.v1.AgentApi",
    "writ.revocation.v1.Revocation",
    HEALTH,
} | REFLECTION

failures = []


def step(name, fn):
    try:
        detail = fn()
        print(f"ok {name} {detail or ''}".rstrip())
    except Exception as e:  # every failure is reported, then the script exits 1
        failures.append(name)
        code = e.code() if isinstance(e, grpc.RpcError) else type(e).__name__
        details = e.details() if isinstance(e, grpc.RpcError) else e
        print(f"FAIL {name} {code} {details}")


def channel(path):
    # No options: in particular no grpc.default_authority.
    return grpc.insecure_channel(f"unix:{path}")


def listed(chan, expected):
    services = set(ProtoReflectionDescriptorDatabase(chan).get_services())
    if services != expected:
        raise AssertionError(f"listed {sorted(services)}, expected {sorted(expected)}")
    return ",".join(sorted(services))


def listed_v1(chan, expected):
    # grpc.reflection.v1 has the same messages as v1alpha under another service name.
    call = chan.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = list(call(iter([request]), timeout=30))
    services = {s.name for a in answers for s in a.list_services_response.service}
    if services != expected:
        raise AssertionError(f"v1 listed {sorted(services)}, expected {sorted(expected)}")
    return f"{len(services)} services"


def serving(chan, services):
    stub = health_pb2_grpc.HealthStub(chan)
    for service in services:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            raise AssertionError(f"{service!r} is {answer.status}")
    return ",".join(repr(s) for s in services)


def message_class(pool, name):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def admin_calls(chan, trust_domain):
    # Stubs made at run time from the server's own descriptors (no protoc, no generated
    # code): the pool resolves every type through reflection.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(chan))
    admin = pool.FindServiceByName("writ.admin.v1.Admin")
    results = []
    for method_name in ("Health", "ListProfiles"):
        method = admin.FindMethodByName(method_name)
        request = message_class(pool, method.input_type.full_name)
        response = message_class(pool, method.output_type.full_name)
        call = chan.unary_unary(
            f"/writ.admin.v1.Admin/{method_name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        results.append((method_name, call(request(), timeout=30)))
    health = results[0][1]
    if health.trust_domain != trust_domain or not health.signing:
        raise AssertionError(f"Health answered {health}")
    # Many calls on one channel: grpcio moves :authority into its HPACK table and refers
    # to it by index after the first.
    call = chan.unary_unary(
        "/writ.admin.v1.Admin/Health",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    for i in range(50):
        call(b"", timeout=30.0 + i * 0.013)
    return f"trust_domain={health.trust_domain} profiles={len(results[1][1].profiles)}"


def main():
    admin_socket, workload_socket, trust_domain = sys.argv[1:4]
    admin = channel(admin_socket)
    workload = channel(workload_socket)
    step("admin-reflection", lambda: listed(admin, ADMIN_SERVICES))
    step("admin-reflection-v1", lambda: listed_v1(admin, ADMIN_SERVICES))
    step("admin-health", lambda: serving(admin, ["", "writ.admin.v1.Admin"]))
    step("admin-rpc", lambda: admin_calls(admin, trust_domain))
    step("workload-reflection", lambda: listed(workload, WORKLOAD_SERVICES))
    step("workload-reflection-v1", lambda: listed_v1(workload, WORKLOAD_SERVICES))
    step("workload-health", lambda: serving(workload, ["", "SpiffeWorkloadAPI"]))
    admin.close()
    workload.close()
    if failures:
        print(f"failed: {', '.join(failures)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
