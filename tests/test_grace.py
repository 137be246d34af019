"""Grace timers: unreferenced containers are reaped, referenced ones are kept.

No test sleeps for a fixed time: a *witness*, a container with the same grace time
whose timer starts after the one under test, is reaped first when the timers work,
so waiting for the witness to go is waiting long enough (the mock-clock tests in
tests/core time the timers exactly)."""

from __future__ import annotations

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, wait_until


def reaped(c: Client, handle: str) -> bool:
    return handle not in c.list()  # listing references nothing


def witness(daemon: Daemon, grace_time: float) -> str:
    """An unreferenced container of *grace_time*: its timer starts now."""
    with daemon.client() as other:
        return other.create({"grace_time": grace_time})


def test_unreferenced_container_is_destroyed_after_grace(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.create({"grace_time": 0.5})  # referenced while this connection is open
        later = witness(daemon, 0.5)
        wait_until(lambda: reaped(c, later), what="the witness to be reaped")
        assert handle in c.list()
    with daemon.client() as c:
        wait_until(lambda: reaped(c, handle), what="the container to be reaped")
        with pytest.raises(errors.UnknownHandle):
            c.info(handle)
    assert not (daemon.depot / handle).exists()


def test_reference_in_time_cancels_the_timer(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.create({"grace_time": 1.0})
    with daemon.client() as c:
        c.info(handle)  # naming the handle references it again
        later = witness(daemon, 1.0)
        wait_until(lambda: reaped(c, later), what="the witness to be reaped")
        assert c.info(handle)["state"] == "active"
        c.destroy(handle)


def test_null_grace_time_never_reaps(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.create({"grace_time": None})
    later = witness(daemon, 0.2)
    with daemon.client() as c:
        wait_until(lambda: reaped(c, later), what="the witness to be reaped")
        assert handle in c.list()
        c.destroy(handle)


def test_grace_timers_restart_after_a_daemon_restart(fresh_daemon: Daemon) -> None:
    with fresh_daemon.client() as c:
        handle = c.create({"grace_time": 0.5})
    fresh_daemon.kill9()
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        wait_until(lambda: reaped(c, handle), what="the restored container to be reaped")
