"""Connecting to servers: addresses checked, one transport per address by
its scheme (``grpc://``, ``http://``, ``https://``) with its TLS settings."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from adamax_ps.client.grpc_transport import GrpcTransport
from adamax_ps.client.transport import Transport


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """``"grpc://a:1,grpc://b:2"`` or a list, each with a supported scheme."""
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    result = [a.strip() for a in addresses if a.strip()]
    if not result:
        raise ValueError("connect() needs at least one server address")
    for address in result:
        if not address.startswith(("grpc://", "http://", "https://")):
            raise ValueError(
                f"a server address is grpc://host:port or http://host:port. "
                f"Received: {address!r}"
            )
    return result


def grpc_credentials(tls: bool | str | Path | None) -> grpc.ChannelCredentials | None:
    """gRPC channel credentials for ``tls``: None or False (plaintext), True
    (TLS with the system's CAs), or the path of a CA certificate (PEM)."""
    if tls is None or tls is False:
        return None
    roots = None if tls is True else Path(tls).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=roots)


def open_transport(address: str, **options: Any) -> Transport:
    """The transport of an address's scheme. ``tls``: None (plaintext gRPC;
    https:// checks the system's CAs), True (TLS with the system's CAs), or the
    path of a CA certificate (PEM) to trust."""
    tls = options.pop("tls")
    if address.startswith("grpc://"):
        credentials = grpc_credentials(tls)
        return GrpcTransport(address, credentials=credentials, **options)
    from adamax_ps.client.http_transport import HttpTransport  # httpx: on first use

    verify = (
        True if tls in (None, True) else ssl.create_default_context(cafile=str(tls))
    )
    return HttpTransport(address, verify=verify, **options)
