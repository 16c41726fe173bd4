#!/usr/bin/env python3
"""Calls a SPIFFE Workload API on a Unix socket the way Python workloads do.

grpcio (C-core) sends the socket path, percent-encoded, as the HTTP/2 :authority. This
script drives many calls over one channel so that grpcio sends that :authority as a new
literal, then as indexed references, then re-sends the literal when its table entry nears
eviction (distinct grpc-timeout values fill the table), and also goes through py-spiffe.

Usage: grpc_authority_check.py SOCKET EXPECTED_HEX [--calls N] [--concurrent N] [--spiffe N]
(py-spiffe finds the socket through SPIFFE_ENDPOINT_SOCKET=unix:///path.)

EXPECTED_HEX is the serialized X509BundlesResponse every raw call must return. Prints one
line per step, "ok <step> ..." or "FAIL <step> <grpc status> <details>"; exits 1 if any
step failed.
"""

import argparse
import concurrent.futures
import sys

import grpc

METHOD = "/SpiffeWorkloadAPI/FetchX509Bundles"
METADATA = (("workload.spiffe.io", "true"),)


def raw_call(call, expected, i):
    # A different deadline on every call gives a different grpc-timeout value.
    timeout = 30.0 + (i % 997) * 0.0137
    responses = list(call(b"", metadata=METADATA, timeout=timeout))
    if responses != [expected]:
        raise AssertionError(f"call {i}: unexpected responses {responses!r}")


def step_grpcio(socket, expected, calls, concurrent):
    channel = grpc.insecure_channel(f"unix:{socket}")
    call = channel.unary_stream(
        METHOD,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        for i in range(calls):
            raw_call(call, expected, i)
        if concurrent:
            with concurrent_pool() as pool:
                futures = [pool.submit(raw_call, call, expected, calls + i) for i in range(concurrent)]
                for f in futures:
                    f.result()
    finally:
        channel.close()
    return f"{calls} sequential and {concurrent} concurrent calls on one channel"


def concurrent_pool():
    return concurrent.futures.ThreadPoolExecutor(max_workers=16)


def step_spiffe(calls):
    from spiffe import TrustDomain, WorkloadApiClient

    # The socket comes from SPIFFE_ENDPOINT_SOCKET, as for a deployed workload.
    with WorkloadApiClient() as client:
        for i in range(calls):
            bundles = client.fetch_x509_bundles(timeout=20.0 + i * 0.011)
            bundle = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
            if bundle is None or len(bundle.x509_authorities) != 1:
                raise AssertionError(f"call {i}: unexpected bundle set")
    return f"{calls} py-spiffe fetch_x509_bundles calls"


def describe(err):
    # py-spiffe wraps grpc.RpcError; find the status through the cause chain.
    seen = err
    while seen is not None:
        if isinstance(seen, grpc.RpcError) and hasattr(seen, "code"):
            return f"{seen.code()} {seen.details()!r}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(err).__name__}: {err}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("expected_hex")
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--concurrent", type=int, default=0)
    parser.add_argument("--spiffe", type=int, default=0)
    args = parser.parse_args()
    expected = bytes.fromhex(args.expected_hex)

    steps = []
    if args.calls or args.concurrent:
        steps.append(("grpcio", lambda: step_grpcio(args.socket, expected, args.calls, args.concurrent)))
    if args.spiffe:
        steps.append(("spiffe", lambda: step_spiffe(args.spiffe)))

    failed = False
    for name, run in steps:
        try:
            print(f"ok {name} {run()}", flush=True)
        except Exception as err:  # report every step, then fail
            failed = True
            print(f"FAIL {name} {describe(err)}", flush=True)
    print(f"grpcio {grpc.__version__}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
