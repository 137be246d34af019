"""Fakes for testing the core's own logic without root: a launch plugin whose sandbox has
no kernel behind it, and plugins that record the order of their resources.

Each fake writes what happens to it in a shared list of lines (the *log*), so a test
can assert the order across plugins. They stand in only for the plugins: the core
under test (supervisor, containers, jobs, depot, event bus, hooks) is the real one.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from supervisor.api import (
    ContainerView,
    InvalidRequest,
    JobExited,
    JobRequest,
    LaunchPlan,
    hookimpl,
)


class FakeSandbox:
    """A sandbox whose jobs are entries of a table; signals end them (or not)."""

    pid = 4242

    def __init__(self, container: ContainerView, ignores_term: bool, frozen: bool = False) -> None:
        self.container = container
        self.ignores_term = ignores_term
        #: A frozen init answers no request.
        self.frozen = frozen
        self.alive = True
        #: Job id -> whether its leader runs.
        self.jobs: dict[int, bool] = {}
        #: ``(time, what)`` of every ``signal_all`` (``TERM``, ``KILL``, ``0``) and of the
        #: plugins' kill hook (``kill hook``), in order.
        self.signals: list[tuple[float, str]] = []

    async def spawn(
        self, request: JobRequest, stdout: int, stderr: int, status: int, join: tuple[int, ...] = ()
    ) -> None:
        self.jobs[request.job_id] = True

    async def end(self, job_id: int, status: int) -> None:
        """The job's leader exits with *status* (reported as the init would)."""
        if self.jobs.get(job_id):
            self.jobs[job_id] = False
            await self.container.publish(JobExited(self.container.handle, job_id, status))

    async def signal_job(self, job_id: int, signum: int, pid: int | None = None) -> bool:
        running = bool(self.jobs.get(job_id))
        await self.end(job_id, 128 + signum)
        return running

    async def job_input(self, job_id: int) -> int:
        raise InvalidRequest(f"job {job_id} has no stdin")

    async def close_input(self, job_id: int) -> None:
        raise InvalidRequest(f"job {job_id} has no stdin")

    async def signal_all(self, signum: int) -> bool:
        name = signal.Signals(signum).name.removeprefix("SIG") if signum else "0"
        self.signals.append((trio.current_time(), name))
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and not self.ignores_term):
            for job_id in list(self.jobs):
                await self.end(job_id, 128 + signum)
        return any(self.jobs.values())

    def terminate(self) -> None:
        self.alive = False

    async def running_jobs(self) -> set[int]:
        if self.frozen:
            raise AssertionError("a frozen init was asked for its jobs")
        return {job_id for job_id, running in self.jobs.items() if running}

    async def configure_interface(
        self, name: str, address: str, prefixlen: int, gateway: str | None
    ) -> None:
        pass


class FakeLaunch:
    """The one launch plugin: a :class:`FakeSandbox` per container, recorded in *log*."""

    def __init__(self, log: list[str], ignores_term: bool = False, frozen: bool = False) -> None:
        self.log = log
        self.ignores_term = ignores_term
        self.frozen = frozen
        self.sandboxes: dict[str, FakeSandbox] = {}

    @hookimpl
    def corral_container_launch(
        self, container: ContainerView, restoring: bool
    ) -> AbstractAsyncContextManager[FakeSandbox]:
        return self._sandbox(container, restoring)

    @asynccontextmanager
    async def _sandbox(
        self, container: ContainerView, restoring: bool
    ) -> AsyncIterator[FakeSandbox]:
        self.log.append(f"launch {container.handle} restoring={restoring}")
        sandbox = FakeSandbox(container, self.ignores_term, self.frozen)
        self.sandboxes[container.handle] = sandbox
        try:
            yield sandbox
        finally:
            sandbox.alive = False
            self.log.append(f"kill {container.handle} detaching={container.detaching}")

    @hookimpl
    def corral_container_kill(self, container: ContainerView) -> None:
        self.sandboxes[container.handle].signals.append((trio.current_time(), "kill hook"))


class Resource:
    """A plugin holding one resource per container, in the prepare or the attach phase;
    *on_acquire* (if any) is called with the container as the resource is acquired."""

    def __init__(
        self,
        name: str,
        log: list[str],
        fail: bool = False,
        on_acquire: Callable[[ContainerView], None] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.on_acquire = on_acquire

    @asynccontextmanager
    async def _held(self, container: ContainerView, restoring: bool) -> AsyncIterator[None]:
        if self.fail:
            self.log.append(f"{self.name} fails")
            raise RuntimeError(f"{self.name} refuses")
        self.log.append(f"{self.name} acquired restoring={restoring}")
        if self.on_acquire is not None:
            self.on_acquire(container)
        try:
            yield
        finally:
            self.log.append(f"{self.name} released detaching={container.detaching}")


class Prepared(Resource):
    """A resource of the prepare phase."""

    @hookimpl
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._held(container, restoring)


class Attached(Resource):
    """A resource of the attach phase."""

    @hookimpl
    def corral_container_attach(
        self, container: ContainerView, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._held(container, restoring)


class Freezer:
    """A plugin that freezes containers: it records each freeze and thaw in *log*."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl
    def corral_container_freeze(self, container: ContainerView, frozen: bool) -> Awaitable[None]:
        return self._freeze(container, frozen)

    async def _freeze(self, container: ContainerView, frozen: bool) -> None:
        self.log.append(f"{'freeze' if frozen else 'thaw'} {container.handle}")
        sandbox = container.sandbox
        if isinstance(sandbox, FakeSandbox):
            sandbox.frozen = frozen
