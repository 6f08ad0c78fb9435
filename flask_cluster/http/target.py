"""The request target (RFC 9112 3.2): split once, each of its four forms allowed only where the
RFC allows it. No I/O; raises :class:`~flask_cluster.errors.HTTPError` for what we refuse.

- origin form (``/path?query``): everything but the forms below; the common case, checked first;
- absolute form (``http://host:port/path?query``): path, query and host are taken from it, and the
  host replaces the ``Host`` field (RFC 9112 3.2.2); only the ``http`` and ``https`` schemes;
- authority form (``host:port``): only with ``CONNECT``, which a WSGI app cannot serve (it would
  have to tunnel bytes), so it is answered 501;
- asterisk form (``*``): only with ``OPTIONS``.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import BadRequest, NotImplementedMethod

_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        b"-._~%!$&'()*+,;=")  # RFC 3986 reg-name and IPv4address
_IP_LITERAL_CHARS = frozenset(b"0123456789abcdefABCDEFvV:.")  # RFC 3986 IP-literal, brackets aside
_SCHEMES = (b"http", b"https")


class Target(NamedTuple):
    path: bytes
    query: bytes
    authority: bytes | None  # from an absolute-form target; None for the other forms


def split_target(method: bytes, target: bytes) -> Target:
    """Path, query and (absolute form only) authority of ``target``; refuses a target whose form
    does not fit the method, or an authority that is not ``host[:port]``."""
    if method == b"CONNECT":
        _check_authority(target, port_required=True)
        raise NotImplementedMethod("CONNECT: this server does not tunnel (RFC 9110 9.3.6)")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return Target(path, query, None)
    if target == b"*":
        if method != b"OPTIONS":
            raise BadRequest("the asterisk-form target is only for OPTIONS (RFC 9112 3.2.4)")
        return Target(b"*", b"", None)
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in _SCHEMES:
        raise BadRequest("the request target is neither a path nor an http(s) URI (RFC 9112 3.2)")
    end = len(rest)
    for delimiter in b"/?#":
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    authority, rest = rest[:end], rest[end:]
    _check_authority(authority, port_required=False)
    path, _, query = rest.partition(b"#")[0].partition(b"?")
    return Target(path or b"/", query, authority)


def _check_authority(authority: bytes, *, port_required: bool) -> None:
    """``host[:port]`` with a non-empty host (RFC 9110 4.2.1) and a port in range; userinfo is
    refused (RFC 9110 4.2.4)."""
    if authority[:1] == b"[":
        close = authority.find(b"]")
        host, port = authority[1:close], authority[close + 1:]
        if close < 0 or not host or not _IP_LITERAL_CHARS.issuperset(host):
            raise BadRequest("invalid IP literal in the request target")
    else:
        host, colon, digits = authority.rpartition(b":")
        if not colon:
            host, digits = authority, b""
        port = colon + digits
        if not host or not _HOST_CHARS.issuperset(host):
            raise BadRequest("invalid or empty host in the request target")
    if port:
        digits = port[1:]
        if port[:1] != b":" or (digits and (not digits.isdigit() or int(digits) > 65535)):
            raise BadRequest("invalid port in the request target")
        if port_required and not digits:
            raise BadRequest("CONNECT needs host:port (RFC 9112 3.2.3)")
    elif port_required:
        raise BadRequest("CONNECT needs host:port (RFC 9112 3.2.3)")
