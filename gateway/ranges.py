"""HTTP byte ranges (RFC 9110 §14): one `Range: bytes=...` range of a file of known size.

Litestar's `File` response always sends the whole file, so downloads answer ranges themselves: 206 with
`Content-Range`, or 416 with `Content-Range: bytes */<size>` when the range starts past the end. A header that
is not a single well-formed byte range is ignored (the whole file, 200), as the RFC allows.
"""

from __future__ import annotations

import re

from gateway.errors import GatewayError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


class RangeNotSatisfiable(GatewayError):
    """The requested range lies outside the file."""

    status_code, code, title = 416, "range_not_satisfiable", "Range Not Satisfiable"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`[start, end)` of the requested bytes, or None for the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end - 1}/{size}"


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"})
