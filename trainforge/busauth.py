"""Credentials and permissions of the embedded NATS (`trainforge up`, the tests): three users.

- `gateway`: everything (it declares the topology, publishes jobs, control messages and its own events).
- `runner`: what a runner does: take jobs of the jobs stream (its pool consumers), publish run events and
  heartbeats, hold leases, read the cancel bucket, answer requests on its control subjects (preflight,
  drain/resume, advice, the YOLO services `yolo.*` the gateway asks for), store artifacts.
  It can publish no job and no control message.
- `reader`: for outside subscriber services: subscribe to events and heartbeats, create its own consumers on
  the events and heartbeats streams, read single messages there. No publish to any product subject, no access
  to jobs, no deleting or taking over the product's consumers. Its reply subjects are `_INBOX_reader.>`
  (connect with `inbox_prefix="_INBOX_reader"`), so it cannot listen to other clients' replies (which carry
  the jobs runners fetch).

Passwords are generated once into `<state_dir>/secrets/nats-users.json` (mode 0600, folder 0700); the server's
config file, which holds them too, sits beside it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from shared.jobsign import write_secret
from shared.subjects import Subjects

USERS = ("gateway", "runner", "reader")
READER_INBOX_PREFIX = "_INBOX_reader"
USERS_FILE = "nats-users.json"
CONFIG_FILE = "nats-server.conf"


@dataclass(frozen=True)
class BusCredentials:
    """The embedded NATS's users and passwords, kept in `path`."""

    path: Path
    passwords: dict[str, str]

    @classmethod
    def ensure(cls, folder: Path) -> BusCredentials:
        """Read `folder/nats-users.json`, generating what is missing (once)."""
        path = folder / USERS_FILE
        try:
            stored = json.loads(path.read_text())
            passwords = {k: v for k, v in stored.items() if k in USERS and isinstance(v, str)}
        except (OSError, ValueError, AttributeError):
            passwords = {}
        if set(passwords) != set(USERS):
            passwords = {user: passwords.get(user) or secrets.token_urlsafe(24) for user in USERS}
            write_secret(path, (json.dumps(passwords, indent=2) + "\n").encode())
        return cls(path=path, passwords=passwords)

    def url_for(self, url: str, user: str) -> str:
        """`url` with `user`'s credentials as userinfo (for clients that take only a URL)."""
        split = urlsplit(url)
        host = split.netloc.rpartition("@")[2]
        netloc = f"{quote(user, safe='')}:{quote(self.passwords[user], safe='')}@{host}"
        return urlunsplit(split._replace(netloc=netloc))

    def write_server_config(self, folder: Path, prefix: str) -> Path:
        """The nats-server config (JSON, which the server reads) requiring these users; returns its path."""
        path = folder / CONFIG_FILE
        users = [{"user": user, "password": self.passwords[user], "permissions": permissions(user, prefix)}
                 for user in USERS]
        write_secret(path, (json.dumps({"authorization": {"users": users}}, indent=2) + "\n").encode())
        return path


def permissions(user: str, prefix: str) -> dict[str, Any]:
    """The NATS permissions of `user` for the bus names under `prefix`."""
    if user == "gateway":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    names = Subjects(prefix)
    if user == "runner":
        return _runner(names)
    if user == "reader":
        return _reader(names)
    raise ValueError(f"unknown bus user {user!r}")


def _runner(names: Subjects) -> dict[str, Any]:
    jobs, events = names.jobs_stream, names.events_stream
    kv = [f"KV_{bucket}" for bucket in (names.cancel_bucket, names.leases_bucket, names.attempts_bucket,
                                        names.rate_limits_bucket)]
    objects = f"OBJ_{names.artifacts_bucket}"
    streams = [jobs, events, names.runners_stream, *kv, objects]
    readable = [events, *kv, objects]
    publish = [
        names.events_all,
        names.runner_heartbeats_all,
        f"$KV.{names.leases_bucket}.>",
        f"$KV.{names.attempts_bucket}.>",
        f"$O.{names.artifacts_bucket}.>",
        f"$JS.ACK.{jobs}.>",
        f"$JS.ACK.{objects}.>",
        f"$JS.FC.{objects}.>",
        "$JS.API.INFO",
        # nats-py's object store finds the chunks' stream by subject before reading an object (`obs.get`)
        "$JS.API.STREAM.NAMES",
        # ensure_topology: a runner may start before any gateway
        *(f"$JS.API.STREAM.{op}.{stream}" for stream in streams for op in ("INFO", "CREATE", "UPDATE")),
        f"$JS.API.STREAM.PURGE.{objects}",
        *(f"$JS.API.STREAM.MSG.GET.{stream}" for stream in readable),
        *(f"$JS.API.DIRECT.GET.{stream}{tail}" for stream in readable for tail in ("", ".>")),
        # its pool's durable pull consumer on the jobs stream
        f"$JS.API.CONSUMER.INFO.{jobs}.*",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{jobs}.*",
        f"$JS.API.CONSUMER.CREATE.{jobs}.*",
        f"$JS.API.CONSUMER.CREATE.{jobs}.*.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{jobs}.*",
        # reading artifacts back (ordered consumers on the object store)
        f"$JS.API.CONSUMER.CREATE.{objects}",
        f"$JS.API.CONSUMER.CREATE.{objects}.>",
        f"$JS.API.CONSUMER.INFO.{objects}.*",
        f"$JS.API.CONSUMER.DELETE.{objects}.*",
    ]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": ["_INBOX.>", names.control_all]},
        "allow_responses": True,  # replies to preflight, drain/resume, advice and YOLO service requests
    }


def _reader(names: Subjects) -> dict[str, Any]:
    events, runners = names.events_stream, names.runners_stream
    projector = names.projector_consumer
    publish: list[str] = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    for stream in (events, runners):
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"$JS.API.CONSUMER.INFO.{stream}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    deny = [  # the projector's durable consumer is the product's: a reader never changes, feeds on or acks it
        f"$JS.API.CONSUMER.CREATE.{events}.{projector}",
        f"$JS.API.CONSUMER.CREATE.{events}.{projector}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.{projector}",
        f"$JS.API.CONSUMER.MSG.NEXT.{events}.{projector}",
        f"$JS.ACK.{events}.{projector}.>",
        # nor the webhooks' one
        *(pattern.replace(f".{projector}", f".{names.webhooks_consumer}") for pattern in (
            f"$JS.API.CONSUMER.CREATE.{events}.{projector}",
            f"$JS.API.CONSUMER.CREATE.{events}.{projector}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.{projector}",
            f"$JS.API.CONSUMER.MSG.NEXT.{events}.{projector}",
            f"$JS.ACK.{events}.{projector}.>",
        )),
    ]
    return {
        "publish": {"allow": publish, "deny": deny},
        "subscribe": {"allow": [names.events_all, names.runner_heartbeats_all, f"{READER_INBOX_PREFIX}.>"]},
    }
