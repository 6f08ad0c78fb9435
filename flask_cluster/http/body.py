"""A request body as it arrives: in memory while small, in a temporary file past the spool
threshold, refused past the body limit."""

from __future__ import annotations

import io
import tempfile
from typing import IO

from .errors import PayloadTooLarge


class RequestBody:
    """A request body that stays in memory while small and moves to a temporary file past the
    spool threshold, so a large upload never sits in the worker's memory whole."""

    __slots__ = ("buffer", "size", "threshold", "limit")

    def __init__(self, threshold: int, limit: int) -> None:
        self.buffer: IO[bytes] = io.BytesIO()
        self.size = 0
        self.threshold = threshold
        self.limit = limit

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit and self.size > self.limit:
            raise PayloadTooLarge(f"body exceeds {self.limit} bytes")
        if self.size > self.threshold and isinstance(self.buffer, io.BytesIO):
            spooled = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the request from here on
            spooled.write(self.buffer.getbuffer())
            self.buffer = spooled
        self.buffer.write(data)

    def finish(self) -> IO[bytes]:
        self.buffer.seek(0)
        return self.buffer
