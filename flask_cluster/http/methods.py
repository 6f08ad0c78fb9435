"""Request methods: what a method token is (RFC 9110 9.1), and which methods llhttp parses
itself. Any other token is a method too (``PURGE``, ``-BLARGH``): the parser feeds llhttp
``GET`` in its place and reports the method as sent."""

from __future__ import annotations

import httptools

from .errors import BadRequest

TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN = frozenset(TOKEN_CHARS)
MAX_METHOD = 32  # bytes; a longer method gets 501 (as nginx does)


def check_token(method: bytes) -> None:
    if not method or not TOKEN.issuperset(method):
        raise BadRequest("the method is not a token (RFC 9110 9.1)")


def _known_methods() -> frozenset[bytes]:
    """The methods llhttp parses itself; it refuses any other token, which RFC 9110 9.1 allows
    (``PURGE``, ``-BLARGH``): those are fed to it as ``GET`` and reported as sent."""
    class Quiet:
        pass

    known = set()
    for method in (b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND "
                   b"PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT "
                   b"MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK "
                   b"SOURCE QUERY").split():
        try:
            httptools.HttpRequestParser(Quiet()).feed_data(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            continue
        known.add(method)
    return frozenset(known)


KNOWN_METHODS = _known_methods()
