"""Validates an RFC 8414 authorization server metadata document with authlib's validator.

Usage: python3 rfc8414.py METADATA.json ISSUER
Exit 0 when it validates and its issuer is ISSUER; otherwise prints why and exits 1.
Needs `pip install authlib` (the `trust` crate's `conformance` test runs it).
"""
import json
import sys

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata


def main(path, issuer):
    with open(path) as f:
        doc = json.load(f)
    metadata = AuthorizationServerMetadata(doc)
    try:
        metadata.validate()
    except ValueError as e:
        print(f"authlib: {e}")
        return 1
    if doc.get("issuer") != issuer:
        print(f"issuer {doc.get('issuer')!r} is not {issuer!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
