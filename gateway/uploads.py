"""Request bodies read from the ASGI stream under a size limit: small JSON bodies, and multipart forms whose
one file part goes straight to disk (hashed on the way), never into memory.

Routes that use these set `request_max_body_size=None` (Litestar's own limit, 10 MB by default, would refuse
large uploads before they reach us) and get the limit from the settings here instead: anything larger
answers 413, announced (`Content-Length`) or not.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from litestar import Request
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.limits import check_json_depth
from shared.settings import Settings

MB = 1024 * 1024
JSON_LIMIT = MB
"""Largest JSON body accepted by upload routes."""
FORM_OVERHEAD = MB
"""Room for the text fields and part headers of a form, on top of its file."""
FIELD_LIMIT = 64 * 1024
"""Largest text field of a form."""
WRITE_CHUNK = MB


def incoming_dir(settings: Settings) -> Path:
    """Where uploaded images and weights are written while their request is handled (removed after it; what a
    gateway that stopped mid-request leaves, the sweeper removes)."""
    return settings.state_dir.resolve() / "uploads"


@dataclass
class UploadedFile:
    path: Path
    filename: str
    size: int
    sha256: str


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    file: UploadedFile | None = None
    """The first (or only) file part."""
    files: list[UploadedFile] = field(default_factory=list)
    """Every file part, in order (`max_files` > 1)."""

    def discard(self) -> None:
        """Delete the uploaded files (call when done with them)."""
        for uploaded in self.files or ([self.file] if self.file is not None else []):
            uploaded.path.unlink(missing_ok=True)


def _announced(request: Request[Any, Any, Any]) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {-(-limit // MB)} MB")


async def read_json(request: Request[Any, Any, Any], limit: int = JSON_LIMIT) -> bytes:
    """The body of a JSON request to an upload route, at most `limit` bytes (413) and no deeper than
    `max_json_depth` (400), as `gateway.limits` checks for every other route."""
    announced = _announced(request)
    if announced is not None and announced > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    check_json_depth(bytes(body), request.app.state.gw.settings.max_json_depth)
    return bytes(body)


async def read_multipart(
    request: Request[Any, Any, Any], *, file_field: str, dest: Path, max_file_bytes: int,
    allowed_fields: frozenset[str] = frozenset(), max_files: int = 1,
) -> Form:
    """Parse a multipart form: the part named `file_field` is written to `dest` (a new file; its folder is
    created), the text fields in `allowed_fields` are returned decoded. Anything else is a 400; a file larger
    than `max_file_bytes` a 413. On error nothing is left on disk. With `max_files` > 1 the form may carry that
    many `file_field` parts (the n-th written to `dest` + `.n`), `max_file_bytes` each."""
    _, options = request.content_type
    boundary = options.get("boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary in Content-Type")
    limit = max_file_bytes * max_files + FORM_OVERHEAD
    announced = _announced(request)
    if announced is not None and announced > limit:
        raise _too_large(max_file_bytes)
    form = Form()
    writers: list[_FileWriter] = []
    try:
        await _parse(request, form, writers, boundary, file_field, dest, max_file_bytes, limit,
                     allowed_fields, max_files)
    except BaseException:
        for writer in writers:
            await writer.abort()
        raise
    return form


async def _parse(
    request: Request[Any, Any, Any], form: Form, writers: list[_FileWriter], boundary: str, file_field: str,
    dest: Path, max_file_bytes: int, limit: int, allowed: frozenset[str], max_files: int = 1,
) -> None:
    writer: _FileWriter | None = None
    segment: MultipartSegment | None = None
    text = bytearray()
    received = 0
    try:
        with PushMultipartParser(boundary.encode("latin-1"), max_segment_count=len(allowed) + max_files + 1,
                                 strict=True) as parser:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise _too_large(max_file_bytes)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment = event
                        if segment.name == file_field:
                            if len(writers) >= max_files:
                                raise BadRequest(f"more than one {file_field!r} part" if max_files == 1
                                                 else f"more than {max_files} {file_field!r} parts")
                            if not segment.filename:
                                raise BadRequest(f"the {file_field!r} part must be a file (with a filename)")
                            path = dest if not writers else dest.with_name(f"{dest.name}.{len(writers)}")
                            writer = await _FileWriter.create(path)
                            writers.append(writer)
                        elif segment.name not in allowed:
                            expected = ", ".join(sorted({file_field, *allowed}))
                            raise BadRequest(f"unexpected form field {segment.name!r}; expected {expected}")
                        elif segment.name in form.fields:
                            raise BadRequest(f"form field {segment.name!r} given twice")
                    elif event is None:  # end of the part
                        assert segment is not None
                        if segment.name == file_field:
                            assert writer is not None
                            done = await writer.finish(segment.filename or "")
                            form.files.append(done)
                            form.file = form.file or done
                        else:
                            try:
                                form.fields[segment.name] = text.decode(segment.charset or "utf-8")
                            except (UnicodeDecodeError, LookupError):
                                raise BadRequest(f"form field {segment.name!r} is not valid text") from None
                            text.clear()
                        segment = None
                    elif segment is not None and segment.name == file_field:
                        assert writer is not None
                        if writer.size + len(event) > max_file_bytes:
                            raise _too_large(max_file_bytes)
                        await writer.write(event)
                    else:
                        text += event
                        if len(text) > FIELD_LIMIT:
                            raise BadRequest(f"form field {segment.name if segment else '?'!r} is too long")
    except (ParserError, ParserLimitReached) as exc:
        raise BadRequest(f"malformed multipart/form-data: {exc}") from None


class _FileWriter:
    """Buffered writes to a new file in a worker thread, hashing as it goes."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        self.handle = handle
        self.path = path
        self.hasher = hashlib.sha256()
        self.buffer = bytearray()
        self.size = 0

    @classmethod
    async def create(cls, path: Path) -> _FileWriter:
        def open_new() -> IO[bytes]:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

        return cls(await anyio.to_thread.run_sync(open_new), path)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= WRITE_CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        data, self.buffer = bytes(self.buffer), bytearray()

        def write() -> None:
            self.hasher.update(data)
            self.handle.write(data)

        await anyio.to_thread.run_sync(write)

    async def finish(self, filename: str) -> UploadedFile:
        await self._flush()
        await anyio.to_thread.run_sync(self.handle.close)
        return UploadedFile(path=self.path, filename=filename, size=self.size, sha256=self.hasher.hexdigest())

    async def abort(self) -> None:
        """Close and delete the file."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.handle.close)
        self.path.unlink(missing_ok=True)
