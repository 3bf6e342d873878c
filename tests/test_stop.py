"""Stopping a container catches what it means: the engine's refusal (docker's APIError, NotFound
among them), read against the container's state; anything else is not a refusal and surfaces."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from ccoas.engine.stop import stop
from ccoas.errors import EngineError
from ccoas.plan import Stop


def api_error(cls: type[docker.errors.APIError], status: int, words: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} Server Error", response, explanation=words)


class FakeContainer:
    """A running container whose ``kill`` raises ``error``; ``exits`` says whether it is gone after."""

    def __init__(self, error: Exception, exits: bool):
        self.name, self.id = "st-postgres", "id-st-postgres"
        self.status = "running"
        self.attrs = {"Config": {"StopSignal": "SIGTERM"}, "State": {"ExitCode": 0}}
        self.error, self.exits = error, exits

    def reload(self) -> None:
        pass

    def kill(self, signal: str) -> None:
        if self.exits:
            self.status = "exited"
        raise self.error


class FakeApi:
    def __init__(self):
        self.stopped: list[str] = []

    def stop(self, container_id: str, timeout: int) -> None:
        self.stopped.append(container_id)


class FakeClient:
    def __init__(self):
        self.api = FakeApi()


POLICY = Stop(signal="SIGINT", timeout_s=5)  # differs from the container's: stop() kills with it first


def test_a_refusal_of_a_container_that_exited_on_the_signal_is_a_clean_stop():
    container = FakeContainer(api_error(docker.errors.APIError, 409, "container is not running"), exits=True)
    stopped = stop(FakeClient(), container, POLICY)
    assert not stopped.killed and stopped.note() is None


def test_not_found_is_a_refusal_too():
    container = FakeContainer(api_error(docker.errors.NotFound, 404, "no such container"), exits=True)
    assert not stop(FakeClient(), container, POLICY).killed


def test_a_refusal_while_the_container_still_runs_is_an_engine_error_with_its_words():
    container = FakeContainer(api_error(docker.errors.APIError, 500, "runc kill failed"), exits=False)
    with pytest.raises(EngineError, match="stopping st-postgres: .*runc kill failed"):
        stop(FakeClient(), container, POLICY)


@pytest.mark.parametrize(
    "error", [requests.exceptions.ReadTimeout("read timed out"), KeyError("Id"), RuntimeError("a bug")], ids=repr
)
def test_what_is_not_the_engines_refusal_surfaces_as_itself(error):
    """Before, ``except Exception`` took a timeout or a bug for a refusal: a container that had
    exited meanwhile made it look like a clean stop."""
    container = FakeContainer(error, exits=True)
    with pytest.raises(type(error)):
        stop(FakeClient(), container, POLICY)
