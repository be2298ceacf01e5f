"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.service import ParameterService, ServiceSettings


@pytest.fixture
def make_service():
    """Build ParameterServices that are closed after the test."""
    made: list[ParameterService] = []

    def make(**settings) -> ParameterService:
        service = ParameterService(ServiceSettings(**settings))
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service) -> ParameterService:
    """Three shards, variables of 64 bytes or more split by rows, one optimizer."""
    service = make_service(shards=3, split_bytes=64)
    service.create_optimizer(AdamaxConfig.from_keras(learning_rate=0.01))
    return service
