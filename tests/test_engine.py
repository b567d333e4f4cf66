"""The set-up path for the Docker engine."""

from __future__ import annotations

import pytest

from cycleqd.sandboxes import engine
from cycleqd.sandboxes.errors import EngineUnavailableError


def test_ensure_engine_is_idempotent(docker_engine: object) -> None:
    first = engine.ensure_engine()
    second = engine.ensure_engine()
    assert first.reachable and second.reachable
    assert first.version == second.version and first.version[0].isdigit()


def test_without_an_engine_and_without_root_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real connection attempt to a socket that does not exist; only our identity is pretended.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)
    with pytest.raises(EngineUnavailableError, match="Install Docker Engine"):
        engine.ensure_engine(timeout_s=1)


def test_client_error_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    engine._connect.cache_clear()
    try:
        with pytest.raises(EngineUnavailableError, match="cycleqd engine start"):
            engine.docker_client()
    finally:
        engine._connect.cache_clear()
