"""The Container: its state machine, its lifetime task, its jobs and references.

Each container lives in one trio task (:meth:`Container.run`) that enters the
plugins' resources in an exit stack, serves until destroy is requested (or the
grace timer fires), then unwinds the stack. Keeping acquisition and release in
one task is what lets plugins hold nurseries and cancel scopes in their
context managers.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import math
import os
import signal
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from supervisor.errors import InvalidRequest, InvalidState, UnknownJob
from supervisor.events import (
    Event,
    GraceExpired,
    JobExited,
    JobStarted,
    OutOfMemory,
    OutputCut,
    SandboxExited,
    StateChanged,
)
from supervisor.jobs import Job, JobLimits
from supervisor.sandbox import JobDefaults, JobRequest, LaunchPlan, Sandbox
from supervisor.stash import Stash

if TYPE_CHECKING:
    from supervisor.registry import Supervisor


T = TypeVar("T")


class State(enum.StrEnum):
    """Lifecycle states of a container (see docs/protocol.md)."""

    BORN = "born"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    DESTROYED = "destroyed"


#: The only legal state changes.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.BORN: frozenset({State.ACTIVE, State.DESTROYED}),
    State.ACTIVE: frozenset({State.PAUSED, State.STOPPED}),
    State.PAUSED: frozenset({State.ACTIVE, State.STOPPED}),
    State.STOPPED: frozenset({State.ACTIVE, State.DESTROYED}),
    State.DESTROYED: frozenset(),
}

#: The states of a container clients see, whether its processes run or not.
LIVE = frozenset({State.ACTIVE, State.PAUSED, State.STOPPED})

#: The states in which each container operation is allowed.
ALLOWED: dict[str, frozenset[State]] = {
    "spawn": frozenset({State.ACTIVE}),
    "signal": frozenset({State.ACTIVE}),  # a paused init answers nothing
    "stdin": frozenset({State.ACTIVE}),
    "resize": frozenset({State.ACTIVE}),
    "pause": frozenset({State.ACTIVE}),
    "resume": frozenset({State.PAUSED}),
    "start": frozenset({State.STOPPED}),
    "link": LIVE,
    "stream": LIVE,
    "stop": LIVE,
    "destroy": LIVE,
    "info": LIVE | {State.BORN},
    "limit": LIVE,
    "copy": LIVE,
    "net in": frozenset({State.ACTIVE, State.PAUSED}),
    "net out": frozenset({State.ACTIVE, State.PAUSED}),
}

#: How often a stopping container is asked whether processes are left.
STOP_POLL = 0.02
#: Job ids recorded ahead at a time (a restart skips at most this many).
JOB_ID_BLOCK = 64
#: How often a job whose leader ended is checked for processes left (for its timeout).
JOB_EMPTY_POLL = 0.1
#: The shortest wait between two looks at a job's CPU time (for its cpu_time).
CPU_POLL_MIN = 0.005
#: How long a job's processes are killed again and again (forks racing the kill).
JOB_KILL_TIMEOUT = 10.0


class Container:
    """One container: its state, jobs and references; plugins see it as a
    :class:`~supervisor.api.ContainerView`."""

    def __init__(
        self,
        supervisor: Supervisor,
        handle: str,
        options: dict[str, Any],
        record: dict[str, Any] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.handle = handle
        #: The normalized ``create`` CONFIG (core keys and plugin keys).
        self.options = options
        #: Depot directory of this container.
        self.path: Path = supervisor.depot.path(handle)
        self.log = structlog.get_logger().bind(handle=handle)
        self.sandbox: Sandbox | None = None
        #: What the prepare plugins set for every job (an image's Env, WorkingDir, User).
        self.job_defaults = JobDefaults()
        #: The plugins' in-memory data for this container, by key.
        self.stash = Stash()
        self.jobs: dict[int, Job] = {}
        restored = record is not None
        record = record or {}
        self.state = State(record.get("state", State.BORN))
        self.events: list[str] = list(record.get("events", []))
        self.next_job_id: int = record.get("next_job_id", 1)
        # The record holds a bound, not the next id: ids below it may have been handed
        # out, so a restored container goes on from there. Saved once per block of ids
        # (a new container's first record, written once it is active, holds the first).
        self._job_ids_recorded = self.next_job_id + (0 if restored else JOB_ID_BLOCK)
        self._plugin_state: dict[str, dict[str, Any]] = record.get("plugins", {})
        self._refs = 0
        self._grace_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._destroy_requested = trio.Event()
        #: Set by the registry once everything of the container is gone, its directory too.
        self.finished = trio.Event()
        #: True once the container's resources are all acquired (create succeeded).
        self.ready = False
        #: True when the daemon shuts down: plugins then release only what the
        #: daemon process holds and leave the container running for the next daemon.
        self.detaching = False
        self._stopping = trio.Lock()
        self._after_destroy: list[Callable[[], None]] = []

    # -- plugin-facing API ---------------------------------------------------

    def plugin_state(self, plugin: str) -> dict[str, Any]:
        """The persisted scratch space of *plugin* for this container (call :meth:`save` after changing it)."""
        return self._plugin_state.setdefault(plugin, {})

    def after_destroy(self, cleanup: Callable[[], None]) -> None:
        """Have the core run the blocking *cleanup* in a worker thread once destroy has
        replied, before it deletes the container's directory: for a last reference to a
        kernel object whose teardown waits for the disk (see the isolation plugin)."""
        self._after_destroy.append(cleanup)

    def take_cleanups(self) -> list[Callable[[], None]]:
        """The cleanups registered with :meth:`after_destroy` (for the core), once."""
        cleanups, self._after_destroy = self._after_destroy, []
        return cleanups

    def save(self) -> None:
        """Write the container's record to the depot, atomically."""
        self.supervisor.depot.save(self.handle, self.to_record())

    async def publish(self, event: Event) -> None:
        """Put an event about this container on the bus."""
        await self.supervisor.bus.publish(event)

    @property
    def grace_time(self) -> float | None:
        return self.options.get("grace_time", self.supervisor.config.containers.grace_time)

    def to_record(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "state": str(self.state),
            "options": self.options,
            "events": self.events,
            "next_job_id": self._job_ids_recorded,
            "plugins": self._plugin_state,
        }

    # -- state machine -------------------------------------------------------

    def require(self, operation: str) -> None:
        """Raise InvalidState unless *operation* is allowed in the current state."""
        if self.state not in ALLOWED[operation]:
            raise InvalidState(f"container {self.handle}: cannot {operation} while {self.state}")

    async def _move(self, new: State, save: bool = True) -> None:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise InvalidState(f"container {self.handle}: cannot go from {old} to {new}")
        self.state = new
        if save and new is not State.DESTROYED:
            self.save()
        self.log.info("state changed", old=str(old), new=str(new))
        await self.publish(StateChanged(self.handle, str(old), str(new)))

    # -- lifetime ------------------------------------------------------------

    async def run(
        self, restoring: bool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Acquire the resources, report ready, serve until destroyed, then release them."""
        structlog.contextvars.clear_contextvars()  # not the creating request's command
        hooks = self.supervisor.hooks
        try:
            async with (
                self.supervisor.bus.subscribe(self.handle) as events,
                AsyncExitStack() as stack,
            ):
                plan = LaunchPlan(root_dir=self.path / "rootfs")
                clock = [time.perf_counter()]
                # Plugins save what they must find again after a crash themselves.
                for resource in hooks.prepare(self, plan, restoring):
                    await stack.enter_async_context(resource)
                self.job_defaults = plan.job_defaults
                clock.append(time.perf_counter())
                self.sandbox = await stack.enter_async_context(hooks.launch(self, plan, restoring))
                clock.append(time.perf_counter())
                for resource in hooks.attach(self, restoring):
                    await stack.enter_async_context(resource)
                clock.append(time.perf_counter())
                self.log.info(
                    "container restored" if restoring else "container built",
                    **{
                        f"{phase}_ms": round((end - start) * 1000, 2)
                        for phase, start, end in zip(
                            ("prepare", "launch", "attach"), clock, clock[1:], strict=False
                        )
                    },
                )
                if restoring:
                    await self._restore_jobs()
                elif self.state is State.BORN:
                    await self._move(State.ACTIVE)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        await self._serve(events, restoring, task_status)
                    finally:
                        self._nursery = None  # closed to new tasks from here on
                        nursery.cancel_scope.cancel()
                self.sandbox = None
        finally:
            for job in self.jobs.values():
                job.finish(None)

    async def _serve(
        self,
        events: trio.MemoryReceiveChannel[Event],
        restoring: bool,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Run the container's background tasks until destroy is requested."""
        self._start_task(self._consume, events)
        for job in self.jobs.values():
            if job.limits and job.group is not None and not job.group.empty():
                self._start_task(self._enforce_limits, job)
        if restoring and self.sandbox is not None and not self.sandbox.alive:
            await self._sandbox_gone()
        self.ready = True
        task_status.started()
        if self._refs == 0:
            self._start_grace_timer()
        await self._destroy_requested.wait()
        if not self.detaching:
            if self.state is State.PAUSED:
                # A frozen init would take its SIGKILL only once thawed (v1).
                with trio.CancelScope(shield=True):
                    await self.supervisor.hooks.freeze(self, False)
            # No TERM, no waiting: killing the init kills, at once, every process
            # of its pid namespace (forks included); the kernel's teardown runs
            # while the plugins release the rest.
            if self.sandbox is not None:
                self.sandbox.terminate()
            if self.state in (State.ACTIVE, State.PAUSED):
                # Not saved: the record goes with the container. A daemon that dies
                # before finds the init gone at its start, and stops the container.
                await self._move(State.STOPPED, save=False)

    def _start_task(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run *fn* in the container's nursery; its failure is logged, never fatal to the container."""
        if self._nursery is None:
            return

        async def supervised() -> None:
            try:
                await fn(*args)
            except Exception:
                self.log.exception("container task failed", task=fn.__name__)

        self._nursery.start_soon(supervised)

    def request_destroy(self) -> None:
        """Ask the lifetime task to release everything; see :meth:`run`."""
        self._destroy_requested.set()

    async def _consume(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            if isinstance(event, JobExited):
                job = self.jobs.get(event.job_id)
                if job is not None:
                    job.finish(event.status)
            elif isinstance(event, OutputCut):
                job = self.jobs.get(event.job_id)
                if job is not None:
                    job.cut.add(event.stream)
                    # The init killed the job's process group at the cut (a background
                    # child's write may come after the leader's exit); the rest of the
                    # job (other groups, a terminal's shell jobs) goes with its cgroup.
                    job.mark_killed("output_limit", after_exit=True)
                    if job.group is not None and not job.group.empty():
                        self._start_task(self._kill_job, job)
                limit = self.supervisor.config.containers.output_limit
                self.log.warning(
                    "job output over limit", job_id=event.job_id, stream=event.stream, limit=limit
                )
                await self._record_event("command exceeded maximum output")
            elif isinstance(event, OutOfMemory):
                await self._record_event("out of memory")
                if self.state is State.ACTIVE:
                    self._mark_running("oom")
                    self._start_task(self.stop, True)
            elif isinstance(event, SandboxExited):
                await self._sandbox_gone()

    async def _sandbox_gone(self) -> None:
        await self._record_event("container init exited")
        for job in self.jobs.values():
            job.finish(job.read_status_file())
        if self.state in (State.ACTIVE, State.PAUSED):
            await self._move(State.STOPPED)

    async def _record_event(self, text: str) -> None:
        if text not in self.events:
            self.events.append(text)
            self.save()
        self.log.warning("container event", text=text)

    # -- references and grace ---------------------------------------------------

    def add_ref(self) -> None:
        """A connection started referencing this container: cancel the grace timer."""
        self._refs += 1
        if self._grace_scope is not None:
            self._grace_scope.cancel()
            self._grace_scope = None

    def drop_ref(self) -> None:
        """A referencing connection closed; the last one starts the grace timer."""
        self._refs -= 1
        if self._refs == 0:
            self._start_grace_timer()

    def _start_grace_timer(self) -> None:
        grace = self.grace_time
        if grace is None or self._nursery is None or self._destroy_requested.is_set():
            return
        scope = trio.CancelScope()
        self._grace_scope = scope

        async def expire() -> None:
            with scope:
                await trio.sleep(grace)
                self.log.info("grace time expired", grace_time=grace)
                await self.publish(GraceExpired(self.handle, grace))
                self.request_destroy()

        self._start_task(expire)

    # -- jobs ----------------------------------------------------------------

    def _job_dir(self, job_id: int) -> Path:
        return self.path / "jobs" / str(job_id)

    async def spawn(
        self, request: JobRequest, discard_output: bool, limits: JobLimits | None = None
    ) -> Job:
        """Start a job; it is recorded before it can exit so no exit is missed."""
        self.require("spawn")
        assert self.sandbox is not None and self._nursery is not None
        limits = limits or JobLimits()
        job = Job(
            request.job_id,
            self._job_dir(request.job_id),
            discard_output,
            limits=limits,
            stdin=request.stdin or request.tty is not None,
            tty=request.tty,
            log_tag=request.log_tag,
        )
        # The sandbox keeps each stream to the cap, whichever process of the job writes
        # (a terminal job's output too).
        limit = None if discard_output else self.supervisor.config.containers.output_limit
        request = dataclasses.replace(request, output_limit=limit)
        job.group = self.supervisor.hooks.job_group(self, job.id, True)
        if job.group is None and limits:
            raise InvalidRequest(
                f"container {self.handle}: timeout and cpu_time need a cgroup per job, "
                "which no plugin here makes"
            )
        fds: list[int] = []
        try:
            job.dir.mkdir(mode=0o700)
            if discard_output:
                (job.dir / "discard").touch()
            job.save_facts()
            for name in ("stdout", "stderr"):
                target = os.devnull if discard_output else job.file(name)
                fds.append(
                    os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                )
            fds.append(os.open(job.dir / "status", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.jobs[job.id] = job
            join = job.group.join_fds if job.group is not None else ()
            await self.sandbox.spawn(request, fds[0], fds[1], fds[2], join)
        except BaseException:
            self.jobs.pop(job.id, None)
            job.remove_files()
            if job.group is not None:
                job.group.close()
                job.group.remove()  # the job never ran: nothing is in it
            raise
        finally:
            for fd in fds:
                os.close(fd)
        if job.group is not None:
            job.group.close()
        if limits:
            self._start_task(self._enforce_limits, job)
        await self.publish(JobStarted(self.handle, job.id, job.log_tag))
        return job

    def allocate_job_id(self) -> int:
        """A job id never handed out before in this container, even across daemon restarts."""
        job_id = self.next_job_id
        self.next_job_id += 1
        if self.next_job_id > self._job_ids_recorded:
            self._job_ids_recorded = self.next_job_id + JOB_ID_BLOCK
            self.save()
        return job_id

    def job(self, job_id: int) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(f"container {self.handle}: no job {job_id}") from None

    async def link(
        self, job: Job, report: Callable[[Job], T] | None = None
    ) -> tuple[tuple[int | None, bytes | None, bytes | None], T | None]:
        """Wait for the job to end and return its result; the job is then forgotten.

        *report* is called with the job before its files and cgroup go (for what
        link reports on request: how it ended, its usage); its result comes second.
        """
        result = await job.collect(self.supervisor.config.containers.output_limit)
        extra = report(job) if report is not None else None
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
            # Not awaited: the reply need not wait for the disk. Nor does destroy,
            # whose removal of the container's directory covers these files.
            self._start_task(partial(trio.to_thread.run_sync, job.forget, abandon_on_cancel=True))
        return result, extra

    async def _enforce_limits(self, job: Job) -> None:
        """Kill every process of the job once it passes its ``timeout`` or ``cpu_time``.

        The timeout counts from the spawn (also across a daemon restart) and holds
        for what the job started too: processes left after the leader ended are
        killed at the deadline. CPU time is read from the job's cgroup, no more often
        than it could grow to the limit with every core busy.
        """
        group = job.group
        assert group is not None
        timeout, cpu_time = job.limits.timeout, job.limits.cpu_time
        deadline = (
            trio.current_time() + job.started + timeout - time.time()
            if timeout is not None
            else math.inf
        )
        cores = os.cpu_count() or 1
        while True:
            wait = deadline - trio.current_time()
            if wait <= 0:
                reason = "timeout"
                break
            if cpu_time is not None:
                used = group.cpu_seconds()
                if used is not None and used >= cpu_time:
                    reason = "cpu_limit"
                    break
                wait = min(wait, max(CPU_POLL_MIN, (cpu_time - (used or 0.0)) / cores))
            if job.exited.is_set():
                if group.empty():
                    return
                await trio.sleep(min(wait, JOB_EMPTY_POLL))
            else:
                with trio.move_on_after(wait):
                    await job.exited.wait()
        self.log.info("job limit reached", job_id=job.id, log_tag=job.log_tag, reason=reason)
        job.mark_killed(reason)
        await self._kill_job(job)

    async def _kill_job(self, job: Job) -> None:
        """SIGKILL every process in the job's cgroup until none is left."""
        assert job.group is not None
        with trio.move_on_after(JOB_KILL_TIMEOUT):
            while not job.group.empty():
                job.group.kill()
                await trio.sleep(STOP_POLL)
            return
        self.log.error("job processes outlived their kill", job_id=job.id)

    async def _input(self, job: Job) -> int:
        """The daemon's fd of the job's input, asked of the sandbox once (again after a restart)."""
        if not job.stdin:
            raise InvalidRequest(
                f"container {self.handle}: job {job.id} has no stdin (spawn it with stdin or tty)"
            )
        if job.exited.is_set() or self.sandbox is None:
            raise InvalidState(f"container {self.handle}: job {job.id} has ended")
        if job.stdin_closed:
            raise InvalidState(f"container {self.handle}: job {job.id}: its stdin is closed")
        if job.input_fd is None:
            fd = await self.sandbox.job_input(job.id)
            if job.exited.is_set():  # it ended while the sandbox answered
                os.close(fd)
                raise InvalidState(f"container {self.handle}: job {job.id} has ended")
            os.set_blocking(fd, False)
            job.input_fd = fd
        return job.input_fd

    async def write_stdin(self, job: Job, data: bytes | None) -> None:
        """Write *data* to the job's stdin as it reads it (None: EOF).

        The writer waits while the job does not read (its pipe or terminal is full);
        the daemon holds nothing but the request's own bytes. On a terminal, EOF is
        the terminal's EOF character (^D), as a user types it.

        Raises:
            InvalidRequest: the job has no stdin.
            InvalidState: it has ended, or its stdin is closed.
        """
        self.require("stdin")
        async with job.writing:
            fd = await self._input(job)
            if data is None and job.tty is None:
                job.stdin_closed = True
                job.close_input()
                assert self.sandbox is not None
                await self.sandbox.close_input(job.id)
                return
            view = memoryview(b"\x04" if data is None else data)
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    try:
                        await trio.lowlevel.wait_writable(fd)
                    except trio.ClosedResourceError:
                        pass  # it ended: closed by finish, told below
                except OSError:  # EPIPE: no reader left; EIO: the terminal is gone
                    raise InvalidState(
                        f"container {self.handle}: job {job.id} no longer reads its stdin"
                    ) from None
                if job.input_fd is None:  # it ended meanwhile
                    raise InvalidState(f"container {self.handle}: job {job.id} has ended")

    async def resize(self, job: Job, rows: int, cols: int) -> None:
        """Set the size of the job's terminal (its foreground processes get SIGWINCH)."""
        self.require("resize")
        if job.tty is None:
            raise InvalidRequest(f"container {self.handle}: job {job.id} has no terminal")
        fd = await self._input(job)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _mark_running(self, reason: str) -> None:
        for job in self.jobs.values():
            job.mark_killed(reason)

    async def signal(self, job: Job, signum: int, pid: int | None = None) -> None:
        """Send *signum* to the job's process group, or to its process *pid*.

        Raises:
            InvalidState: the job has ended (or the container is not running).
            InvalidRequest: *pid* is no process of the job.
        """
        self.require("signal")
        if job.exited.is_set() or self.sandbox is None:
            raise InvalidState(f"container {self.handle}: job {job.id} has ended")
        if not await self.sandbox.signal_job(job.id, signum, pid):
            raise InvalidState(f"container {self.handle}: job {job.id} has ended")

    async def _restore_jobs(self) -> None:
        """Rebuild the job table from the depot after a restart."""
        running: set[int] | None = set()
        if self.sandbox is not None and self.sandbox.alive:
            # A frozen init cannot answer; a frozen job cannot end, nor its status be written.
            running = None if self.state is State.PAUSED else await self.sandbox.running_jobs()
        for entry in sorted((self.path / "jobs").iterdir()):
            if not entry.name.isdigit():
                continue
            job = Job(int(entry.name), entry, (entry / "discard").exists())
            job.read_killed_by()
            job.read_facts()
            job.group = self.supervisor.hooks.job_group(self, job.id, False)
            self.jobs[job.id] = job
            status = job.read_status_file()
            if (job.id not in running) if running is not None else status is not None:
                job.finish(status)

    # -- stop ------------------------------------------------------------------

    def stop_soon(self, kill: bool = False, timeout: float | None = None) -> None:
        """Stop in the background (``stop`` with ``background``)."""
        self._start_task(self.stop, kill, timeout)

    async def pause(self) -> None:
        """Freeze every process of the container (see ``corral_container_freeze``)."""
        async with self._stopping:
            self.require("pause")
            try:
                frozen = await self.supervisor.hooks.freeze(self, True)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.supervisor.hooks.freeze(self, False)
                raise
            if not frozen:
                raise InvalidRequest(
                    f"container {self.handle}: cannot pause: no plugin here can freeze it"
                )
            await self._move(State.PAUSED)

    async def resume(self) -> None:
        """Let the processes of a paused container run again."""
        async with self._stopping:
            self.require("resume")
            await self.supervisor.hooks.freeze(self, False)
            await self._move(State.ACTIVE)

    async def start(self) -> None:
        """Make a stopped container active again: its init lives on, so jobs can be spawned
        in the same root, cgroups and network."""
        async with self._stopping:
            self.require("start")
            if self.sandbox is None or not self.sandbox.alive:
                raise InvalidState(
                    f"container {self.handle}: cannot start: its init is gone (destroy it)"
                )
            await self._move(State.ACTIVE)

    async def stop(self, kill: bool = False, timeout: float | None = None) -> None:
        """End every process of the container: TERM, then KILL after *timeout* seconds
        (default ``[containers] stop_timeout``)."""
        if self.state is State.BORN:
            return
        async with self._stopping:
            self._mark_running("stop")
            if self.state is State.PAUSED:
                await self.supervisor.hooks.freeze(self, False)  # frozen, none would hear TERM
            sandbox = self.sandbox
            if sandbox is not None and sandbox.alive:
                if timeout is None:
                    timeout = self.supervisor.config.containers.stop_timeout
                if kill:
                    timeout = 0.0
                if not kill and await sandbox.signal_all(signal.SIGTERM):
                    with trio.move_on_after(timeout):
                        while await sandbox.signal_all(0):
                            await trio.sleep(STOP_POLL)
                await self.supervisor.hooks.kill(self)
                while sandbox.alive and await sandbox.signal_all(signal.SIGKILL):
                    await trio.sleep(STOP_POLL)
                # Leaders are reaped by now; give their exit reports a moment to arrive.
                with trio.move_on_after(1.0):
                    for job in list(self.jobs.values()):
                        await job.exited.wait()
            for job in self.jobs.values():
                if not job.exited.is_set():
                    job.finish(job.read_status_file())
            if self.state in (State.ACTIVE, State.PAUSED):
                await self._move(State.STOPPED)
