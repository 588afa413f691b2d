#!/usr/bin/env python3
"""Verify a keygate webhook (Standard Webhooks v1) with nothing but Python's standard library.

Usage: verify.py SECRET WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE BODY_FILE [NOW]
Exits 0 and prints "valid", or exits 1 with the reason.
"""
import base64
import hashlib
import hmac
import sys
import time

TOLERANCE = 5 * 60


def verify(secret, msg_id, timestamp, signatures, body, now=None):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    now = int(time.time()) if now is None else now
    if abs(now - int(timestamp)) > TOLERANCE:
        raise ValueError("timestamp outside the 5-minute tolerance")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in signatures.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return
    raise ValueError("no signature matches")


if __name__ == "__main__":
    secret, msg_id, timestamp, signatures, body_file = sys.argv[1:6]
    now = int(sys.argv[6]) if len(sys.argv) > 6 else None
    with open(body_file, "rb") as f:
        body = f.read()
    try:
        verify(secret, msg_id, timestamp, signatures, body, now)
    except ValueError as reason:
        print(f"not valid: {reason}", file=sys.stderr)
        sys.exit(1)
    print("valid")
