"""``http://`` and ``https://``: the same operations as gRPC, over the REST API.

For workers that cannot use gRPC. Tensors travel as raw bytes
(``application/x-adamax-ps`` framed bodies out, ``.npy`` back), never as
number lists; one keep-alive connection pool per server, shared by threads.
Retries and errors follow the gRPC transport's rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from adamax_ps.client import errors
from adamax_ps.client.http_tables import HttpTableCalls
from adamax_ps.client.retry import RetryableError, RetryPolicy, with_retries
from adamax_ps.client.transport import (
    Applied,
    ApplyOptions,
    Gradient,
    OptimizerInfo,
    PushId,
    ServerInfo,
    VariableInfo,
    VariableSpec,
    View,
)
from adamax_ps.proto import codec
from adamax_ps.proto.wire import API, VIEW_HEADER


class HttpTransport(HttpTableCalls):
    """One server over HTTP(S)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        verify: Any = True,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.address = address
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=address,
            headers=headers,
            verify=verify,
            timeout=httpx.Timeout(timeout),
        )
        self.retry = retry or RetryPolicy()

    # Plumbing ---------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        view: View | None = None,
        json: Any = None,
        framed: tuple[dict, Sequence[np.ndarray]] | None = None,
        params: dict | None = None,
        push_id: PushId | None = None,
    ) -> httpx.Response:
        """One request with retries on unreachable servers; errors mapped.

        ``push_id``: the request's ``push_id`` (in the JSON body, or the framed
        body's header) is written anew for each attempt, saying which it is.
        """
        headers = {}
        if view is not None:
            headers[VIEW_HEADER] = f"{view[0]}/{view[1]}"
        if framed is not None:
            headers["content-type"] = codec.FRAMED

        def attempt(number: int) -> httpx.Response:
            content = None
            if push_id is not None:
                stamped = _push_id_json(push_id, number)
                if framed is not None:
                    framed[0]["push_id"] = stamped
                else:
                    json["push_id"] = stamped
            if framed is not None:
                pieces = codec.frame(*framed)  # sent as they are: no joined copy
                headers["content-length"] = str(sum(len(p) for p in pieces))
                content = iter(pieces)
            try:
                response = self.http.request(
                    method,
                    API + path,
                    json=json,
                    content=content,
                    params=params,
                    headers=headers,
                )
            except (
                httpx.ConnectError,
                httpx.RemoteProtocolError,
                httpx.ReadError,
                httpx.WriteError,
                httpx.PoolTimeout,
            ) as e:
                error = errors.TransportError(f"{self.address}: {e}")
                raise RetryableError(type(e).__name__, error) from None
            except httpx.TimeoutException as e:
                raise errors.TransportError(f"{self.address}: timed out: {e}") from None
            if (
                response.status_code == 503
                and _error_name(response) not in errors.FINAL
            ):
                raise RetryableError("503", self._error(response))
            if response.status_code >= 400:
                raise self._error(response)
            return response

        return with_retries(self.retry, self.address, attempt)

    def _error(self, response: httpx.Response) -> errors.ParameterServerError:
        try:
            payload = response.json()
            name, message = payload.get("error", ""), payload.get("message", "")
        except ValueError:
            name, message = "", response.text
        domain = errors.BY_NAME.get(name)
        if domain is not None:
            return domain(message)
        by_status: dict[int, type[errors.ParameterServerError]] = {
            400: errors.InvalidArgumentError,
            401: errors.UnauthenticatedError,
            404: errors.NotFoundError,
            409: errors.FailedPreconditionError,
            413: errors.MessageTooLargeError,
            422: errors.InvalidArgumentError,
            500: errors.ServerInternalError,
            503: errors.ServerBusyError,
            504: errors.SyncTimeoutError,
            507: errors.MemoryBudgetError,
        }
        cls = by_status.get(response.status_code, errors.TransportError)
        return cls(f"{self.address}: {response.status_code} {name}: {message}")

    def close(self) -> None:
        self.http.close()

    # Operations ---------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        r = self._send("GET", "/server").json()
        return ServerInfo(
            self.address,
            r["version"],
            r["server_index"],
            r["num_servers"],
            r["shards"],
            r["replicas"],
            r["replicas_to_aggregate"],
            r["ready"],
            r.get("limits", {}).get("max_request_rows", 0),
            r.get("rescale_state", "serving"),
            tuple(r.get("addresses", ())),
            tuple(r.get("http_addresses", ())),
        )

    def create_variables(
        self, view: View, specs: list[VariableSpec]
    ) -> list[VariableInfo]:
        described, arrays = [], []
        for s in specs:
            spec = {
                "name": s.name,
                "global_shape": list(s.global_shape),
                "dtype": np.dtype(s.dtype).name,
                "row_offset": s.row_offset,
                "rows": s.rows,
                "initializer": s.initializer,
                "seed": s.seed,
            }
            if s.initial_value is not None:
                spec["initial_value"] = codec.describe(s.initial_value)
                arrays.append(s.initial_value)
            described.append(spec)
        answer = self._send(
            "POST", "/variables", view=view, framed=({"variables": described}, arrays)
        ).json()
        return [_variable_info(v) for v in answer]

    def list_variables(self) -> list[VariableInfo]:
        answer = self._send("GET", "/variables", params={"stats": "false"}).json()
        return [_variable_info(v) for v in answer]

    def create_optimizer(self, view: View, config: dict) -> OptimizerInfo:
        return _optimizer_info(
            self._send("POST", "/optimizers", view=view, json={"config": config}).json()
        )

    def get_optimizer(
        self, name: str, create_iterations: bool = False
    ) -> OptimizerInfo:
        if create_iterations:  # Keras's read of iterations creates it: a POST
            answer = self._send("POST", f"/optimizers/{_q(name)}/iterations")
        else:
            answer = self._send("GET", f"/optimizers/{_q(name)}")
        return _optimizer_info(answer.json())

    def reserve_step(
        self, view: View, optimizer: str, variables: Sequence[str], push_id: PushId
    ) -> int:
        return self._send(
            "POST",
            f"/optimizers/{_q(optimizer)}/reserve-step",
            view=view,
            json={"variables": list(variables)},
            push_id=push_id,
        ).json()["step"]

    def apply(
        self,
        view: View,
        optimizer: str,
        gradients: list[Gradient],
        push_id: PushId,
        options: ApplyOptions,
    ) -> Applied:
        """The push, then its ``reads`` as requests of their own (the HTTP
        API answers a push with JSON; gRPC answers them with the push)."""
        described, arrays = [], []
        for g in gradients:
            item: dict[str, Any] = {
                "variable": g.variable,
                "values": codec.describe(g.values),
            }
            if g.indices is not None:
                item["indices"] = codec.describe(g.indices)
                arrays.append(g.indices)
            arrays.append(g.values)
            described.append(item)
        header = {
            "gradients": described,
            "step": options.step,
            "aggregated": options.aggregated,
            "call_variables": list(options.call_variables),
            "clipped": options.clipped,
        }
        if options.replica is not None:
            header["replica"] = options.replica
        if options.reserve_next:
            header["reserve_next"] = True
        if options.step_reserved_ahead:
            header["step_reserved_ahead"] = True
        answer = self._send(
            "POST",
            f"/optimizers/{_q(optimizer)}/apply",
            view=view,
            framed=(header, arrays),
            push_id=push_id,
        ).json()
        values = [self.read(r.variable, rows=r.rows) for r in options.reads]
        return Applied(
            answer["step"], answer["iterations"], values, answer.get("next_step")
        )

    def read(
        self,
        variable: str = "",
        *,
        optimizer: str = "",
        slot: str = "",
        rows: np.ndarray | None = None,
        weight: str = "",
        expected_bytes: int | None = None,
        wire_dtype: str | None = None,
        view: View | None = None,
    ) -> np.ndarray:
        # One HTTP answer, whatever its size; reads travel as float32 (the
        # reduced-precision wire is gRPC's).
        del expected_bytes, wire_dtype
        if weight:
            return _npy(
                self._send("GET", f"/optimizers/{_q(optimizer)}/weights/{_q(weight)}")
            )
        params = {k: v for k, v in (("optimizer", optimizer), ("slot", slot)) if v}
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            return _npy(
                self._send(
                    "POST",
                    f"/variables/{_q(variable)}/rows",
                    view=view,
                    params=params,
                    framed=({"rows": codec.describe(rows)}, [rows]),
                )
            )
        params["format"] = "npy"
        return _npy(
            self._send(
                "GET", f"/variables/{_q(variable)}/value", view=view, params=params
            )
        )

    def assign(
        self,
        view: View,
        value: np.ndarray,
        *,
        variable: str = "",
        optimizer: str = "",
        slot: str = "",
        weight: str = "",
    ) -> None:
        value = np.asarray(value)
        framed = ({"value": codec.describe(value)}, [value])
        if weight:
            self._send(
                "PUT",
                f"/optimizers/{_q(optimizer)}/weights/{_q(weight)}",
                view=view,
                framed=framed,
            )
            return
        params = {k: v for k, v in (("optimizer", optimizer), ("slot", slot)) if v}
        self._send(
            "PUT",
            f"/variables/{_q(variable)}/value",
            view=view,
            framed=framed,
            params=params,
        )

    def set_iterations(self, view: View, optimizer: str, iterations: int) -> None:
        self._send(
            "PUT",
            f"/optimizers/{_q(optimizer)}/iterations",
            view=view,
            json={"iterations": iterations},
        )

    def add_slot(
        self, view: View, optimizer: str, variable: str, slot: str, initializer: str
    ) -> None:
        self._send(
            "POST",
            f"/optimizers/{_q(optimizer)}/slots",
            view=view,
            json={"variable": variable, "slot": slot, "initializer": initializer},
        )

    def add_weight(
        self,
        view: View,
        optimizer: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        initializer: str,
    ) -> np.ndarray:
        self._send(
            "POST",
            f"/optimizers/{_q(optimizer)}/weights",
            view=view,
            json={
                "name": name,
                "shape": list(shape),
                "dtype": np.dtype(dtype).name,
                "initializer": initializer,
            },
        )
        return self.read(optimizer=optimizer, weight=name)

    def checkpoint(self) -> dict[str, Any]:
        r = self._send("POST", "/checkpoint", view=None).json()
        return {
            "path": r["path"],
            "sequence": r["sequence"],
            "bytes": r["bytes"],
            "seconds": r["seconds"],
        }


def _q(name: str) -> str:
    """A name in a URL path (slashes kept: the routes take them)."""
    return quote(name, safe="/")


def _npy(response: httpx.Response) -> np.ndarray:
    return codec.read_npy(response.content)


def _variable_info(v: dict) -> VariableInfo:
    return VariableInfo(
        v["name"],
        tuple(v["shape"]),
        np.dtype(v["dtype"]),
        tuple(v["global_shape"]),
        v["row_offset"],
        v.get("created", False),
    )


def _optimizer_info(r: dict) -> OptimizerInfo:
    return OptimizerInfo(
        name=r["name"],
        config=r["config"],
        iterations=r["iterations"],
        weights=[(w["kind"], w["variable"], w["name"]) for w in r["weights"]],
        slot_names=list(r["slot_names"]),
        created=r.get("created", False),
        pushes=r["pushes"],
    )


def _push_id_json(push_id: PushId, attempt: int) -> dict[str, Any]:
    return {"client": push_id.client, "sequence": push_id.sequence, "attempt": attempt}


def _error_name(response: httpx.Response) -> str:
    """The error class an error answer names (empty if it names none)."""
    try:
        payload = response.json()
    except ValueError:
        return ""
    return payload.get("error", "") if isinstance(payload, dict) else ""
