#!/usr/bin/env python3
"""py-spiffe (unchanged, from PyPI) against a writ Workload API.

Finds the socket in SPIFFE_ENDPOINT_SOCKET, like every SPIFFE client.

  workload_check.py watch N    stream X.509 contexts; print one JSON line per update:
                               {"ids": [...], "hints": [...], "serials": [...],
                                "not_after": [...], "chain_lens": [...], "verified": true}
                               and {"error": "..."} when the stream fails; stop after N
                               updates or the first error.
  workload_check.py jwt AUD    fetch a JWT-SVID for AUD and validate it through the
                               Workload API; print {"sub": ..., "validated": true}.

"verified" is what the clients themselves do not check: each SVID's chain (the leaf, then
any intermediates, each signed by the next) ends in a certificate signed by a CA of its own
trust domain's bundle, and the private key is the leaf's.
"""

import json
import queue
import sys

from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient


def verified(ctx):
    for svid in ctx.x509_svids:
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None:
            return False
        leaf = svid.leaf
        chain = list(svid.cert_chain)
        for child, parent in zip(chain, chain[1:]):
            try:
                child.verify_directly_issued_by(parent)
            except Exception:
                return False
        signed = False
        for ca in bundle.x509_authorities:
            try:
                chain[-1].verify_directly_issued_by(ca)
                signed = True
                break
            except Exception:
                continue
        if not signed:
            return False
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if svid.private_key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
            return False
    return True


def describe(ctx):
    svids = ctx.x509_svids
    return {
        "ids": [str(s.spiffe_id) for s in svids],
        "serials": [format(s.leaf.serial_number, "x") for s in svids],
        "not_after": [int(s.leaf.not_valid_after_utc.timestamp()) for s in svids],
        "chain_lens": [len(s.cert_chain) for s in svids],
        "verified": verified(ctx),
    }


def watch(limit):
    client = WorkloadApiClient()
    events = queue.Queue()
    handler = client.stream_x509_contexts(
        on_success=lambda ctx: events.put(("ok", ctx)),
        on_error=lambda err: events.put(("error", err)),
        retry_connect=False,
    )
    try:
        for _ in range(limit):
            kind, value = events.get(timeout=60)
            if kind == "error":
                print(json.dumps({"error": repr(value)}), flush=True)
                return
            print(json.dumps(describe(value)), flush=True)
    finally:
        handler.cancel()
        client.close()


def jwt(audience):
    client = WorkloadApiClient()
    try:
        svid = client.fetch_jwt_svid(audience={audience})
        checked = client.validate_jwt_svid(svid.token, audience)
        print(json.dumps({"sub": str(checked.spiffe_id), "validated": True}), flush=True)
    finally:
        client.close()


def main():
    if sys.argv[1] == "watch":
        watch(int(sys.argv[2]))
    elif sys.argv[1] == "jwt":
        jwt(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
