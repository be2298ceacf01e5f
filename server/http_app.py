"""The HTTP face of a ParameterService (FastAPI, served by uvicorn).

Health and readiness probes for now; inspection, pushes over HTTP, metrics and
the dashboard build on this app.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from adamax_ps.server.service import ParameterService


class HealthResponse(BaseModel):
    status: str


def create_app(service: ParameterService, ready: Callable[[], bool]) -> FastAPI:
    """The app; ``ready()`` says whether the server restored its checkpoint and
    warmed its kernels."""
    app = FastAPI(title="adamax-ps", version="1", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.get("/healthz", response_model=HealthResponse)
    def healthz() -> HealthResponse:
        """The process is up."""
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "not ready yet"}},
    )
    def readyz():
        """Ready once restored from the checkpoint and the kernels are warm."""
        if ready():
            return HealthResponse(status="ready")
        return JSONResponse({"status": "starting"}, status_code=503)

    return app
