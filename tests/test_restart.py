"""Restart safety: kill -9 of the daemon loses no container, job or output."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from plugins.fs.identity import IdMapping, as_ids
from supervisor.depot import Depot
from supervisor.errors import InvalidState
from tests.conftest import NOTHING_LEFT, Daemon, ended, init_pid, leftovers, wait_until


def until_exists(path: str) -> str:
    return f"until [ -e {path} ]; do sleep 0.02; done"


def test_kill9_then_restart_keeps_jobs_and_output(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
        sleeper = c.spawn(handle, f"echo before; {until_exists('/tmp/go')}; echo after; exit 5")
        quick = c.spawn(handle, f"{until_exists('/tmp/quick')}; echo quick >&2; exit 3")
    init = init_pid(d, handle)
    root = Path(f"/proc/{init}/root")
    d.kill9()
    # `quick` ends while no daemon runs. Its id-mapped root takes only the container's ids.
    with as_ids(*IdMapping.of(init).to_host(0, 0)):
        (root / "tmp" / "quick").touch()
    status = d.depot / handle / "jobs" / str(quick) / "status"
    wait_until(lambda: status.exists() and status.read_text().strip(), what="quick's status")
    d.start()
    with d.client() as c:
        assert handle in c.list()
        assert c.info(handle)["state"] == "active"
        assert c.link(handle, quick) == [3, "", "quick\n"]
        c.run(handle, "touch /tmp/go")  # the sleeper outlived the daemon and hears this one
        assert c.link(handle, sleeper) == [5, "before\nafter\n", ""]
        assert c.run(handle, "echo still usable") == [0, "still usable\n", ""]
        c.destroy(handle)
    assert leftovers(d) == NOTHING_LEFT


def test_job_ids_are_never_reused_across_restarts(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    seen: list[int] = []
    with d.client() as c:
        handle = c.create()
        seen += [c.spawn(handle, "true"), c.spawn(handle, "true")]
    for _ in range(2):  # the second restart comes before any new id was recorded
        d.kill9()
        d.start()
        with d.client() as c:
            seen.append(c.spawn(handle, "true"))
    with d.client() as c:
        c.destroy(handle)
    assert seen == sorted(set(seen)), seen  # increasing: none handed out twice


def test_stream_after_restart_has_full_output(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
        job = c.spawn(handle, "echo one; sleep 1; echo two")
    d.kill9()
    d.start()
    with d.client() as c:
        chunks = "".join(chunk for _, chunk in c.stream(handle, job))
        assert chunks == "one\ntwo\n"
        c.destroy(handle)


def test_sigterm_detaches_and_next_daemon_adopts(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
        job = c.spawn(handle, "sleep 1; echo survived")
    assert d.terminate() == 0
    assert not d.socket.exists()
    d.start()
    with d.client() as c:
        assert c.link(handle, job) == [0, "survived\n", ""]
        c.destroy(handle)


@pytest.mark.parametrize("left", ["no record", "born record", "born record, no plugin state"])
def test_container_half_made_by_a_killed_daemon_is_cleaned_at_start(
    fresh_daemon: Daemon, left: str
) -> None:
    """What a daemon killed in the middle of create leaves with the init running: no
    record (create saves the first once the container is active), or a record in state
    born, with or without plugin state (what daemons that saved at the start left)."""
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
    d.kill9()
    depot = Depot(d.depot)
    record = dict(depot.records())[handle]
    assert record is not None and record["plugins"]
    if left == "no record":
        for slot in d.depot.joinpath(handle).glob("record.*"):
            slot.unlink()
    else:
        plugins = {} if left.endswith("no plugin state") else record["plugins"]
        depot.save(handle, {**record, "state": "born", "plugins": plugins})
    assert Path(f"/proc/{record['plugins']['isolation']['pid']}").exists()  # the init lives
    d.start()
    with d.client() as c:
        assert handle not in c.list()
    deadline = time.monotonic() + 5
    while leftovers(d)["depot"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(d) == NOTHING_LEFT


def test_container_whose_init_died_is_stopped(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
        job = c.spawn(handle, "sleep 100")
    pid = init_pid(d, handle)
    d.kill9()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: ended(pid), what=f"the init {pid} to die")
    d.start()
    with d.client() as c:
        info = c.info(handle)
        assert info["state"] == "stopped"
        assert "container init exited" in info["events"]
        assert c.link(handle, job)[0] is None
        c.destroy(handle)


def test_trash_left_by_a_killed_daemon_is_deleted_at_start(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.kill9()
    # What a daemon killed between a destroy's reply and the deletion leaves.
    left = d.depot / ".trash" / "gone.1"
    (left / "jobs" / "1").mkdir(parents=True)
    (left / "jobs" / "1" / "stdout").write_text("old output")
    d.start()
    assert leftovers(d) == NOTHING_LEFT
    assert not left.exists()


def test_a_container_whose_init_died_cannot_be_started(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
    pid = init_pid(d, handle)
    os.kill(pid, signal.SIGKILL)
    with d.client() as c:
        wait_until(lambda: c.info(handle)["state"] == "stopped", what="the container to stop")
        with pytest.raises(InvalidState, match=f"{handle}: cannot start: its init is gone"):
            c.call("start", handle)
        c.destroy(handle)
