"""Grace timers: unreferenced containers are reaped, referenced ones are kept."""

from __future__ import annotations

import time

import pytest

from supervisor import errors
from tests.conftest import Daemon


def test_unreferenced_container_is_destroyed_after_grace(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.create({"grace_time": 0.5})
        assert handle in c.list()  # referenced while this connection is open
        time.sleep(1.0)
        assert handle in c.list()
    time.sleep(1.5)
    with daemon.client() as c:
        assert handle not in c.list()
        with pytest.raises(errors.UnknownHandle):
            c.info(handle)
    assert not (daemon.depot / handle).exists()


def test_reference_in_time_cancels_the_timer(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.create({"grace_time": 1.0})
    time.sleep(0.5)
    with daemon.client() as c:
        c.info(handle)  # naming the handle references it again
        time.sleep(1.5)
        assert c.info(handle)["state"] == "active"
        c.destroy(handle)


def test_null_grace_time_never_reaps(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.create({"grace_time": None})
    time.sleep(0.5)
    with daemon.client() as c:
        assert handle in c.list()
        c.destroy(handle)


def test_grace_timers_restart_after_a_daemon_restart(fresh_daemon: Daemon) -> None:
    with fresh_daemon.client() as c:
        handle = c.create({"grace_time": 0.5})
    fresh_daemon.kill9()
    fresh_daemon.start()
    time.sleep(1.5)
    with fresh_daemon.client() as c:
        assert handle not in c.list()
