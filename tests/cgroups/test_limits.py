"""Limits, OOM, stats and clean-up through the daemon's socket, on this machine's cgroups.

Each test starts real containers with one limit and checks one observable fact
from inside the container or from the cgroup files the kernel keeps. Figures the
report quotes (CPU ratio, OOM time to stop) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugins.cgroups.devices import ALLOWED_DEVICES
from supervisor.client import Client
from supervisor.errors import CorralError, InvalidRequest
from tests.conftest import (
    Daemon,
    cgroup_dirs,
    cgroup_layout,
    cgroup_of,
    cgroup_parents,
    init_cgroup_of,
    init_pid,
    leftovers,
    wait_for_output,
)
from tests.test_events import subscribed

MB = 1 << 20


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


# -- memory and OOM ------------------------------------------------------------------


def test_job_past_the_memory_limit_is_oom_killed_and_the_container_stopped(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create({"limits": {"mem": 64 * MB}})
    try:
        job = client.spawn(handle, "dd if=/dev/zero of=/dev/null bs=300M count=1")
        start = time.monotonic()
        status, _, _ = client.link(handle, job)
        linked = time.monotonic() - start
        assert status == 128 + 9
        info = wait_for(lambda: (i := client.info(handle))["state"] == "stopped" and i)
        stopped = time.monotonic() - start
        assert info and "out of memory" in info["events"]
        assert info["memory_stat"]["oom_count"] >= 1
        assert info["memory_stat"]["limit"] == 64 * MB
        print(f"\nOOM: link returned after {linked:.3f}s, container stopped after {stopped:.3f}s")
    finally:
        client.destroy(handle)
    assert cgroup_dirs(daemon, handle) == []


def test_memory_limit_counts_swap_and_reads_back(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"mem": 64 * MB}})
    try:
        assert client.call("limit", handle, "mem") == 64 * MB
        assert client.call("limit", handle, "mem", 128 * MB) == 128 * MB  # raising: memsw first
        assert client.call("limit", handle, "mem", 32 * MB) == 32 * MB  # lowering: memory first
        for path in cgroup_dirs(daemon, handle):
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                assert int(memsw.read_text()) == 32 * MB
    finally:
        client.destroy(handle)


def test_lowering_mem_below_what_is_used_is_refused_on_v1(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"mem": 128 * MB}})
    try:
        if cgroup_layout(daemon)["memory"].version != 1:
            pytest.skip("memory is not on cgroup v1 (v2 reclaims, then OOM-kills)")
        memory = cgroup_of(daemon, handle, "memory")
        # dd holds its 40 MB buffer while it waits to write into a pipe nobody reads.
        client.spawn(handle, "dd if=/dev/zero bs=40M count=1 | sleep 30", discard_output=True)
        assert wait_for(lambda: client.info(handle)["memory_stat"]["usage"] > 40 * MB)
        with pytest.raises(InvalidRequest, match=f"container {handle}: mem {16 * MB} refused"):
            client.call("limit", handle, "mem", 16 * MB)
        assert client.call("limit", handle, "mem") == 128 * MB
        assert int((memory / "memory.memsw.limit_in_bytes").read_text()) == 128 * MB
        assert client.info(handle)["state"] == "active"
    finally:
        client.destroy(handle)


def test_lowering_mem_below_what_is_used_oom_kills_on_v2(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"mem": 128 * MB}})
    try:
        if cgroup_layout(daemon)["memory"].version != 2:
            pytest.skip("memory is on cgroup v1 (the kernel refuses the write)")
        client.spawn(handle, "dd if=/dev/zero bs=40M count=1 | sleep 30", discard_output=True)
        assert wait_for(lambda: client.info(handle)["memory_stat"]["usage"] > 40 * MB)
        assert client.call("limit", handle, "mem", 16 * MB) == 16 * MB
        info = wait_for(lambda: (i := client.info(handle))["state"] == "stopped" and i)
        assert info and "out of memory" in info["events"]
    finally:
        client.destroy(handle)


def test_oom_is_still_watched_after_a_daemon_restart(fresh_daemon: Daemon) -> None:
    with fresh_daemon.client() as c:
        handle = c.create({"limits": {"mem": 64 * MB}})
    fresh_daemon.kill9()
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        job = c.spawn(handle, "dd if=/dev/zero of=/dev/null bs=300M count=1")
        assert c.link(handle, job)[0] == 128 + 9
        info = wait_for(lambda: (i := c.info(handle))["state"] == "stopped" and i)
        assert info and "out of memory" in info["events"]
        c.destroy(handle)
    assert cgroup_dirs(fresh_daemon) == []


# -- memory pressure ---------------------------------------------------------------------

#: A job whose memory grows by 1 MiB per step, a tenth of a second apart, while it reads
#: its 16 MiB data file again at each step (as a real job reads its inputs): the data's
#: page cache is reclaimed, then read back, more and more as the memory grows, until the
#: kernel OOM-kills the shell that holds it. Its container gets a disk (``disk_size_mb``)
#: so that the file is page cache wherever the depot is: on a tmpfs depot (the v2
#: guest's) it would be shared memory, which nothing reclaims without swap.
GROWING_JOB = (
    "head -c 16777216 /dev/urandom > /tmp/data; c=$(head -c 1048576 /dev/zero | tr '\\0' x); "
    "s=; while :; do s=$s$c; cat /tmp/data > /dev/null; sleep 0.1; done"
)


def test_memory_pressure_is_reported_before_the_oom_kill_of_a_growing_job(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create(
        {"limits": {"mem": 64 * MB}, "memory_pressure": ["low", "critical"], "disk_size_mb": 64}
    )
    try:
        watched = client.info(handle)["memory_pressure"]
        assert set(watched) == {"low", "critical"}  # what the kernel was given for each
        with subscribed(
            daemon, {"handles": [handle], "kinds": ["memory_pressure", "oom", "state"]}
        ) as s:
            s.sock.settimeout(300)  # the growth takes a while under emulation (the v2 guest)
            job = client.spawn(handle, GROWING_JOB, discard_output=True)
            seen = s.events_of(handle, "stopped")
        kinds = [e["kind"] for e in seen]
        assert "memory_pressure" in kinds and "oom" in kinds, seen
        first, oom = seen[kinds.index("memory_pressure")], seen[kinds.index("oom")]
        assert kinds.index("memory_pressure") < kinds.index("oom"), seen
        assert first["level"] == "low"  # the mildest level comes first
        assert {e["level"] for e in seen if e["kind"] == "memory_pressure"} <= {"low", "critical"}
        assert seen[-1]["new"] == "stopped"
        assert client.link(handle, job)[0] == 128 + 9
        info = client.info(handle)
        assert "out of memory" in info["events"] and info["memory_stat"]["oom_count"] >= 1
        levels = [e["level"] for e in seen if e["kind"] == "memory_pressure"]
        print(
            f"\nmemory pressure {oom['time'] - first['time']:.3f}s before the OOM kill; "
            f"events: {levels}"
        )
    finally:
        client.destroy(handle)
    assert cgroup_dirs(daemon, handle) == []


def test_memory_pressure_is_still_watched_after_a_daemon_restart(fresh_daemon: Daemon) -> None:
    with fresh_daemon.client() as c:
        handle = c.create(
            {"limits": {"mem": 64 * MB}, "memory_pressure": "low", "disk_size_mb": 64}
        )
        watched = c.info(handle)["memory_pressure"]
    fresh_daemon.kill9()
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        assert c.info(handle)["memory_pressure"] == watched
        with subscribed(fresh_daemon, {"handles": [handle], "kinds": ["memory_pressure"]}) as s:
            s.sock.settimeout(300)
            c.spawn(handle, GROWING_JOB, discard_output=True)
            assert s.line()[1]["level"] == "low"
        c.destroy(handle)
    assert cgroup_dirs(fresh_daemon) == []


def test_memory_pressure_of_a_container_whose_cgroups_vanished_is_not_watched(
    fresh_daemon: Daemon,
) -> None:
    """A restart finds the container's memory cgroup gone: the container is restored, unwatched."""
    with fresh_daemon.client() as c:
        handle = c.create({"memory_pressure": "medium"})
        assert c.info(handle)["memory_pressure"]
    fresh_daemon.kill9()
    # What an administrator might do meanwhile: move the init out, remove the cgroup.
    placement = cgroup_layout(fresh_daemon)["memory"]
    memory = cgroup_of(fresh_daemon, handle, "memory")
    (placement.root / "cgroup.procs").write_text(str(init_pid(fresh_daemon, handle)))
    for leaf in memory.iterdir():  # v2: the init's own
        if leaf.is_dir():
            leaf.rmdir()
    memory.rmdir()
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        info = c.info(handle)
        assert info["state"] == "active" and "memory_pressure" not in info
        status, out, _, report = c.run(handle, "echo ok", usage=True)
        assert (status, out) == (0, "ok\n")
        if placement.version == 1:  # the job's own cpuacct cgroup is made all the same
            assert report["usage"]["cpu_total"] is not None
            assert report["usage"]["memory_peak"] is None
        c.destroy(handle)
    assert cgroup_dirs(fresh_daemon) == []


