"""The Supervisor: every container by handle, and create, destroy and recover.

Each container's lifetime task runs in the supervisor's nursery. On shutdown the
containers are *detached*, not destroyed: plugins close what the daemon process
holds and leave the kernel resources in place for the next daemon to re-adopt.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from supervisor.api import ContainerView
from supervisor.config import Config
from supervisor.container import LIVE, Container, State
from supervisor.depot import Depot
from supervisor.errors import InvalidRequest, UnknownHandle
from supervisor.events import EventBus, StateChanged
from supervisor.plugins import Hooks
from supervisor.requests import RequestStats

HANDLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

log = structlog.get_logger()


def _handle(value: Any) -> str:
    if not isinstance(value, str) or not HANDLE_RE.match(value):
        raise InvalidRequest(
            f"handle: {value!r} is not 1-64 letters, digits, '_', '.' or '-' starting with a letter or digit"
        )
    return value


def _grace_time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequest(f"grace_time: {value!r} is not a number of seconds >= 0 or null")
    return float(value)


def _string_map(key: str) -> Any:
    def check(value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InvalidRequest(f"{key}: must be an object of strings")
        return value

    return check


def parse_env(value: Any, where: str) -> list[list[str]]:
    """``{"K": "V"}`` or ``["K=V", ...]`` as ``[[K, V], ...]``."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [tuple(v.split("=", 1)) if "=" in v else (v, "") for v in value]
    else:
        raise InvalidRequest(f"{where}: must be an object of strings or a list of 'NAME=VALUE'")
    env = []
    for name, val in items:
        if not isinstance(name, str) or not isinstance(val, str):
            raise InvalidRequest(f"{where}: {name!r} must map to a string")
        if not name or "=" in name or "\0" in name or "\0" in val:
            raise InvalidRequest(f"{where}: {name!r} is not a valid variable name")
        env.append([name, val])
    return env


CORE_CREATE_OPTIONS = {
    "handle": _handle,
    "grace_time": _grace_time,
    "properties": _string_map("properties"),
    "env": lambda value: parse_env(value, "env"),
}


