"""Requests we refuse, each error knowing the status it is answered with (as h11's
``ProtocolError.error_status_hint``), so no caller maps exception types to codes."""

from __future__ import annotations


class HTTPError(Exception):
    """A request we refuse; ``status`` is the response to send before closing the connection."""

    status = 400
    reason = "Bad Request"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class BadRequest(HTTPError):
    pass


class PayloadTooLarge(HTTPError):
    status = 413
    reason = "Content Too Large"


class URITooLong(HTTPError):
    status = 414
    reason = "URI Too Long"


class HeadersTooLarge(HTTPError):
    status = 431
    reason = "Request Header Fields Too Large"


class ExpectationFailed(HTTPError):
    status = 417
    reason = "Expectation Failed"


class NotImplementedMethod(HTTPError):
    status = 501
    reason = "Not Implemented"


class UnsupportedTransferCoding(HTTPError):
    """RFC 9112 6.1: a transfer coding we cannot decode (llhttp only knows chunked)."""

    status = 501
    reason = "Not Implemented"


class VersionNotSupported(HTTPError):
    """RFC 9110 15.6.6: a major version other than 1 (HTTP/2 has its own preface)."""

    status = 505
    reason = "HTTP Version Not Supported"


class ShuttingDown(HTTPError):
    """A request that would start after the worker's ``--graceful-timeout`` ran out: the master's
    SIGKILL would cut it off with nothing sent, so it is refused whole and may be retried."""

    status = 503
    reason = "Service Unavailable"


class ServerFault(HTTPError):
    """Not the client's doing: an error of ours (a full disk while spooling, a bug) met while
    reading the request. Logged with its traceback."""

    status = 500
    reason = "Internal Server Error"
