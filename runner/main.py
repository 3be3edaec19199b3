"""Entry point of `trainforge runner`: run one agent until SIGTERM/SIGINT, then stop it gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import nats.errors

from runner.agent import RunnerAgent, RunnerError
from runner.devices import DeviceError
from shared.bus import BusAuthError
from shared.logredact import redact
from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def main(settings: Settings, *, pool: str, device: str, slots: int, runner_id: str | None) -> int:
    """Run a runner agent; 0 after a graceful stop, 1 when it failed, 2 for unusable arguments."""
    try:
        agent = RunnerAgent(settings, pool, device, slots, runner_id)
    except ValueError as exc:
        print(f"trainforge runner: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(agent))


async def _serve(agent: RunnerAgent) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, agent, sig)
    try:
        await agent.run()
    except DeviceError as exc:
        print(f"trainforge runner: {exc}", file=sys.stderr)
        return 2
    except (OSError, nats.errors.NoServersError) as exc:
        where = redact(agent.settings.effective_nats_url)
        print(f"trainforge runner: cannot reach NATS at {where}: {exc}", file=sys.stderr)
        return 1
    except (SettingsError, BusAuthError) as exc:  # a configuration error: restarting would not help
        print(f"trainforge runner: {exc}", file=sys.stderr)
        return 2
    except RunnerError as exc:
        log.critical("%s", exc)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _on_signal(agent: RunnerAgent, sig: signal.Signals) -> None:
    if agent.state == "draining":
        log.warning("%s again: canceling running jobs now", sig.name)
    else:
        log.info("%s: stopping (grace %g s, then %s)", sig.name, agent.settings.shutdown_grace_s,
                 agent.settings.shutdown_action)
    agent.request_stop()