def _bad_pressure_options(daemon: Daemon) -> list[tuple[Any, str]]:
    """Values of ``memory_pressure`` refused here, and words of the refusal."""
    bad: list[tuple[Any, str]] = [
        ("high", "memory_pressure: unknown level 'high' (levels: low, medium, critical"),
        ([], "memory_pressure: [] names no level"),
        (["low", "critical", "low"], "memory_pressure: 'low' is given twice"),
        (["low"] * 9, "memory_pressure: 9 levels, more than the 8 allowed"),
        (5, "memory_pressure: 5 is not a level"),
        ({"level": "low"}, "memory_pressure: {'level': 'low'} is not a PSI threshold"),
    ]
    if cgroup_layout(daemon)["memory"].version == 1:
        bad.append(({"psi": "some 150000 1000000"}, "a PSI threshold needs cgroup v2"))
    else:
        bad += [
            ({"psi": "some 150000 100000"}, "the window, 100000 us, is outside the kernel's"),
            ({"psi": "some 0 1000000"}, "the stall, 0 us, must be from 1 us to the window"),
            ({"psi": "most 1 1000000"}, "PSI threshold 'most 1 1000000' is not"),
        ]
    return bad


def test_bad_memory_pressure_options_fail_before_anything_is_built(
    daemon: Daemon, client: Client
) -> None:
    handles, dirs = client.list(), cgroup_dirs(daemon)
    for value, words in _bad_pressure_options(daemon):
        with pytest.raises(InvalidRequest) as caught:
            client.create({"limits": {"mem": 64 * MB}, "memory_pressure": value})
        assert words in caught.value.message, (value, caught.value.message)
    assert client.list() == handles
    assert cgroup_dirs(daemon) == dirs


