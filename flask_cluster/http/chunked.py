"""The chunked request body (RFC 9112 7.1), decoded here instead of by llhttp.

llhttp refuses the whitespace that RFC 9112 7.1.1 allows around chunk extensions (``5 ; a = b``:
BWS), and has no switch for it. This decoder accepts it and ignores extensions, as the RFC lets a
recipient do; everything else stays strict: hex sizes of at most 16 digits, CRLF line ends and
nothing but CRLF after chunk data (no bare CR or LF: those are how bodies get smuggled), no
framing fields among the trailers. Trailer fields are read and dropped (RFC 9110 6.5.1: never
merged into the header section). It works a chunk at a time, not a byte at a time, so its cost
is per chunk.
"""

from __future__ import annotations

from typing import Protocol

from .errors import BadRequest, HeadersTooLarge
from .methods import TOKEN_CHARS

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
_HEX = b"0123456789abcdefABCDEF"
_CONTROL = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"
MAX_SIZE_DIGITS = 16  # 64 bits: a longer size is an overflow attempt
MAX_LINE = 4096  # a chunk-size line, extensions included


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class ChunkedBody:
    """Feed bytes with :meth:`feed`, which returns what follows the body (the next request)."""

    __slots__ = ("sink", "max_trailer", "state", "left", "line", "trailer_bytes")

    def __init__(self, sink: Sink, max_trailer: int) -> None:
        self.sink = sink
        self.max_trailer = max_trailer
        self.state = _SIZE
        self.left = 0  # bytes of the current chunk still to come
        self.line = b""  # an unfinished line
        self.trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes) -> bytes:
        while data and self.state != _DONE:
            if self.state == _DATA:
                part, data = data[:self.left], data[self.left:]
                self.sink.write(part)
                self.left -= len(part)
                if not self.left:
                    self.state = _DATA_END
                continue
            line = self.line + data
            end = line.find(b"\r\n")
            if end < 0:
                if b"\n" in line or b"\r" in line[:-1]:
                    raise BadRequest("bare CR or LF in chunked framing (RFC 9112 2.2)")
                if len(line) > MAX_LINE:
                    raise BadRequest("chunk-size line or trailer field too long")
                self.line = line
                return b""
            self.line = b""
            data = line[end + 2:]
            self._line(line[:end])
        return data

    def _line(self, text: bytes) -> None:
        if b"\n" in text or b"\r" in text:
            raise BadRequest("bare CR or LF in chunked framing (RFC 9112 2.2)")
        if self.state == _DATA_END:
            if text:
                raise BadRequest("chunk data longer than its chunk size")
            self.state = _SIZE
        elif self.state == _SIZE:
            digits, semicolon, extensions = text.partition(b";")
            if semicolon:
                digits = digits.rstrip(b" \t")  # BWS before the first extension
            if not digits or len(digits) > MAX_SIZE_DIGITS or digits.translate(None, _HEX):
                raise BadRequest("invalid chunk size")
            if extensions.translate(None, _CONTROL) != extensions:
                raise BadRequest("control character in a chunk extension")
            self.left = int(digits, 16)
            self.state = _DATA if self.left else _TRAILER
        elif not text:
            self.state = _DONE  # the empty line after the trailer section
        else:
            self.trailer_bytes += len(text) + 2
            if self.trailer_bytes > self.max_trailer:
                raise HeadersTooLarge(f"trailer section larger than {self.max_trailer} bytes")
            name, colon, _value = text.partition(b":")
            if not colon or not name or name.translate(None, TOKEN_CHARS):
                raise BadRequest("malformed trailer field")
            if name.lower() in (b"content-length", b"transfer-encoding"):
                raise BadRequest("framing field in the trailer section (RFC 9110 6.5.1)")
