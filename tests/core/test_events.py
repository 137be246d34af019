"""The bus's client subscriptions (``events``): filters, drops, the end; and pause on fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor.container import State
from supervisor.errors import InvalidRequest
from supervisor.events import EventBus, JobStarted, LimitChanged, StateChanged, Watch
from tests.core.conftest import left_in_depot, run, running_core
from tests.core.fakes import FakeLaunch, Freezer


def read(line: bytes | None) -> list[object]:
    assert line is not None
    return list(json.loads(line))


def test_a_watch_keeps_what_it_asked_for() -> None:
    async def main() -> None:
        bus = EventBus()
        async with bus.watch(handles=["a"], kinds=["job_started"]) as watch:
            await bus.publish(JobStarted("b", 1))  # another container
            await bus.publish(LimitChanged("a", "pids", 5))  # another kind
            await bus.publish(JobStarted("a", 2))
            kind, event = read(await watch.next())
            assert kind == "event" and isinstance(event, dict)
            assert (event["kind"], event["handle"], event["job_id"]) == ("job_started", "a", 2)

    run(main)


def test_a_full_watch_counts_drops_and_says_so_where_they_were() -> None:
    async def main() -> None:
        bus = EventBus()
        async with bus.watch(limit=3) as watch:
            for job_id in range(1, 9):
                await bus.publish(JobStarted("a", job_id))  # 3 kept, 5 dropped
            assert [read(await watch.next())[1]["job_id"] for _ in range(3)] == [1, 2, 3]  # type: ignore[index]
            await bus.publish(JobStarted("a", 9))  # room again: after the marker
            assert read(await watch.next()) == ["dropped", 5]
            assert read(await watch.next())[1]["job_id"] == 9  # type: ignore[index]
            for job_id in range(10, 15):
                await bus.publish(JobStarted("a", job_id))
            for _ in range(3):
                await watch.next()
            assert read(await watch.next()) == ["dropped", 2]  # nothing after: the marker alone

    run(main)


def test_a_watch_of_handles_ends_after_their_destruction() -> None:
    async def main() -> None:
        bus = EventBus()
        async with bus.watch(handles=["a", "b"]) as watch:
            await bus.publish(StateChanged("a", "stopped", "destroyed"))
            assert read(await watch.next())[1]["new"] == "destroyed"  # type: ignore[index]
            await bus.publish(StateChanged("b", "stopped", "destroyed"))
            assert read(await watch.next())[1]["handle"] == "b"  # type: ignore[index]
            assert await watch.next() is None
        async with bus.watch() as everything:  # all containers: never ends by itself
            await bus.publish(StateChanged("a", "stopped", "destroyed"))
            await everything.next()
            with trio.move_on_after(1) as waited:
                await everything.next()
            assert waited.cancelled_caught

    run(main)


def test_a_watch_never_waits_for_its_reader() -> None:
    watch = Watch(None, None, limit=2)
    for job_id in range(1000):
        watch.see(JobStarted("a", job_id), lambda: b"x\n")  # synchronous: it cannot block
    assert not watch.finished


# -- pause, on fakes --------------------------------------------------------------------------


def test_pause_freezes_and_stop_or_destroy_thaw_first(tmp_path: Path) -> None:
    log: list[str] = []
    plugins: list[tuple[str, object]] = [("launch", FakeLaunch(log)), ("freezer", Freezer(log))]

    async def main() -> None:
        async with running_core(tmp_path, plugins) as supervisor:
            stopped = await supervisor.create({"handle": "s", "grace_time": None})
            await stopped.pause()
            assert stopped.state is State.PAUSED
            await stopped.stop()
            assert stopped.state is State.STOPPED
            destroyed = await supervisor.create({"handle": "d", "grace_time": None})
            await destroyed.pause()
            await supervisor.destroy(destroyed)

    run(main)
    assert [line for line in log if not line.startswith("launch")] == [
        "freeze s",
        "thaw s",
        "freeze d",
        "thaw d",
        "kill d detaching=False",
        "kill s detaching=True",
    ]


def test_pause_without_a_freezer_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_core(tmp_path, [("launch", FakeLaunch([]))]) as supervisor:
            container = await supervisor.create({"grace_time": None})
            with pytest.raises(InvalidRequest, match="cannot pause: no plugin here can freeze it"):
                await container.pause()
            assert container.state is State.ACTIVE

    run(main)


def test_a_paused_container_is_restored_paused_without_asking_its_frozen_init(
    tmp_path: Path,
) -> None:
    left_in_depot(tmp_path, "p", "paused", next_job_id=3)
    for job_id, status in ((1, "0\n"), (2, "")):  # 1 ended before the pause; 2 is frozen
        (tmp_path / "p" / "jobs" / str(job_id)).mkdir()
        (tmp_path / "p" / "jobs" / str(job_id) / "status").write_text(status)
    launch = FakeLaunch([], frozen=True)  # its running_jobs fails: a frozen init cannot answer

    async def main() -> None:
        async with running_core(tmp_path, [("launch", launch), ("freezer", Freezer([]))]) as s:
            container = s.get("p")
            assert container.state is State.PAUSED
            assert container.job(1).exited.is_set() and not container.job(2).exited.is_set()
            await container.resume()
            assert container.state is State.ACTIVE

    run(main)
