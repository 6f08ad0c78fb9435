"""One HTTP/1.1 connection's state, sans I/O (as h11's ``Connection``): bytes in, requests out.

Feed what the client sent with :meth:`HTTPConnection.receive_data` (``b""`` at its end of file),
take requests with :meth:`~HTTPConnection.next_request`, one at a time, and report each answered
with :meth:`~HTTPConnection.response_done`. Every method returns the bytes the server itself must
send (``100 Continue``, a refusal, a timeout), in order after the responses already written. No
socket, no clock: every byte sequence is a unit test.
"""

from __future__ import annotations

from .errors import HTTPError
from .parser import Limits, Request, RequestParser
from .wsgi import error_response

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HTTPConnection:
    """The rules between requests: answer in order, one at a time; refuse a bad request only after
    every request before it is answered; close after a response that does not keep the
    connection alive (dropping requests pipelined after it), after a refusal, and after a request
    that switched protocols."""

    __slots__ = ("parser", "requests", "error", "closing", "responding")

    def __init__(self, limits: Limits) -> None:
        self.parser = RequestParser(limits)
        # Complete requests not yet taken (the parser's queue): a socket loop tests it before
        # calling next_request, which keeps the common "nothing more" case free of a call.
        self.requests = self.parser.requests
        self.error: HTTPError | None = None  # why the next request was refused
        self.closing = False  # close once the requests already taken are answered
        self.responding = False  # a request was taken and its response is not done yet

    @property
    def in_progress(self) -> bool:
        """Bytes of an incomplete request have arrived."""
        return self.parser.in_progress

    @property
    def headers_complete(self) -> bool:
        """Of the request in progress."""
        return self.parser.headers_complete

    @property
    def has_requests(self) -> bool:
        """Complete requests wait to be taken."""
        return bool(self.parser.requests)

    @property
    def idle(self) -> bool:
        """Between requests: nothing being answered, waiting, or arriving."""
        return not self.responding and not self.parser.requests and not self.parser.in_progress

    @property
    def done(self) -> bool:
        """Closing and nothing left to answer: the connection may close now."""
        return self.closing and not self.responding and not self.parser.requests

    def receive_data(self, data: bytes) -> bytes:
        """Take bytes the client sent (``b""``: it will send no more); return what to send now."""
        if not data:
            self.closing = True  # half-closed: answer what was asked, then close
            return b""
        if self.error is not None or self.closing:
            return b""  # bytes after a refused request or after "Connection: close" are ignored
        parser = self.parser
        try:
            parser.feed(data)
        except HTTPError as exc:
            self.error = exc
        if parser.upgraded:
            self.closing = True
        if parser.continue_wanted:
            parser.continue_wanted = False
            if parser.in_progress and not self.responding and not parser.requests:
                return CONTINUE
        return b""

    def next_request(self) -> Request | None:
        """The next request to answer; None while one is being answered or none is complete."""
        requests = self.parser.requests
        if self.responding or not requests:
            return None
        self.responding = True
        return requests.popleft()

    def response_done(self, keep_alive: bool) -> None:
        """The response to the request taken last is complete (or abandoned)."""
        self.responding = False
        if not keep_alive:
            self.closing = True
            self.parser.requests.clear()  # pipelined requests after a close are not answered

    def fail(self, fault: HTTPError) -> None:
        """The request taken last cannot be answered (our fault, before the app ran): refuse it
        with ``fault`` and close; the requests after it are dropped."""
        self.error = fault
        self.responding = False
        self.parser.requests.clear()
        # The refusal is this connection's last response, even when it was to close after the
        # request anyway (a stopping worker marks its busy connections so).
        self.closing = False

    def refusal(self) -> bytes:
        """Once every request before a refused one is answered: the error response, after which
        the connection closes; ``b""`` otherwise, and when it closes anyway (a response closed it
        first, or the client half-closed). :attr:`error` says why."""
        error = self.error
        if error is None or self.closing or self.responding or self.parser.requests:
            return b""
        self.closing = True
        return error_response(error.status, error.reason, keep_alive=False)

    def time_out(self) -> bytes:
        """The client took too long to send a request: the 408 to send before closing."""
        self.parser.requests.clear()
        self.closing = True
        return error_response(408, "Request Timeout", keep_alive=False)
