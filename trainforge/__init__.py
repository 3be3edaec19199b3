"""Trainforge: the `trainforge` command (the embedded stack, `up`, and one subcommand per part) and the Python
client, `from trainforge import Client` (docs/python.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainforge.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    # The client loads on first use, so that the command line does not pay for it.
    if name == "Client":
        from trainforge.client import Client

        return Client
    raise AttributeError(f"module 'trainforge' has no attribute {name!r}")