# -- cpu -------------------------------------------------------------------------------


def test_cpus_quota_gives_a_busy_job_about_half_a_core(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"cpus": 0.5}})
    try:
        job = client.spawn(
            handle, "spin() { echo spinning; while :; do :; done; }; spin & spin & wait"
        )
        wait_for_output(daemon, handle, job, "spinning\nspinning\n")
        usage0, wall0 = client.info(handle)["cpu_stat"]["usage"], time.monotonic()
        time.sleep(3.0)
        usage1, wall1 = client.info(handle)["cpu_stat"]["usage"], time.monotonic()
        ratio = (usage1 - usage0) / 1e9 / (wall1 - wall0)
        print(f"\ncpus 0.5 with two spinning processes: {ratio:.3f} cores used")
        assert 0.3 <= ratio <= 0.7
        assert client.call("limit", handle, "cpus") == 0.5
    finally:
        client.destroy(handle)


def test_cpu_shares_read_back(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"cpu": 512}})
    try:
        assert client.call("limit", handle, "cpu") == 512
        assert client.call("limit", handle, "cpu", 2048) == 2048
        assert client.info(handle)["limits"]["cpu"] == 2048
        assert client.call("limit", handle, "cpu", 1) == 2  # Warden's clamp
    finally:
        client.destroy(handle)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs at least 2 cpus")
def test_cpuset_pins_jobs_to_the_given_core(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"cpuset": "1"}})
    try:
        status, out, _ = client.run(handle, "grep Cpus_allowed_list /proc/self/status")
        assert status == 0
        assert out.split() == ["Cpus_allowed_list:", "1"]
        assert client.call("limit", handle, "cpuset") == "1"
        assert client.call("limit", handle, "cpuset", "0,1") == "0-1"
        status, out, _ = client.run(handle, "grep Cpus_allowed_list /proc/self/status")
        assert out.split() == ["Cpus_allowed_list:", "0-1"]
    finally:
        client.destroy(handle)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 cpus")
