"""Run the real core (supervisor, containers, depot, bus, hooks) on fake plugins, in a
trio run whose clock is a ``MockClock``: time passes only when every task waits, and
at once, so timers are tested exactly and without sleeping. No root is needed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from supervisor.commands import CORE_COMMANDS
from supervisor.config import Config, ContainersSection, DaemonSection
from supervisor.depot import Depot
from supervisor.plugins import Hooks, plugin_manager
from supervisor.registry import CORE_CREATE_OPTIONS, Supervisor


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run *test* in trio with a clock that jumps to the next timer whenever all tasks wait."""
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


@asynccontextmanager
async def running_core(
    depot: Path, plugins: list[tuple[str, object]], **containers: Any
) -> AsyncIterator[Supervisor]:
    """A supervisor serving containers made by *plugins*, with ``[containers]`` *containers*;
    at the end the containers left are detached, as at a daemon's stop."""
    config = Config(daemon=DaemonSection(depot=depot), containers=ContainersSection(**containers))
    hooks = Hooks(plugin_manager(plugins), CORE_COMMANDS, CORE_CREATE_OPTIONS)
    store = Depot(depot)
    store.open()
    supervisor = Supervisor(config, hooks, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        try:
            yield supervisor
        finally:
            with trio.CancelScope(shield=True):
                await supervisor.detach_all()
                await hooks.shutdown()
            nursery.cancel_scope.cancel()


def left_in_depot(depot: Path, handle: str, state: str, **more: object) -> None:
    """A container's directory and record as a daemon that died left them."""
    store = Depot(depot)
    store.open()
    store.create(handle)
    options = {"handle": handle, "grace_time": None}
    store.save(handle, {"handle": handle, "state": state, "options": options, **more})
