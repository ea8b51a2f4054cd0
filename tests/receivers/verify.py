"""Verifies one received webhook the way a receiver of each scheme does, with Python's own
hmac and the `cryptography` package's Ed25519 (independent of hookrelay's Rust code).

Reads {"scheme", "key", "headers", "body" (base64)} on stdin; exits 0 and prints "ok" when
the signature verifies, else 1 and says why. `key` is what the receiver holds: the
`whpk_` public key for standard-ed25519, the `whsec_` secret's text for convoy and github.
"""

import base64
import hashlib
import hmac
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def verify(case):
    headers = {k.lower(): v for k, v in case["headers"].items()}
    body = base64.b64decode(case["body"])
    key = case["key"]
    scheme = case["scheme"]
    if scheme == "standard-ed25519":
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.removeprefix("whpk_")))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        for entry in headers["webhook-signature"].split(" "):
            version, _, signature = entry.partition(",")
            if version != "v1a":
                continue
            try:
                public.verify(base64.b64decode(signature), signed)
                return None
            except InvalidSignature:
                continue
        return "no v1a signature verifies under the public key"
    if scheme == "github":
        expected = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        given = headers.get("x-hub-signature-256", "")
        return None if hmac.compare_digest(expected, given) else f"x-hub-signature-256 {given!r}"
    if scheme == "convoy":
        fields = [f.partition("=") for f in headers.get("x-convoy-signature", "").split(",")]
        timestamp = next((v for k, _, v in fields if k == "t"), "")
        expected = hmac.new(key.encode(), timestamp.encode() + b"," + body, hashlib.sha256).hexdigest()
        if any(k == "v1" and hmac.compare_digest(expected, v) for k, _, v in fields):
            return None
        return f"x-convoy-signature {headers.get('x-convoy-signature')!r}"
    return f"unknown scheme {scheme}"


if __name__ == "__main__":
    problem = verify(json.load(sys.stdin))
    print(problem or "ok")
    sys.exit(1 if problem else 0)