def test_init_and_jobs_may_use_every_cpu_of_their_cpuset(daemon: Daemon, client: Client) -> None:
    """The daemon starts each launcher off its own CPU; the init and its jobs get them all back."""
    handle = client.create()
    try:
        cpus = client.call("limit", handle, "cpuset")
        init_status = Path(f"/proc/{init_pid(daemon, handle)}/status").read_text().splitlines()
        assert f"Cpus_allowed_list:\t{cpus}" in init_status
        status, out, _ = client.run(handle, "grep Cpus_allowed_list /proc/self/status")
        assert status == 0
        assert out.split() == ["Cpus_allowed_list:", cpus]
    finally:
        client.destroy(handle)


# -- pids ----------------------------------------------------------------------------------


def test_pids_limit_contains_a_fork_bomb(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"pids": 20}})
    try:
        # 40 background sleeps: the shell fails to fork once the container holds 20 tasks.
        status, _, err = client.run(handle, "for i in $(seq 40); do sleep 2 & done; wait")
        assert status != 0 and "fork" in err
        # the sleeps and the init fill the container (the shell itself has exited)
        assert 15 <= client.info(handle)["pids"]["current"] <= 20
        assert wait_for(lambda: client.info(handle)["pids"]["current"] == 1)
        client.spawn(handle, "bomb() { bomb | bomb & }; bomb", discard_output=True)
        with daemon.client(timeout=5) as pinger:
            for _ in range(20):
                start = time.monotonic()
                assert pinger.ping() == "pong"
                assert time.monotonic() - start < 2.0
                pids = client.info(handle)["pids"]
                assert pids["current"] <= pids["max"] == 20
                time.sleep(0.1)
    finally:
        client.destroy(handle)
    assert cgroup_dirs(daemon, handle) == []
    assert leftovers(daemon)["processes"] == []


