"""The core's own logic, on fake plugins and a mock clock: grace timers, stop, rollback,
restore, and the state table as requests meet it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor.api import ContainerView, DaemonView, hookimpl
from supervisor.container import Container, State
from supervisor.errors import InvalidState, UnknownHandle
from supervisor.plugins import PluginError
from supervisor.registry import Supervisor
from supervisor.sandbox import JobRequest
from supervisor.server import unwrap
from tests.core.conftest import left_in_depot, run, running_core
from tests.core.fakes import Attached, FakeLaunch, Prepared


async def spawn(container: Container) -> int:
    """Start a job (the fake sandbox keeps it running until a signal ends it)."""
    job_id = container.allocate_job_id()
    await container.spawn(JobRequest(job_id, ("/bin/sh", "-c", "sleep 1000")), False)
    return job_id


# -- grace --------------------------------------------------------------------------------


def test_an_unreferenced_container_is_destroyed_when_its_grace_time_ends(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_core(tmp_path, [("launch", FakeLaunch([]))]) as supervisor:
            start = trio.current_time()
            container = await supervisor.create({"grace_time": 5})
            await container.finished.wait()
            assert trio.current_time() - start == pytest.approx(5)
            with pytest.raises(UnknownHandle):
                supervisor.get(container.handle)
            assert not (tmp_path / container.handle).exists()

    run(main)


def test_a_reference_cancels_the_timer_and_the_last_drop_starts_it_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_core(tmp_path, [("launch", FakeLaunch([]))]) as supervisor:
            container = await supervisor.create({"grace_time": 5})
            await trio.sleep(4)
            container.add_ref()
            container.add_ref()
            await trio.sleep(3600)
            assert supervisor.get(container.handle).state is State.ACTIVE
            container.drop_ref()
            await trio.sleep(3600)
            assert not container.finished.is_set()  # one reference is left
            dropped = trio.current_time()
            container.drop_ref()
            await container.finished.wait()
            assert trio.current_time() - dropped == pytest.approx(5)

    run(main)


def test_the_default_grace_time_comes_from_the_config_and_null_never_reaps(tmp_path: Path) -> None:
    async def main() -> None:
        plugins: list[tuple[str, object]] = [("launch", FakeLaunch([]))]
        async with running_core(tmp_path, plugins, grace_time=7) as supervisor:
            start = trio.current_time()
            kept = await supervisor.create({"grace_time": None})
            reaped = await supervisor.create({})
            await reaped.finished.wait()
            assert trio.current_time() - start == pytest.approx(7)
            await trio.sleep(10**6)
            assert supervisor.list() == [kept.handle]

    run(main)


# -- stop ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ignores_term", "kill", "seen", "seconds", "status"),
    [
        # TERM, polls while the job ignores it, the plugins' kill, then KILL at the timeout.
        (True, False, ["TERM", "0", "kill hook", "KILL"], 10, 128 + 9),
        # A job that ends on TERM: no wait.
        (False, False, ["TERM", "kill hook", "KILL"], 0, 128 + 15),
        # stop with kill: no TERM at all.
        (True, True, ["kill hook", "KILL"], 0, 128 + 9),
    ],
)
def test_stop_sends_term_then_kill_after_the_stop_timeout(
    tmp_path: Path, ignores_term: bool, kill: bool, seen: list[str], seconds: float, status: int
) -> None:
    launch = FakeLaunch([], ignores_term=ignores_term)

    async def main() -> None:
        async with running_core(tmp_path, [("launch", launch)], stop_timeout=10) as supervisor:
            container = await supervisor.create({"grace_time": None})
            job_id = await spawn(container)
            start = trio.current_time()
            await container.stop(kill=kill)
            signals = launch.sandboxes[container.handle].signals
            kinds = [
                what
                for i, (_, what) in enumerate(signals)
                if what != "0" or signals[i - 1][1] != "0"
            ]
            assert kinds == seen  # the polls ("0") counted once
            assert signals[-1][0] - start == pytest.approx(seconds)
            assert container.state is State.STOPPED
            assert container.job(job_id).status == status

    run(main)


# -- rollback and release -------------------------------------------------------------------


def test_a_failing_attach_releases_what_was_acquired_in_reverse_order(tmp_path: Path) -> None:
    log: list[str] = []
    plugins: list[tuple[str, object]] = [
        ("a", Prepared("a", log)),
        ("launch", FakeLaunch(log)),
        ("b", Prepared("b", log)),
        ("c", Attached("c", log)),
        ("d", Attached("d", log, fail=True)),
    ]

    async def main() -> None:
        async with running_core(tmp_path, plugins) as supervisor:
            with pytest.raises(RuntimeError, match="d refuses"):
                await supervisor.create({"handle": "h"})
            assert supervisor.containers == {}
            assert not (tmp_path / "h").exists()

    run(main)
    assert log == [
        "a acquired restoring=False",
        "b acquired restoring=False",
        "launch h restoring=False",
        "c acquired restoring=False",
        "d fails",
        "c released detaching=False",
        "kill h detaching=False",
        "b released detaching=False",
        "a released detaching=False",
    ]


def one_per_phase(log: list[str]) -> list[tuple[str, object]]:
    """A prepare resource ``a``, the launch, an attach resource ``c``, all writing to *log*."""
    return [("a", Prepared("a", log)), ("launch", FakeLaunch(log)), ("c", Attached("c", log))]


def test_destroy_releases_in_reverse_order_and_detach_releases_nothing_of_the_kernel(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    plugins = one_per_phase(log)

    async def main() -> None:
        async with running_core(tmp_path, plugins) as supervisor:
            await supervisor.destroy(await supervisor.create({"handle": "gone"}))
            await supervisor.create({"handle": "kept"})

    run(main)
    assert log == [
        "a acquired restoring=False",
        "launch gone restoring=False",
        "c acquired restoring=False",
        "c released detaching=False",
        "kill gone detaching=False",
        "a released detaching=False",
        "a acquired restoring=False",
        "launch kept restoring=False",
        "c acquired restoring=False",
        "c released detaching=True",
        "kill kept detaching=True",
        "a released detaching=True",
    ]


# -- restore --------------------------------------------------------------------------------


def test_a_half_made_container_is_restored_only_to_be_released(tmp_path: Path) -> None:
    left_in_depot(tmp_path, "half", "born")
    log: list[str] = []
    plugins = one_per_phase(log)

    async def main() -> None:
        async with running_core(tmp_path, plugins) as supervisor:
            await trio.testing.wait_all_tasks_blocked()  # its release runs in its own task
            assert supervisor.containers == {}
            assert not (tmp_path / "half").exists()

    run(main)
    assert log == [
        "a acquired restoring=True",
        "launch half restoring=True",
        "c acquired restoring=True",
        "c released detaching=False",
        "kill half detaching=False",
        "a released detaching=False",
    ]


def test_an_active_container_is_restored_with_the_status_of_its_ended_job(tmp_path: Path) -> None:
    left_in_depot(tmp_path, "kept", "active", next_job_id=5)
    (tmp_path / "kept" / "jobs" / "4").mkdir()
    (tmp_path / "kept" / "jobs" / "4" / "status").write_text("3\n")  # it ended while no daemon ran

    async def main() -> None:
        async with running_core(tmp_path, [("launch", FakeLaunch([]))]) as supervisor:
            container = supervisor.get("kept")
            assert container.state is State.ACTIVE
            assert container.job(4).status == 3
            assert await spawn(container) == 5  # ids go on from the record

    run(main)


# -- the state table, as requests meet it ------------------------------------------------------


def test_the_state_table(tmp_path: Path) -> None:
    seen: list[tuple[State, list[str]]] = []
    supervisors: list[Supervisor] = []

    def while_born(container: ContainerView) -> None:
        seen.append((container.state, supervisors[0].list()))
        with pytest.raises(UnknownHandle):
            supervisors[0].get(container.handle)  # invisible while born

    plugins: list[tuple[str, object]] = [
        ("born", Prepared("born", [], on_acquire=while_born)),
        ("launch", FakeLaunch([])),
    ]

    async def main() -> None:
        async with running_core(tmp_path, plugins) as supervisor:
            supervisors.append(supervisor)
            container = await supervisor.create({"grace_time": None})
            assert seen == [(State.BORN, [])]
            assert container.state is State.ACTIVE
            await spawn(container)
            await container.stop()
            assert container.state is State.STOPPED
            with pytest.raises(
                InvalidState, match=f"container {container.handle}: cannot spawn while stopped"
            ):
                await spawn(container)
            for operation in ("link", "stream", "stop", "destroy", "info", "limit", "copy"):
                container.require(operation)
            await container.stop()  # stopping a stopped container does nothing
            await container.start()
            assert container.state is State.ACTIVE
            with pytest.raises(
                InvalidState, match=f"container {container.handle}: cannot start while active"
            ):
                await container.start()
            await spawn(container)
            await container.stop()
            await supervisor.destroy(container)
            assert container.state is State.DESTROYED
            with pytest.raises(UnknownHandle):
                supervisor.get(container.handle)

    run(main)


def test_a_failing_startup_stops_the_daemon_and_detaches_the_restored_containers(
    tmp_path: Path,
) -> None:
    left_in_depot(tmp_path, "kept", "active")
    log: list[str] = []

    class Failing:
        @hookimpl
        def corral_startup(self) -> None:
            raise OSError("the host said no")

    plugins: list[tuple[str, object]] = [
        ("a", Prepared("a", log)),
        ("launch", FakeLaunch(log)),
        ("failing", Failing()),
    ]

    async def main() -> None:
        async with running_core(tmp_path, plugins):
            raise AssertionError("the core started")

    with pytest.raises(BaseException) as caught:
        run(main)
    assert isinstance(unwrap(caught.value), PluginError)
    assert str(unwrap(caught.value)) == "plugin failing: start-up failed: OSError: the host said no"
    assert log == [
        "a acquired restoring=True",
        "launch kept restoring=True",
        "kill kept detaching=True",
        "a released detaching=True",
    ]
    assert (tmp_path / "kept").is_dir()  # for the next daemon


def test_a_plugin_reads_the_daemon_and_its_task_ends_before_its_shutdown(tmp_path: Path) -> None:
    log: list[str] = []

    class Watcher:
        @hookimpl
        def corral_startup(self, daemon: DaemonView) -> None:
            self.daemon = daemon
            daemon.start_soon(self.task)

        async def task(self) -> None:
            log.append("running")
            try:
                await trio.sleep_forever()
            finally:
                log.append("cancelled")

        @hookimpl
        def corral_shutdown(self) -> None:
            log.append("shutdown")

    watcher = Watcher()

    async def main() -> None:
        async with running_core(tmp_path, [("launch", FakeLaunch([])), ("w", watcher)]) as s:
            container = await s.create({"handle": "seen", "grace_time": None})
            assert [c.handle for c in watcher.daemon.live()] == ["seen"]
            info = await watcher.daemon.info(container)
            assert (info["state"], info["job_ids"]) == ("active", [])
            s.requests.record("info", 0.001, failed=False)
            assert watcher.daemon.requests.commands["info"].count == 1

    run(main)
    assert log == ["running", "cancelled", "shutdown"]
