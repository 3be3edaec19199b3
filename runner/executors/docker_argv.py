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
The wrapper and the follower report on their stderr: `trainforge-pgid <N>` once the command runs,
`trainforge-detached` when the runner let go on purpose, and `trainforge-exit <status>` when it has ended;
anything else there comes from docker or the wrapper.

The runner keeps the exec's stdin open (`docker exec -i`, a pipe) for as long as it watches the command. When
the runner dies (kill -9) its end of the pipe closes, `docker exec` passes the end of input on, and the
wrapper ends the command's process group, so that a next attempt elsewhere never runs beside an orphan.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from runner.targets import ContainerTarget

PGID_MARK = "trainforge-pgid "
EXIT_MARK = "trainforge-exit "
DETACHED_MARK = "trainforge-detached"
DETACH_BYTE = b"d"
"""Written by the runner on the exec's stdin before it closes it on purpose: keep the command running."""

GUARD = r"""guard() {
  while kill -0 "$2" 2>/dev/null; do
    if ! read -t 0; then sleep 0.2; continue; fi
    if IFS= read -r -n 1 _; then echo "trainforge-detached" >&2; return 0; fi
    kill -TERM -- "-$1" 2>/dev/null || return 0
    i=0
    while kill -0 -- "-$1" 2>/dev/null; do
      if [ "$i" -ge "$3" ]; then kill -KILL -- "-$1" 2>/dev/null; return 0; fi
      sleep 0.1
      i=$((i + 1))
    done
    return 0
  done
}
"""
"""`guard PGID PID TICKS`: while process PID runs, watch this exec's stdin, which the runner holds open. A
byte (`DETACH_BYTE`): the runner lets go on purpose, the command keeps running. End of input: the runner (or
its `docker exec` client) is gone, so the whole process group PGID is ended: SIGTERM, up to TICKS tenths of a
second, SIGKILL. Shell builtins only (and `sleep`): no procps in the container.

Input is polled with `read -t 0` (reads nothing: is a byte or the end of input there?) and then read without a
timeout. A `read -t 0.2` that times out just as the byte arrives drops the byte (bash 5.2: the timeout unwinds
the read after the byte left the pipe), and a lost byte, once the runner closes stdin, ended the very command
it had asked to keep."""

RELAY = r"""relay() {
  off=$2
  while :; do
    kill -0 "$3" 2>/dev/null
    alive=$?
    size=$(stat -c %s -- "$1" 2>/dev/null || wc -c < "$1" 2>/dev/null) || size=$off
    if [ "$size" -gt "$off" ]; then
      tail -c +"$((off + 1))" -- "$1" | head -c "$((size - off))"
      off=$size
    fi
    [ "$alive" -eq 0 ] || return 0
    sleep 0.2
  done
}
"""
"""`relay LOG OFFSET PID`: copy LOG from byte OFFSET to stdout, every 0.2 s, until process PID has ended (then
once more: nothing written before its end is lost). Only `tail -c`, `head -c`, `stat`/`wc`: GNU coreutils and
BusyBox alike (BusyBox `tail` has no `--pid`)."""

WRAPPER = GUARD + RELAY + r"""set -u
ticks=$1 workdir=$2 log=$3 pidfile=$4 exitfile=$5 command=$6
mkdir -p -- "${log%/*}" || exit 125
cd -- "$workdir" || { echo "trainforge: cannot enter the working directory $workdir" >&2; exit 125; }
rm -f -- "$pidfile" "$exitfile"
: > "$log" || exit 125
set -m
bash -c 'read -r -a st 2>/dev/null < "/proc/$$/stat"; echo "$$ ${st[21]:-}" > "$1" && exec bash -c "$2"' \
  trainforge-job "$pidfile" "$command" >> "$log" 2>&1 < /dev/null &
child=$!
set +m
while [ ! -s "$pidfile" ] && kill -0 "$child" 2>/dev/null; do sleep 0.05; done
pgid=
if [ -s "$pidfile" ]; then read -r pgid _ < "$pidfile"; echo "trainforge-pgid $pgid" >&2; fi
relay "$log" 0 "$child" &
tailer=$!
[ -n "$pgid" ] && guard "$pgid" "$child" "$ticks"
wait "$child"
rc=$?
wait "$tailer"
echo "$rc" > "$exitfile"
echo "trainforge-exit $rc" >&2
exit "$rc"
"""
"""Start the command in its own process group (`set -m`: bash job control, no `setsid` needed): its output goes
to the log file only. The wrapper streams the log to its stdout (`relay`), guards the group (see `GUARD`: the command ends
when its runner is gone, unless the runner let go on purpose) and waits for the command."""

FOLLOW = GUARD + RELAY + r"""set -u
ticks=$1 log=$2 pidfile=$3 exitfile=$4 offset=$5
pgid=
read -r pgid _ 2>/dev/null < "$pidfile"
case $pgid in ''|*[!0-9]*) echo "trainforge: no process recorded in $pidfile" >&2; exit 125;; esac
echo "trainforge-pgid $pgid" >&2
relay "$log" "$offset" "$pgid" &
tailer=$!
guard "$pgid" "$pgid" "$ticks"
wait "$tailer"
i=0
while [ ! -s "$exitfile" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -s "$exitfile" ]; then read -r rc < "$exitfile"; echo "trainforge-exit $rc" >&2; exit "$rc"; fi
echo "trainforge: the command ended but its exit status was not recorded" >&2
exit 125
"""
"""Re-attach to a command started by an earlier attempt: stream its log from a byte offset until it ends,
guarding its group like the wrapper does."""

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
"""Send a signal (TERM, KILL, STOP, CONT, or 0 to test) to a process group; bash's own `kill`: no procps needed.
Exit status 3: no such process group (docker's own errors use other statuses)."""
NO_SUCH_GROUP = 3

Signal = Literal["TERM", "KILL", "STOP", "CONT", "0"]


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


def grace_ticks(grace_s: float) -> str:
    """`grace_s` in tenths of a second (at least one), as the guard counts it."""
    return str(max(1, round(grace_s * 10)))


def start_argv(
    target: ContainerTarget, *, env: dict[str, str], workdir: str, files: AttemptFiles, command: str,
    grace_s: float,
) -> list[str]:
    assignments = [f"{key}={value}" for key, value in {"LANG": "C.UTF-8", **env}.items()]
    return [
        target.docker, "exec", "-i", target.container,
        "env", *assignments,
        "bash", "-c", WRAPPER, "trainforge-wrapper", grace_ticks(grace_s),
        workdir, files.log, files.pid, files.exit, command,
    ]  # fmt: skip


def follow_argv(target: ContainerTarget, files: AttemptFiles, offset: int, *, grace_s: float) -> list[str]:
    return [
        target.docker, "exec", "-i", target.container,
        "bash", "-c", FOLLOW, "trainforge-follow", grace_ticks(grace_s),
        files.log, files.pid, files.exit, str(int(offset)),
    ]  # fmt: skip


def probe_argv(target: ContainerTarget, run_id: str) -> list[str]:
    folder = run_files_dir(target, run_id)
    return [target.docker, "exec", target.container, "bash", "-c", PROBE, "trainforge-probe", folder]


def signal_argv(target: ContainerTarget, pgid: int, signal: Signal) -> list[str]:
    script = [SIGNAL, "trainforge-signal", signal, str(pgid)]
    return [target.docker, "exec", target.container, "bash", "-c", *script]