def test_a_container_created_without_limits_gets_the_default_pids_limit(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    other = client.create({"limits": {"pids": 100}})
    try:
        pids_max = cgroup_of(daemon, handle, "pids") / "pids.max"
        assert pids_max.read_text().strip() == "4096"
        info = client.info(handle)
        assert info["limits"]["pids"] == 4096 and info["pids"]["max"] == 4096
        # a limit the client gives wins over the default
        assert (cgroup_of(daemon, other, "pids") / "pids.max").read_text().strip() == "100"
        assert client.info(other)["limits"]["pids"] == 100
    finally:
        client.destroy(handle)
        client.destroy(other)


def test_the_default_pids_limit_stops_a_fork_loop_and_can_be_turned_off(
    artifacts: tuple[Path, Path],
) -> None:
    d = Daemon(*artifacts, tables={"cgroups": {"default_pids_limit": 48}}).start()
    try:
        with d.client() as c:
            handle = c.create()
            pids_file = cgroup_of(d, handle, "pids") / "pids.max"
            assert pids_file.read_text().strip() == "48"
            job = c.spawn(handle, "for i in $(seq 200); do sleep 30 & done; wait")
            with d.client(timeout=5) as pinger:
                for _ in range(10):
                    start = time.monotonic()
                    assert pinger.ping() == "pong"
                    assert time.monotonic() - start < 2.0
                    assert c.info(handle)["pids"]["current"] <= 48
                    time.sleep(0.1)
            status, _, err = c.link(handle, job)
            assert status != 0 and "fork" in err
            # the loop filled the container up to the limit (the shell failed, the sleeps stay)
            assert 40 <= c.info(handle)["pids"]["current"] <= 48
            c.destroy(handle)
        d.stop()
        d.configure({"cgroups": {"default_pids_limit": False}})
        d.start()
        with d.client() as c:
            handle = c.create()
            assert (cgroup_of(d, handle, "pids") / "pids.max").read_text().strip() == "max"
            assert c.info(handle)["limits"]["pids"] is None
            c.destroy(handle)
        assert leftovers(d)["processes"] == []
    finally:
        d.close()


# -- read-back across a restart -----------------------------------------------------------


def test_limits_read_back_after_kill9_and_restart(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    wanted: dict[str, Any] = {"mem": 96 * MB, "cpu": 256, "cpus": 0.75, "pids": 64}
    if (os.cpu_count() or 1) >= 2:
        wanted["cpuset"] = "1"
    with d.client() as c:
        handle = c.create({"limits": {"mem": 64 * MB, "pids": 30}})
        for name, value in wanted.items():
            assert c.call("limit", handle, name, value) == value
    d.kill9()
    d.start()
    with d.client() as c:
        for name, value in wanted.items():
            assert c.call("limit", handle, name) == value, name
        info = c.info(handle)
        assert {k: info["limits"][k] for k in wanted} == wanted
        assert info["pids"]["max"] == 64 and info["memory_stat"]["limit"] == 96 * MB
        c.destroy(handle)
    assert cgroup_dirs(d) == []


# -- clean-up ---------------------------------------------------------------------------------


def test_the_cgroup_helpers_find_a_live_container_in_every_hierarchy_it_uses(
    daemon: Daemon, client: Client
) -> None:
    """The helpers the clean-up checks rely on, against the kernel's word: otherwise "no
    cgroup left" could pass by looking where nothing ever is."""
    layout = cgroup_layout(daemon)
    assert {"memory", "cpu", "pids"} <= set(layout)  # on every host this suite runs on
    handle = client.create()
    try:
        pid = str(init_pid(daemon, handle))
        dirs = cgroup_dirs(daemon, handle)
        assert dirs == sorted({cgroup_of(daemon, handle, c) for c in layout})
        for path in {init_cgroup_of(daemon, handle, c) for c in layout}:
            assert pid in (path / "cgroup.procs").read_text().split()
    finally:
        client.destroy(handle)
    assert cgroup_dirs(daemon, handle) == []


def test_destroy_removes_the_cgroups_in_every_hierarchy(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"mem": 64 * MB, "pids": 50}})
    try:
        made = cgroup_dirs(daemon, handle)
        # One in each hierarchy the daemon uses (v1: memory, cpu, pids...; v2: the one).
        assert made == [parent / handle for parent in cgroup_parents(daemon)]
        client.run(handle, "sleep 30 &")
    finally:
        client.destroy(handle)
    assert [p for p in made if p.exists()] == []


def _spare_dirs(daemon: Daemon) -> list[Path]:
    return sorted(
        d
        for parent in cgroup_parents(daemon)
        if parent.is_dir()
        for d in parent.iterdir()
        if d.name.startswith(".spare-")
    )


def _spare_set(daemon: Daemon, timeout: float = 10.0) -> list[Path]:
    """The daemon's spare set once complete: one directory in each hierarchy that renames
    (the daemon makes it one directory at a time, after a destroy); [] where none does."""
    renaming = {p.root for p in cgroup_layout(daemon).values() if p.backend.renames}
    if not renaming:
        return []
    found = wait_for(
        lambda: len(spares := _spare_dirs(daemon)) == len(renaming) and spares, timeout
    )
    assert found, f"no complete spare set in {len(renaming)} hierarchies: {_spare_dirs(daemon)}"
    return list(found)


def test_create_renames_the_spare_cgroups_made_ahead(daemon: Daemon, client: Client) -> None:
    """Where a hierarchy renames cgroups (v1), create takes the set made ahead, and
    destroy's clean-up, after the reply, removes the container's and makes the next."""
    client.destroy(client.create())
    spares = _spare_set(daemon)
    if not spares:
        pytest.skip("no cgroup hierarchy here renames cgroups (pure v2): nothing is made ahead")
    inodes = {p.parent: p.stat().st_ino for p in spares}
    handle = client.create()
    try:
        made = cgroup_dirs(daemon, handle)
        assert {p.parent: p.stat().st_ino for p in made if p.parent in inodes} == inodes
        assert not any(p.exists() for p in spares)
    finally:
        client.destroy(handle)
    assert cgroup_dirs(daemon) == []  # the container's, renamed away, are gone too
    assert len(_spare_set(daemon)) == len(spares)


