"""The wrapper's `guard` (runner.executors.docker_argv.GUARD), run by the host's bash: a detach byte keeps the
guarded process group running, whenever it arrives; the end of input ends the group."""

import os
import random
import subprocess
import time

import pytest

from runner.executors.docker_argv import DETACH_BYTE, DETACHED_MARK, GUARD

POLL_S = "0.2"
assert POLL_S in GUARD
FAST_GUARD = GUARD.replace(POLL_S, "0.001")
"""The guard polling every millisecond instead of every 0.2 s: a race with its poll shows in a few trials."""

STAGE = FAST_GUARD + (
    'set -m; sleep 60 & child=$!; set +m; echo "$child"; guard "$child" "$child" 20; echo "guard returned"\n'
    '[ "$1" = wait ] && { wait "$child"; echo "sleep ended $?"; }\n'
)
"""A `sleep` in a process group of its own, its pid on stdout, guarded; a line on stdout when the guard returns
(and with `wait`, one when the sleep ended: `sleep ended <status>`)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _guarded(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    stage = subprocess.Popen(["bash", "-c", STAGE, "stage", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert stage.stdout is not None
    return stage, int(stage.stdout.readline())


def _end(stage: subprocess.Popen[bytes], pid: int) -> None:
    if _alive(pid):
        os.killpg(pid, 9)
    stage.kill()
    stage.wait(timeout=30)
    for pipe in (stage.stdin, stage.stdout, stage.stderr):
        if pipe is not None:
            pipe.close()


@pytest.mark.parametrize("trial", range(20))
def test_a_detach_byte_leaves_the_group_running_whenever_it_arrives(trial: int):
    """`read -t 0.2` dropped a byte that came as its timeout fired; the guard then ended the group once stdin
    closed. The byte is sent at a different moment of the guard's polling in each trial."""
    stage, pid = _guarded()
    try:
        time.sleep(random.Random(trial).uniform(0, 0.05))  # a moment in the polling, not a wait for an outcome
        assert stage.stdin is not None and stage.stderr is not None and stage.stdout is not None
        stage.stdin.write(DETACH_BYTE)
        stage.stdin.flush()
        assert stage.stderr.readline().decode().strip() == DETACHED_MARK
        stage.stdin.close()  # the runner lets go: nothing watches its stdin any more
        assert stage.stdout.readline().decode().strip() == "guard returned"
        assert _alive(pid)
    finally:
        _end(stage, pid)


def test_the_end_of_input_ends_the_guarded_group():
    stage, pid = _guarded("wait")
    try:
        assert stage.stdin is not None and stage.stdout is not None
        stage.stdin.close()  # the runner, or its docker exec client, is gone
        assert stage.stdout.readline().decode().strip() == "guard returned"
        assert stage.stdout.readline().decode().strip() == "sleep ended 143"  # SIGTERM
    finally:
        _end(stage, pid)
