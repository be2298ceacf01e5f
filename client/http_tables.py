"""The hash-keyed table calls of ``HttpTransport`` (a mixin): create, list,
describe, assign rows by key, export, over ``/api/v1/tables``. Rows are read
with ``read`` (rows are keys) and pushed with ``apply``, as a variable's.
Answers are the dicts and tuples ``GrpcTableCalls`` gives."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np

from adamax_ps.client import errors
from adamax_ps.client.transport import View
from adamax_ps.proto import codec

EXPORTED = ("keys", "values", "evicted", "through")


class HttpTableCalls:
    """Table calls over the transport's ``_send``."""

    _send: Callable[..., Any]

    def create_table(self, view: View, name: str, config: dict) -> dict[str, Any]:
        answer = self._send(
            "POST", "/tables", view=view, json={"name": name, **config}
        ).json()
        return _info(answer)

    def list_tables(self) -> list[dict[str, Any]]:
        return [_info(t) for t in self._send("GET", "/tables").json()]

    def describe_table(self, name: str, top_keys: int = 0) -> dict[str, Any]:
        params = {"top_keys": top_keys} if top_keys else None
        return _info(self._send("GET", f"/tables/{_q(name)}", params=params).json())

    def assign_keys(
        self, view: View, name: str, keys: np.ndarray, values: np.ndarray
    ) -> None:
        keys = codec.little_endian(np.ascontiguousarray(keys, dtype=np.int64))
        values = codec.little_endian(np.ascontiguousarray(values))
        header = {"keys": codec.describe(keys), "values": codec.describe(values)}
        self._send(
            "PUT",
            f"/tables/{_q(name)}/rows",
            view=view,
            framed=(header, [keys, values]),
        )

    def export_table(
        self, name: str, since: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(keys, values, evicted keys, through)`` of the rows held here."""
        params = None if since is None else {"since": since}
        response = self._send("GET", f"/tables/{_q(name)}/export", params=params)
        try:
            with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
                keys, values, evicted, through = (npz[k] for k in EXPORTED)
        except (KeyError, OSError, ValueError, zipfile.BadZipFile) as e:
            raise errors.TransportError(f"an export came malformed: {e}") from None
        return keys, values, evicted, int(through)


def _info(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer as ``grpc_tables.table_info`` gives it (no ``top_keys``
    unless asked)."""
    if answer.get("top_keys") is None:
        answer.pop("top_keys", None)
    return answer


def _q(name: str) -> str:
    """A name in a URL path (slashes kept: the routes take them)."""
    return quote(name, safe="/")