def test_a_daemon_stopped_right_after_a_destroy_leaves_no_cgroup(fresh_daemon: Daemon) -> None:
    """Its spare set and the destroyed container's cgroups (removed after the reply)
    go before it exits, and with them its parent cgroups."""
    with fresh_daemon.client() as c:
        c.destroy(c.create())
    parents = cgroup_parents(fresh_daemon)
    assert all(p.is_dir() for p in parents)
    assert fresh_daemon.terminate() == 0
    assert [p for p in parents if p.exists()] == []


def test_a_parent_removed_meanwhile_is_made_again(fresh_daemon: Daemon) -> None:
    client = fresh_daemon.client()
    client.destroy(client.create())  # all parents exist, and no container is in them
    removed = cgroup_parents(fresh_daemon)
    assert all(p.is_dir() for p in removed)
    # The destroy's clean-up makes a spare set (where hierarchies rename), which the
    # next create would take: the administrator removes it too.
    for spare in _spare_set(fresh_daemon):
        spare.rmdir()
    for parent in removed:
        parent.rmdir()  # what an administrator might do while the daemon runs
    handle = client.create({"limits": {"mem": 64 * MB}})
    try:
        assert all(p.is_dir() for p in removed)
        assert client.run(handle, "echo ok")[:2] == [0, "ok\n"]
    finally:
        client.destroy(handle)
        client.close()


def test_failed_creates_leave_no_cgroup(daemon: Daemon, client: Client) -> None:
    before = cgroup_dirs(daemon)
    with pytest.raises(InvalidRequest, match="cpuset '99': core 99 does not exist"):
        client.create({"handle": "cg-bad-cpuset", "limits": {"cpuset": "99"}})
    # A bind target through a file fails in the container's init, once it is in its
    # cgroups (v1 and v2 alike): create fails after they were made, and must take
    # them down again.
    with pytest.raises(CorralError, match="Not a directory"):
        client.create(
            {"handle": "cg-half-made", "bind_mounts": [[str(daemon.dir), "/bin/busybox/x"]]}
        )
    assert "cg-bad-cpuset" not in client.list() and "cg-half-made" not in client.list()
    assert cgroup_dirs(daemon) == before


def test_startup_removes_cgroups_of_unknown_containers(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        keep = c.create()
    d.kill9()
    stray = cgroup_of(d, "stray", "memory")
    stray.mkdir()
    sleeper = os.fork()
    if sleeper == 0:  # pragma: no cover - the child
        try:
            (stray / "cgroup.procs").write_text("0")
            os.execv("/bin/sleep", ["sleep", "60"])
        finally:
            os._exit(1)
    try:
        wait_for(lambda: (stray / "cgroup.procs").read_text().strip())
        d.start()
        assert not stray.exists()
        assert os.waitpid(sleeper, 0)[1] == 9  # killed by SIGKILL
        with d.client() as c:
            assert c.list() == [keep]
            assert cgroup_dirs(d, keep)
            c.destroy(keep)
    finally:
        try:
            os.kill(sleeper, 9)
            os.waitpid(sleeper, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        if stray.exists():
            stray.rmdir()


# -- bad values --------------------------------------------------------------------------------

BAD_VALUES = [
    ("mem", 0),
    ("mem", -5),
    ("mem", "lots"),
    ("mem", 1.5),
    ("cpu", -1),
    ("cpu", "x"),
    ("cpus", 0),
    ("cpus", -1),
    ("cpus", 1000),
    ("cpus", True),
    ("cpuset", "99"),
    ("cpuset", "1-0"),
    ("cpuset", "a"),
    ("cpuset", 1),
    ("pids", 0),
    ("pids", "20"),
    ("pids", [20]),
]


def test_bad_limit_values_are_refused_and_change_nothing(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"mem": 64 * MB, "cpus": 1, "pids": 30, "cpu": 300}})
    try:
        before = client.info(handle)["limits"]
        for name, value in BAD_VALUES:
            with pytest.raises(InvalidRequest) as caught:
                client.call("limit", handle, name, value)
            assert caught.value.message.startswith(f"container {handle}: {name} "), caught.value
            assert client.info(handle)["limits"] == before
    finally:
        client.destroy(handle)