class Supervisor:
    """Owner of all containers of this daemon."""

    def __init__(self, config: Config, hooks: Hooks, depot: Depot) -> None:
        self.config = config
        self.hooks = hooks
        self.depot = depot
        self.bus = EventBus()
        #: Requests served, by command (the server records them).
        self.requests = RequestStats()
        self.containers: dict[str, Container] = {}
        self.create_options = {**hooks.create_options, **CORE_CREATE_OPTIONS}
        #: Resources of the ``limit`` command, by name.
        self.limits = hooks.limit_resources
        depot.spare_directories = hooks.spare_directories
        self._nursery: trio.Nursery | None = None
        #: The plugins' tasks (start_soon): cancelled before the plugins shut down.
        self._tasks: trio.Nursery | None = None
        # Directories of destroyed containers, deleted one at a time after the reply,
        # each after the cleanups its plugins left (Container.after_destroy).
        self._trash_send, self._trash_receive = trio.open_memory_channel[
            tuple[Path, list[Callable[[], None]]]
        ](math.inf)
        self._trash_emptied = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the containers' tasks: recover the depot, then serve until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._empty_trash)
            await nursery.start(self._host_tasks)
            for path in self.depot.trash_left():
                self._trash_send.send_nowait((path, []))
            await self._recover()
            try:
                await self.hooks.startup(frozenset(self.containers), self)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.detach_all()  # the daemon stops; its containers live on
                raise
            task_status.started()
            await trio.sleep_forever()

    def get(self, handle: Any) -> Container:
        """The live container *handle*, or UnknownHandle."""
        container = self.containers.get(handle) if isinstance(handle, str) else None
        if container is None or container.state not in LIVE:
            raise UnknownHandle(f"unknown handle {handle!r}")
        return container

    def validate(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Check the create CONFIG; every key must be claimed by the core or a plugin."""
        options = {}
        for key, value in raw.items():
            check = self.create_options.get(key)
            if check is None:
                raise InvalidRequest(
                    f"create: unknown option {key!r} (known: {', '.join(sorted(self.create_options))})"
                )
            options[key] = check(value)
        return options

    async def create(self, raw: dict[str, Any]) -> Container:
        """Build a container; on any failure everything acquired is released."""
        options = self.validate(raw)
        handle = options.get("handle") or secrets.token_hex(6)
        if handle in self.containers:
            raise InvalidRequest(f"handle {handle!r} is already taken")
        options["handle"] = handle
        self.depot.create(handle)
        container = Container(self, handle, options)
        self.containers[handle] = container
        # Its first record is saved once it is active. A daemon that dies before
        # finds a directory without a record at start and removes it, and the
        # plugins' start-up removes what the container had (they look for it).
        assert self._nursery is not None
        await self._nursery.start(self._live, container, False)
        return container

    async def destroy(self, container: Container) -> None:
        """Stop the container and release everything it holds."""
        container.request_destroy()
        await container.finished.wait()

    async def detach_all(self) -> None:
        """Stop the plugins' tasks; let every container's task end without releasing kernel
        resources; then finish the clean-ups of the containers destroyed before (the
        plugins stop next)."""
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        for container in list(self.containers.values()):
            container.detaching = True
            container.request_destroy()
        for container in list(self.containers.values()):
            await container.finished.wait()
        self._trash_send.close()
        await self._trash_emptied.wait()

    # -- what plugins may use (supervisor.api.DaemonView) ------------------------------

    async def _host_tasks(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            task_status.started()
            await trio.sleep_forever()

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a plugin's task for the daemon's life; its failure is logged, not fatal."""
        assert self._tasks is not None

        async def supervised() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("plugin task failed", task=getattr(fn, "__qualname__", repr(fn)))

        self._tasks.start_soon(supervised)

    def live(self) -> list[Container]:
        """The containers clients see (active, paused or stopped)."""
        return [c for c in self.containers.values() if c.state in LIVE]

    async def info(self, view: ContainerView) -> dict[str, Any]:
        """The ``info`` payload of a live container: the core's fields, then the plugins'.

        Raises:
            UnknownHandle: the container is gone.
        """
        container = self.get(view.handle)
        payload: dict[str, Any] = {
            "state": str(container.state),
            "events": list(container.events),
            "host_ip": None,
            "container_ip": None,
            "container_path": str(container.path),
            "job_ids": sorted(j.id for j in container.jobs.values() if not j.exited.is_set()),
            "properties": container.options.get("properties", {}),
            "limits": {},
        }
        payload.update(await self.hooks.info(container))
        return payload

    async def stats(self, views: Sequence[ContainerView]) -> dict[str, dict[str, Any]]:
        """For each container of *views* still live: its ``state`` and ``job_ids`` as ``info``
        gives them, ``jobs_running`` (jobs whose exit the daemon has not heard of), and
        the plugins' figures (``corral_containers_stats``)."""
        found = (self.containers.get(view.handle) for view in views)
        containers = [c for c in found if c is not None and c.state in LIVE]
        figures = await self.hooks.stats(containers)
        out: dict[str, dict[str, Any]] = {}
        for container in containers:
            if container.state not in LIVE:  # destroyed while the plugins read
                continue
            jobs = container.jobs
            out[container.handle] = {
                "state": str(container.state),
                "job_ids": sorted(jobs),
                "jobs_running": sum(not job.exited.is_set() for job in jobs.values()),
                **figures.get(container.handle, {}),
            }
        return out

    def list(self, properties: dict[str, str] | None = None) -> list[str]:
        """Handles of the live containers whose properties include *properties*."""
        wanted = (properties or {}).items()
        return [c.handle for c in self.live() if wanted <= c.options.get("properties", {}).items()]

    async def _live(
        self, container: Container, restoring: bool, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await container.run(restoring, task_status=task_status)
        except Exception:
            if not container.ready:
                raise  # create fails with this error; everything was rolled back
            container.log.exception("container task failed; releasing what could be released")
        finally:
            self.containers.pop(container.handle, None)
            try:
                if not container.detaching:
                    last, container.state = container.state, State.DESTROYED
                    trash = self.depot.discard(container.handle)
                    cleanups = container.take_cleanups()
                    if trash is not None:
                        self._trash_send.send_nowait((trash, cleanups))
                    else:  # not moved: deleted in place, before the reply
                        with trio.CancelScope(shield=True):
                            await trio.to_thread.run_sync(
                                _clean_up, self.depot.path(container.handle), cleanups
                            )
                    container.log.info("container destroyed")
                    if container.ready:  # a failed create was never seen: no event
                        with trio.CancelScope(shield=True):
                            await self.bus.publish(
                                StateChanged(container.handle, str(last), str(State.DESTROYED))
                            )
            finally:
                container.finished.set()

    async def _empty_trash(self) -> None:
        async for path, cleanups in self._trash_receive:
            # A checkpoint first: the destroy's reply, woken with this task, goes out
            # before the worker thread competes with the event loop for the GIL.
            await trio.lowlevel.checkpoint()
            await trio.to_thread.run_sync(_clean_up, path, cleanups, self.depot)
        self._trash_emptied.set()

    async def _recover(self) -> None:
        """Re-adopt the containers in the depot; release the half-created ones."""
        assert self._nursery is not None
        for handle, record in self.depot.records():
            if record is None or not HANDLE_RE.match(handle):
                log.warning("depot entry without a record removed", handle=handle)
                self.depot.remove(handle)
                continue
            container = Container(self, handle, record.get("options", {}), record)
            self.containers[handle] = container
            if container.state is State.BORN:
                container.log.warning("half-created container found; releasing it")
                container.request_destroy()
            try:
                await self._nursery.start(self._live, container, True)
            except Exception:
                container.log.exception("container could not be restored; released")
            else:
                container.log.info("container restored", state=str(container.state))


def _clean_up(path: Path, cleanups: list[Callable[[], None]], depot: Depot | None = None) -> None:
    """Run a destroyed container's cleanups, then delete its directory or make it a
    spare of *depot* (never raises)."""
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception:
            log.exception("clean-up after destroy failed", path=str(path))
    if depot is None or not depot.recycle(path):
        shutil.rmtree(path, ignore_errors=True)
