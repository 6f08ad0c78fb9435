"""The server's TLS context, built once in the master from ``--cert`` and ``--key``."""

from __future__ import annotations

import ssl


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and the reason."""


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """TLS 1.2 or newer with the ``ssl`` module's secure defaults and ALPN ``http/1.1``.

    ``cert`` may hold the whole chain (leaf first, then intermediates); ``key`` may be omitted
    when the certificate file contains the private key too.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot use --cert {cert} / --key {key}: {exc}") from exc
    return context