@pytest.mark.parametrize(
    "limits, words",
    [
        ({"mem": 0}, "limits: mem 0 is not a positive number of bytes"),
        ({"cpus": "all"}, "limits: cpus 'all'"),
        ({"disk": 5}, "limits: unknown resource 'disk'"),
        ("64M", "limits: '64M' is not an object"),
    ],
)
def test_bad_create_limits_fail_before_anything_is_built(
    daemon: Daemon, client: Client, limits: Any, words: str
) -> None:
    handles = client.list()
    with pytest.raises(InvalidRequest, match=words):
        client.create({"limits": limits})
    assert client.list() == handles
    assert [d for d in cgroup_dirs(daemon) if d.name not in handles] == []


# -- info, devices and kill -------------------------------------------------------------------


def test_info_reports_limits_and_stats(daemon: Daemon, client: Client) -> None:
    handle = client.create({"limits": {"mem": 64 * MB, "pids": 40, "cpus": 1.5}})
    try:
        client.run(handle, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
        info = client.info(handle)
        assert info["limits"]["mem"] == 64 * MB
        assert info["limits"]["pids"] == 40
        assert info["limits"]["cpus"] == 1.5
        assert info["limits"]["cpu"] == 1024  # the default, read from the cgroup
        memory = info["memory_stat"]
        assert {"usage", "max_usage", "limit", "oom_count"} <= set(memory)
        assert 0 < memory["usage"] <= memory["max_usage"] <= 64 * MB
        assert memory["oom_count"] == 0
        # memory.stat under Warden's names, on v1 and v2 alike
        warden = ("rss", "cache", "mapped_file", "pgfault", "pgmajfault", "active_anon")
        for name in warden + tuple(f"total_{n}" for n in warden):
            assert isinstance(memory[name], int), name
        assert memory["total_pgfault"] > 0  # the job's shell faulted pages in
        cpu = info["cpu_stat"]
        assert cpu["usage"] > 1_000_000  # the loop took at least a millisecond
        # user and system time in ns (from ticks of 10 ms on v1): they add up to about the usage
        assert cpu["user"] + cpu["system"] > 0
        assert cpu["user"] + cpu["system"] <= cpu["usage"] + 50_000_000
        assert info["pids"] == {"current": 1, "max": 40}  # the init alone
    finally:
        client.destroy(handle)


def test_devices_cgroup_allows_only_the_container_nodes(daemon: Daemon, client: Client) -> None:
    """A host device bound into the container cannot be opened, even by a privileged job
    with the host's ids (its root is the host's, which the node's mode lets in): the
    devices cgroup (v1) or the device filter (v2) refuses it."""
    if "devices" not in cgroup_layout(daemon):
        pytest.skip("no devices controller, nor a kernel that loads cgroup device programs")
    handle = client.create(
        {
            "bind_mounts": [["/dev/loop-control", "/tmp/loop-control", {"mode": "rw"}]],
            "userns": False,
        }
    )
    try:
        if cgroup_layout(daemon)["devices"].version == 1:
            rules = set(
                (cgroup_of(daemon, handle, "devices") / "devices.list").read_text().split("\n")
            )
            assert rules - {""} == set(ALLOWED_DEVICES)
        status, out, err = client.run(
            handle,
            "head -c 4 /dev/urandom | wc -c; echo x > /dev/null; exec 3< /tmp/loop-control",
            privileged=True,
        )
        assert status != 0 and out.strip() == "4" and "Operation not permitted" in err
    finally:
        client.destroy(handle)


def test_stop_kills_every_process_but_the_init(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    try:
        job = client.spawn(
            handle,
            "i=0; while :; do sleep 5 & sleep 0.01; i=$((i+1)); [ $i = 20 ] && echo ready; done",
        )
        wait_for_output(daemon, handle, job)  # twenty sleeps and their shell, and more to come
        client.stop(handle, kill=True)
        assert client.info(handle)["state"] == "stopped"
        pid = init_pid(daemon, handle)
        assert Path(f"/proc/{pid}").exists()  # the init stays, so the container can be inspected
        procs = init_cgroup_of(daemon, handle, "pids") / "cgroup.procs"
        assert procs.read_text().split() == [str(pid)]
        assert client.info(handle)["pids"]["current"] == 1
    finally:
        client.destroy(handle)
