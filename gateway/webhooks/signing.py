"""Webhook signatures: HMAC-SHA256 with the webhook's secret over `<timestamp>.<body>`.

Headers of every delivery:
- `Trainforge-Delivery`: the delivery id, the same on every attempt of one event to one webhook (idempotency);
- `Trainforge-Event`: the event type (`run.completed`, ...);
- `Trainforge-Timestamp`: Unix seconds when this attempt was signed (refuse old ones against replay);
- `Trainforge-Signature`: `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "Trainforge-Signature"
TIMESTAMP_HEADER = "Trainforge-Timestamp"
DELIVERY_HEADER = "Trainforge-Delivery"
EVENT_HEADER = "Trainforge-Event"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str, *, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does (docs/operations.md has the same in a few lines of its own)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, ts, body), header)


def headers(secret: str, timestamp: int, body: bytes, delivery_id: str, event_type: str) -> dict[str, str]:
    return {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id, EVENT_HEADER: event_type,
            TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body),
            "User-Agent": "trainforge-webhooks/1"}
