"""Argument vectors for `docker`, and the fixed bash scripts they run inside the container.

The host never runs a shell: each call is `docker` with an argument vector. Inside the container, bash runs
one of the constant scripts below; client strings (the start command, working directory, environment)
reach it only as positional arguments (`$1..$n`) or `NAME=value` arguments of `env`, never spliced into
script text. The start command itself is a shell command by design, run by bash inside the container.

Files of one attempt, inside the container: `<run_dir>/<run_id>/attempt-<n>/job.{log,pid,exit}`.
- `job.pid`: `<pgid> <start time>` of the command's process group (from `/proc/<pgid>/stat`, so a reused
  pid is not mistaken for it);
- `job.log`: everything the command wrote to stdout and stderr (the runner re-reads it after a crash);
- `job.exit`: the command's exit status, written by the wrapper when the command ended.
The wrapper and the follower report on their stderr: `trainforge-pgid <N>` once the command runs, and
`trainforge-exit <status>` when it has ended; anything else there comes from docker or the wrapper.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from runner.targets import ContainerTarget

PGID_MARK = "trainforge-pgid "
EXIT_MARK = "trainforge-exit "

WRAPPER = r"""set -u
workdir=$1 log=$2 pidfile=$3 exitfile=$4 command=$5
mkdir -p -- "${log%/*}" || exit 125
cd -- "$workdir" || { echo "trainforge: cannot enter the working directory $workdir" >&2; exit 125; }
rm -f -- "$pidfile" "$exitfile"
: > "$log" || exit 125
setsid -w bash -c \
  'read -r -a st 2>/dev/null < "/proc/$$/stat"; echo "$$ ${st[21]:-}" > "$1" && exec bash -c "$2"' \
  trainforge-job "$pidfile" "$command" >> "$log" 2>&1 < /dev/null &
child=$!
while [ ! -s "$pidfile" ] && kill -0 "$child" 2>/dev/null; do sleep 0.05; done
if [ -s "$pidfile" ]; then read -r pgid _ < "$pidfile"; echo "trainforge-pgid $pgid" >&2; fi
tail --pid="$child" -s 0.2 -n +1 -f -- "$log" 2>/dev/null
wait "$child"
rc=$?
echo "$rc" > "$exitfile"
echo "trainforge-exit $rc" >&2
exit "$rc"
"""
"""Start the command in its own session and process group (`setsid`), detached from this exec: its output
goes to the log file only, so it keeps running when the `docker exec` client dies. The wrapper streams the
log to its stdout (`tail --pid`) and waits for the command."""

FOLLOW = r"""set -u
log=$1 pidfile=$2 exitfile=$3 offset=$4
pgid=
read -r pgid _ 2>/dev/null < "$pidfile"
case $pgid in ''|*[!0-9]*) echo "trainforge: no process recorded in $pidfile" >&2; exit 125;; esac
echo "trainforge-pgid $pgid" >&2
tail --pid="$pgid" -s 0.2 -c +"$((offset + 1))" -f -- "$log" 2>/dev/null
i=0
while [ ! -s "$exitfile" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -s "$exitfile" ]; then read -r rc < "$exitfile"; echo "trainforge-exit $rc" >&2; exit "$rc"; fi
echo "trainforge: the command ended but its exit status was not recorded" >&2
exit 125
"""
"""Re-attach to a command started by an earlier attempt: stream its log from a byte offset until it ends."""

PROBE = r"""shopt -s nullglob
for pidfile in "$1"/attempt-*/job.pid; do
  dir=${pidfile%/job.pid}
  [ -e "$dir/job.exit" ] && continue
  pgid= start=
  read -r pgid start 2>/dev/null < "$pidfile" || [ -n "$pgid" ] || continue
  case $pgid in ''|*[!0-9]*) continue;; esac
  kill -0 -- "-$pgid" 2>/dev/null || continue
  if [ -n "$start" ] && [ -r "/proc/$pgid/stat" ]; then
    read -r -a st 2>/dev/null < "/proc/$pgid/stat"
    [ "${st[21]:-}" = "$start" ] || continue
  fi
  echo "$pgid $dir"
  exit 0
done
"""
"""Print `<pgid> <attempt folder>` of a still-running command of any earlier attempt of the run."""

SIGNAL = r"""kill -"$1" -- "-$2" 2>/dev/null || exit 3"""
"""Send a signal (TERM, KILL, or 0 to test) to a process group; bash's own `kill`: no procps needed.
Exit status 3: no such process group (docker's own errors use other statuses)."""
NO_SUCH_GROUP = 3

Signal = Literal["TERM", "KILL", "0"]


@dataclass(frozen=True)
class AttemptFiles:
    dir: str
    """Folder of one attempt inside the container."""

    @property
    def log(self) -> str:
        return posixpath.join(self.dir, "job.log")

    @property
    def pid(self) -> str:
        return posixpath.join(self.dir, "job.pid")

    @property
    def exit(self) -> str:
        return posixpath.join(self.dir, "job.exit")


def run_files_dir(target: ContainerTarget, run_id: str) -> str:
    return posixpath.join(target.run_dir, run_id)


def attempt_files(target: ContainerTarget, run_id: str, attempt: int) -> AttemptFiles:
    return AttemptFiles(posixpath.join(run_files_dir(target, run_id), f"attempt-{attempt}"))


def inspect_argv(target: ContainerTarget) -> list[str]:
    running = "{{.State.Running}}"
    return [target.docker, "inspect", "--type", "container", "--format", running, target.container]


def start_argv(
    target: ContainerTarget, *, env: dict[str, str], workdir: str, files: AttemptFiles, command: str
) -> list[str]:
    assignments = [f"{key}={value}" for key, value in {"LANG": "C.UTF-8", **env}.items()]
    return [
        target.docker, "exec", "-i", target.container,
        "env", *assignments,
        "bash", "-c", WRAPPER, "trainforge-wrapper", workdir, files.log, files.pid, files.exit, command,
    ]  # fmt: skip


def follow_argv(target: ContainerTarget, files: AttemptFiles, offset: int) -> list[str]:
    return [
        target.docker, "exec", "-i", target.container,
        "bash", "-c", FOLLOW, "trainforge-follow", files.log, files.pid, files.exit, str(int(offset)),
    ]  # fmt: skip


def probe_argv(target: ContainerTarget, run_id: str) -> list[str]:
    folder = run_files_dir(target, run_id)
    return [target.docker, "exec", target.container, "bash", "-c", PROBE, "trainforge-probe", folder]


def signal_argv(target: ContainerTarget, pgid: int, signal: Signal) -> list[str]:
    script = [SIGNAL, "trainforge-signal", signal, str(pgid)]
    return [target.docker, "exec", target.container, "bash", "-c", *script]
