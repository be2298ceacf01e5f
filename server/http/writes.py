"""The HTTP API's writes, for workers without gRPC: create optimizers and
variables, push, reserve steps, set iterations, add slots and weights, assign,
checkpoint. Tensors arrive as raw bytes in framed bodies, never as number
lists. Each route decodes, calls one service method on the thread pool (it
may wait for locks or the disk), and encodes.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adamax_ps.server.http import framed
from adamax_ps.server.http.api import (
    Api,
    OptimizerPath,
    SlotOf,
    VariableName,
    WeightPath,
)
from adamax_ps.server.http.models import (
    AddSlotRequest,
    AddWeightRequest,
    ApplyResponse,
    CheckpointResponse,
    CreateOptimizerRequest,
    IterationsRequest,
    OptimizerResponse,
    ReserveStepRequest,
    StepResponse,
    VariableResponse,
)
from adamax_ps.server.http.schema import (
    BODY,
    FRAMED_BODY,
    IN_PATH,
    NAMED,
    SLOT_PARAMETER,
    VARIABLE_LINKS,
    WEIGHT_ADDED,
    WEIGHT_IN_PATH,
    WRITE,
    errors,
    links,
)
from adamax_ps.server.ledger import PushId


def writes(api: Api) -> APIRouter:
    """Every route that changes state (each tagged ``writes``)."""
    router = APIRouter(prefix="/api/v1", tags=["writes"])
    service, inspector, limit = api.service, api.inspector, api.max_request_bytes

    @router.post(
        "/optimizers",
        response_model=OptimizerResponse,
        dependencies=api.writes,
        responses={
            **errors(*WRITE),
            200: links(
                optimizer=NAMED,
                set_iterations=NAMED,
                add_weight=NAMED,
                reserve_step=NAMED,
            ),
        },
    )
    def create_optimizer(request: CreateOptimizerRequest) -> dict:
        """Create an optimizer from its Keras config, or attach to the same one."""
        state, created = service.create_optimizer(request.config.to_keras())
        return {**inspector.optimizer(state.name), "created": created}

    @router.post(
        "/variables",
        response_model=list[VariableResponse],
        dependencies=api.writes,
        responses={**errors(*WRITE, *BODY, 507), 200: links(**VARIABLE_LINKS)},
        openapi_extra=FRAMED_BODY,
    )
    async def create_variables(request: Request) -> list[dict]:
        """Create or attach to variables. Header: ``{"variables": [{name,
        global_shape, dtype, row_offset, rows, initializer, seed, initial_value?:
        {shape, dtype}}]}``; initial values' bytes follow."""
        header, data = await api.bodies.framed(request)
        specs = framed.variable_specs(header, data, limit)

        def create() -> list[dict]:
            return [
                {**inspector.variable(record.name, stats=False), "created": created}
                for record, created in service.create_variables(specs)
            ]

        return await run_in_threadpool(create)

    @router.post(
        "/optimizers/{name:path}/apply",
        response_model=ApplyResponse,
        dependencies=api.writes,
        responses={
            **errors(*WRITE, *BODY, 404, 504, 507),
            200: links(optimizer=IN_PATH),
        },
        openapi_extra=FRAMED_BODY,
    )
    async def apply(name: OptimizerPath, request: Request) -> dict:
        """Apply a push. Header: ``{"gradients": [{variable, values: {shape,
        dtype}, indices?: {shape, dtype}}], push_id?, step?, aggregated?,
        call_variables?, clipped?, replica?, reserve_next?,
        step_reserved_ahead?}``; for each gradient its indices' bytes (if
        sparse) then its values' bytes follow."""
        header, data = await api.bodies.framed(request)
        gradients = framed.gradients(header, data, limit)
        push_id = framed.push_id(header.get("push_id"))
        options = framed.push_options(header)
        result = await run_in_threadpool(
            service.apply, name, gradients, push_id, **options
        )
        answer = {"step": result.step, "iterations": result.iterations}
        if result.next_step is not None:
            answer["next_step"] = result.next_step
        return answer

    @router.post(
        "/optimizers/{name:path}/reserve-step",
        response_model=StepResponse,
        dependencies=api.writes,
        responses={**errors(*WRITE, 404), 200: links(optimizer=IN_PATH)},
    )
    def reserve_step(name: OptimizerPath, request: ReserveStepRequest) -> dict:
        """Coordinator (server 0): take the step of one apply_gradients call."""
        push_id = None
        if request.push_id is not None:
            push_id = PushId(
                request.push_id.client,
                request.push_id.sequence,
                request.push_id.attempt,
            )
        return {"step": service.reserve_step(name, request.variables, push_id)}

    @router.put(
        "/optimizers/{name:path}/iterations",
        response_model=OptimizerResponse,
        dependencies=api.writes,
        responses={**errors(*WRITE, 404), 200: links(optimizer=NAMED)},
    )
    def set_iterations(name: OptimizerPath, request: IterationsRequest) -> dict:
        service.set_iterations(name, request.iterations)
        return inspector.optimizer(name)

    @router.post(
        "/optimizers/{name:path}/iterations",
        response_model=OptimizerResponse,
        dependencies=api.admin,
        responses={**errors(*WRITE, 404), 200: links(optimizer=NAMED)},
    )
    def create_iterations(name: OptimizerPath) -> dict:
        """Read ``iterations`` as Keras does, which creates it (it then heads
        ``weights``): a change, logged like any other. Idempotent."""
        service.iterations(name)
        return inspector.optimizer(name)

    @router.post(
        "/optimizers/{name:path}/slots",
        response_model=OptimizerResponse,
        dependencies=api.writes,
        responses={
            **errors(*WRITE, 404, 507),
            200: links(optimizer=NAMED, variable={"name": "$request.body#/variable"}),
        },
    )
    def add_slot(name: OptimizerPath, request: AddSlotRequest) -> dict:
        """Keras add_slot: arrays where the variable lives, order at server 0."""
        service.add_slot(name, request.variable, request.slot, request.initializer)
        return inspector.optimizer(name)

    @router.post(
        "/optimizers/{name:path}/weights",
        response_model=OptimizerResponse,
        dependencies=api.writes,
        responses={
            **errors(*WRITE, 404, 507),
            200: links(
                optimizer=NAMED, read_weight=WEIGHT_ADDED, assign_weight=WEIGHT_ADDED
            ),
        },
    )
    def add_weight(name: OptimizerPath, request: AddWeightRequest) -> dict:
        """Keras add_weight on the optimizer."""
        service.add_weight(
            name, request.name, tuple(request.shape), request.dtype, request.initializer
        )
        return inspector.optimizer(name)

    @router.put(
        "/variables/{name:path}/value",
        status_code=204,
        dependencies=api.writes,
        responses={
            **errors(*WRITE, *BODY, 404),
            204: links(value=IN_PATH, variable=IN_PATH),
        },
        openapi_extra={**FRAMED_BODY, **SLOT_PARAMETER},
    )
    async def assign(name: VariableName, request: Request, slot: SlotOf) -> Response:
        """Replace a variable's value or a slot's. Header: {"value": {shape, dtype}}."""
        header, data = await api.bodies.framed(request)
        value = framed.tensor(header, "value", data, limit)
        await run_in_threadpool(lambda: service.assign(name, value, **slot))
        return Response(status_code=204)

    @router.put(
        "/optimizers/{name:path}/weights/{weight}",
        status_code=204,
        dependencies=api.writes,
        responses={
            **errors(*WRITE, *BODY, 404),
            204: links(read_weight=WEIGHT_IN_PATH),
        },
        openapi_extra=FRAMED_BODY,
    )
    async def assign_weight(
        name: OptimizerPath, weight: WeightPath, request: Request
    ) -> Response:
        header, data = await api.bodies.framed(request)
        value = framed.tensor(header, "value", data, limit)
        await run_in_threadpool(service.assign_weight, name, weight, value)
        return Response(status_code=204)

    @router.post(
        "/checkpoint",
        response_model=CheckpointResponse,
        dependencies=api.admin,
        responses=errors(401, 409, 500, 503),
    )
    def checkpoint() -> dict:
        """Write a checkpoint now."""
        info = service.checkpoint()
        return {
            "path": str(info.path),
            "sequence": info.sequence,
            "bytes": info.nbytes,
            "seconds": info.seconds,
        }

    return router
