"""`trainforge secrets init DIR`: the secrets of a deployment whose parts run apart (Docker Compose, several
hosts), one folder per part, so each part is given only what it needs.

    DIR/nats/nats-server.conf      the NATS users and their permissions (gateway, runner, reader)
    DIR/gateway/job-signing.key    the private key that signs jobs; only the gateway holds it
    DIR/gateway/nats-password      the gateway's NATS password
    DIR/runner/job-verify.pub      the public key runners check jobs with
    DIR/runner/nats-password       the runners' NATS password
    DIR/runner/gateway-token       the runners' credential for the gateway (dataset downloads), not a user's
    DIR/gateway/runner-tokens      the SHA-256 of each runner credential the gateway accepts
    DIR/reader/nats-password       the read-only user's password, for outside subscriber services

Running it again keeps what exists (folders 0700, secrets 0600; the public key 0644). `trainforge up` makes
the same things in its own state folder by itself.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from shared.jobsign import ensure_key_pair, write_secret
from trainforge.busauth import USERS, BusCredentials

PARTS = ("nats", "gateway", "runner", "reader")


def init_secrets(out: Path, prefix: str) -> dict[str, Path]:
    """Write (once) every part's secrets below `out`; the folder of each part."""
    folders = {part: out / part for part in PARTS}
    for folder in [out, *folders.values()]:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
    bus = BusCredentials.ensure(folders["nats"])
    bus.write_server_config(folders["nats"], prefix)
    for user in USERS:
        path = folders[user] / "nats-password"
        if not path.exists() or path.read_text().strip() != bus.passwords[user]:
            write_secret(path, (bus.passwords[user] + "\n").encode())
    public = folders["runner"] / "job-verify.pub"
    ensure_key_pair(folders["gateway"] / "job-signing.key", public)
    token_file = folders["runner"] / "gateway-token"
    if not token_file.exists():
        write_secret(token_file, (secrets.token_urlsafe(32) + "\n").encode())
    digest = hashlib.sha256(token_file.read_text().strip().encode()).hexdigest()
    accepted = folders["gateway"] / "runner-tokens"
    known = accepted.read_text().split() if accepted.exists() else []
    if digest not in known:
        write_secret(accepted, ("\n".join([*known, digest]) + "\n").encode())
    return folders
