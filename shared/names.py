"""Names and tokens clients choose, validated one way everywhere: the whole string, no control characters.

Python's `$` also matches before a final newline, and msgspec (like `re.search`/`re.match`) would accept
`"demo\n"` for `^[a-z]+$`: a name that ends in a newline, or a NATS subject token that does (a subject is a line
of the NATS protocol). Every pattern here is built by `whole()`, which holds the same in Python and in the JSON
Schema of the OpenAPI document (ECMA-262 regular expressions), and is what every `Meta(pattern=...)`,
`Parameter(pattern=...)` and `re.compile(...)` of a name uses.
"""

from __future__ import annotations

import re


def whole(body: str) -> str:
    """A pattern that matches `body` only as the entire string (also under `re.search` and `re.match`)."""
    return rf"^(?:{body})(?!\n)$"


TOKEN = whole(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""One token of a NATS subject: ids, pool names, runner ids."""
NAME = whole(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Project, dataset, model, architecture and config names: letters, digits, '.', '_', '-'; up to 128."""
SHORT_NAME = whole(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Container target names; up to 64."""
USERNAME = whole(r"[a-z0-9][a-z0-9._-]{1,63}")
"""2-64 of a-z, 0-9, '.', '_', '-'."""

TOKEN_RE = re.compile(TOKEN)
NAME_RE = re.compile(NAME)
SHORT_NAME_RE = re.compile(SHORT_NAME)
USERNAME_RE = re.compile(USERNAME)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None
