"""Job records: output files, exit status, ``link`` and ``stream``.

A job's stdout and stderr go straight from the job to files in the depot
(``jobs/ID/stdout``, ``jobs/ID/stderr``); the container's init writes the exit
status to ``jobs/ID/status``. The daemon holds none of them open while the job
runs, so a job outlives its spawning connection and the daemon itself, and a
job writing while nobody reads costs the daemon nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from supervisor.filewatch import DirectoryWatch
from supervisor.sandbox import JobGroup

STREAMS = ("stdout", "stderr")
#: Why the daemon may kill a job, as ``ended.killed_by`` reports it.
KILL_REASONS = frozenset({"timeout", "cpu_limit", "output_limit", "oom", "stop"})
#: The status of a job cut at the output limit: 128 + SIGKILL, as a shell reports it.
KILLED_FOR_OUTPUT = 137
#: Bytes of output read at once for ``stream``, at most. The handler asks for less
#: (see :func:`supervisor.protocol.stream_chunk_size`): a reader that stops reading
#: leaves the daemon holding one line, so a line must stay small.
STREAM_CHUNK = 256 * 1024
#: How often a streaming reader looks for new output while the job is quiet, when it
#: cannot watch the job's directory (and how long it waits for the exit after the
#: status file was written).
STREAM_POLL = 0.02
#: How long a watching reader sleeps without a write (the exit of a job whose status
#: is never written, as at a destroy, is seen then).
STREAM_WATCH_MAX = 0.25
#: Output read on the event loop itself, as a worker thread's round trip costs more.
INLINE_READ = 64 * 1024


@dataclass(frozen=True)
class JobLimits:
    """Spawn OPTS ``timeout`` (wall seconds) and ``cpu_time`` (CPU seconds); None = none."""

    timeout: float | None = None
    cpu_time: float | None = None

    def __bool__(self) -> bool:
        return self.timeout is not None or self.cpu_time is not None


@dataclass
class Job:
    """One job of a container."""

    id: int
    dir: Path
    discard_output: bool = False
    status: int | None = None
    #: Why the daemon killed the job (one of :data:`KILL_REASONS`), if it did.
    killed_by: str | None = None
    limits: JobLimits = field(default_factory=JobLimits)
    #: The job's own cgroup (from a plugin), if any.
    group: JobGroup | None = None
    #: When it was spawned and when its leader's exit was seen (``time.time()``).
    started: float = field(default_factory=time.time)
    ended_at: float | None = None
    #: Spawned with a stdin pipe, or a terminal (rows, cols) for all three streams.
    stdin: bool = False
    tty: tuple[int, int] | None = None
    #: The spawn's ``log_tag``, kept with the facts.
    log_tag: str | None = None
    #: The daemon's fd of the job's input (from the sandbox, on the first write).
    input_fd: int | None = None
    #: Writers take turns, so that two clients' writes do not interleave.
    writing: trio.Lock = field(default_factory=trio.Lock)
    stdin_closed: bool = False
    exited: trio.Event = field(default_factory=trio.Event)
    #: The streams cut at the output limit (the sandbox killed the job then).
    cut: set[str] = field(default_factory=set)
    #: (exit_status, stdout, stderr) once read by the first ``link``.
    result: tuple[int | None, bytes | None, bytes | None] | None = None
    _collecting: trio.Lock = field(default_factory=trio.Lock)
    _ending: dict[str, Any] | None = None

    def file(self, stream: str) -> Path:
        return self.dir / stream

    def finish(self, status: int | None) -> None:
        """Record the exit (once; later reports are ignored)."""
        if not self.exited.is_set():
            self.status = status
            if self.ended_at is None:
                self.ended_at = time.time()
            self.exited.set()
            self.close_input()

    def close_input(self) -> None:
        """Close the daemon's fd of the job's input (a writer waiting on it wakes up)."""
        if self.input_fd is not None:
            trio.lowlevel.notify_closing(self.input_fd)
            os.close(self.input_fd)
            self.input_fd = None

    def save_facts(self) -> None:
        """Keep what a restarted daemon needs to go on: the start and the limits."""
        facts = {
            "started": self.started,
            **vars(self.limits),
            "stdin": self.stdin,
            "tty": self.tty,
            "log_tag": self.log_tag,
        }
        (self.dir / "job.json").write_text(json.dumps(facts))

    def read_facts(self) -> None:
        """Take the start and limits a former daemon kept (see :meth:`save_facts`), and
        for a job that ended meanwhile, the time its status was written."""
        try:
            facts = json.loads((self.dir / "job.json").read_text())
            self.started = float(facts["started"])
            self.limits = JobLimits(facts.get("timeout"), facts.get("cpu_time"))
            self.stdin = bool(facts.get("stdin"))
            self.tty = tuple(facts["tty"]) if facts.get("tty") else None  # type: ignore[assignment]
            self.log_tag = facts.get("log_tag")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            self.ended_at = (
                os.stat(self.dir / "status").st_mtime
                if self.read_status_file() is not None
                else None
            )
        except OSError:
            pass

    def usage(self) -> dict[str, Any]:
        """CPU seconds (user, system, total) and peak memory of the job and all it started
        (from its group; None without one), and its wall time, start to leader's exit."""
        usage: dict[str, Any] = (
            self.group.usage()
            if self.group is not None
            else dict.fromkeys(("cpu_user", "cpu_system", "cpu_total", "memory_peak"))
        )
        end = self.ended_at if self.ended_at is not None else time.time()
        usage["wall_time"] = round(end - self.started, 6)
        return usage

    def mark_killed(self, reason: str, after_exit: bool = False) -> None:
        """Record, before killing the job, why the daemon does (the first reason holds).

        Kept in ``killed_by`` beside the output, so a restarted daemon reports it too.
        """
        if self.killed_by is None and (after_exit or not self.exited.is_set()):
            self.killed_by = reason
            self._ending = None
            try:
                (self.dir / "killed_by").write_text(reason)
            except OSError:
                pass  # the job's files are gone with a destroy

    def read_killed_by(self) -> None:
        """Take the reason a former daemon recorded, if any (after a restart)."""
        try:
            reason = (self.dir / "killed_by").read_text().strip()
        except OSError:
            return
        self.killed_by = reason if reason in KILL_REASONS else None

    def ending(self) -> dict[str, Any]:
        """How the ended job ended: ``exit_code`` or ``signal`` (from the init's status
        file), and ``killed_by`` when the daemon killed it; all None when unknown.

        Read once, on the first request (clients that never ask cost nothing).
        """
        if self._ending is None:
            self._ending = self._read_ending()
        return self._ending

    def _read_ending(self) -> dict[str, Any]:
        exit_code = signum = None
        if self.status is not None:
            try:
                lines = (self.dir / "status").read_text().split()
            except OSError:
                lines = []
            how = dict(zip(lines[1::2], lines[2::2], strict=False))
            if "signal" in how and how["signal"].isdigit():
                signum = int(how["signal"])
            elif "exit" in how and how["exit"].isdigit():
                exit_code = int(how["exit"])
            elif self.status < 128:  # an init without the second line: no doubt below 128
                exit_code = self.status
        return {"exit_code": exit_code, "signal": signum, "killed_by": self.killed_by}

    def output_size(self) -> int:
        """Bytes written so far to the larger of the two streams."""
        sizes = [0]
        for stream in STREAMS:
            try:
                sizes.append(os.stat(self.file(stream)).st_size)
            except FileNotFoundError:
                pass
        return max(sizes)

    def read_status_file(self) -> int | None:
        """The status the init wrote, or None if it wrote none."""
        try:
            text = (self.dir / "status").read_text().split("\n", 1)[0]  # then how it ended
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    async def collect(self, limit: int) -> tuple[int | None, bytes | None, bytes | None]:
        """Wait for the exit, then read (once) the status and up to *limit* bytes per stream."""
        await self.exited.wait()
        async with self._collecting:
            # Killed for its output: 137 (SIGKILL), even where its first process had
            # exited before a background child's output was cut.
            status = KILLED_FOR_OUTPUT if self.cut else self.status
            if self.result is None:
                if self.discard_output:
                    self.result = (status, None, None)
                elif self.output_size() <= INLINE_READ:
                    self.result = (status, *self._read_outputs(limit))
                else:
                    out, err = await trio.to_thread.run_sync(self._read_outputs, limit)
                    self.result = (status, out, err)
        return self.result

    def _read_outputs(self, limit: int) -> tuple[bytes | None, bytes | None]:
        def read(stream: str) -> bytes | None:
            try:
                with open(self.file(stream), "rb") as f:
                    return f.read(limit)
            except FileNotFoundError:
                return None

        return read("stdout"), read("stderr")

    async def stream(
        self, limit: int, chunk_size: int = STREAM_CHUNK, follow: bool = True
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(stream, chunk)`` from the first byte, as produced, until exit and drained
        (not *follow*: until what is written so far is drained).

        Each chunk holds at most *chunk_size* bytes; the next is read only when the
        consumer asks for it (once it has sent the last).
        """
        if self.discard_output:
            if follow:
                await self.exited.wait()
            return
        offsets = dict.fromkeys(STREAMS, 0)
        files: dict[str, int] = {}
        watch: DirectoryWatch | None = None
        if follow and not self.exited.is_set():
            try:
                watch = DirectoryWatch(self.dir)  # made before the first read: no write missed
            except OSError:
                pass  # polled instead
        try:
            while True:
                finished = self.exited.is_set()
                progressed = False
                for stream in STREAMS:
                    if stream not in files:
                        try:
                            files[stream] = os.open(self.file(stream), os.O_RDONLY | os.O_CLOEXEC)
                        except FileNotFoundError:
                            continue
                    want = min(chunk_size, limit - offsets[stream])
                    if want <= 0:
                        continue
                    chunk = os.pread(files[stream], want, offsets[stream])
                    if chunk:
                        offsets[stream] += len(chunk)
                        progressed = True
                        yield stream, chunk
                if progressed:
                    continue
                if finished or not follow:
                    return
                if watch is None or "status" in await self._written_or_exited(watch):
                    # Polling; or the init wrote the status: its exit message is on its way.
                    with trio.move_on_after(STREAM_POLL):
                        await self.exited.wait()
        finally:
            for fd in files.values():
                os.close(fd)
            if watch is not None:
                watch.close()

    async def _written_or_exited(self, watch: DirectoryWatch) -> set[str]:
        """The names of the job's files written since the last call, once one is written,
        the job's exit is known (its status may have been written before the watch was
        made, or read already: no write would come), or :data:`STREAM_WATCH_MAX` passed."""
        written: set[str] = set()
        async with trio.open_nursery() as nursery:

            async def until_written() -> None:
                written.update(await watch.wait(STREAM_WATCH_MAX))
                nursery.cancel_scope.cancel()

            async def until_exited() -> None:
                await self.exited.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_written)
            nursery.start_soon(until_exited)
        return written

    def remove_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def forget(self) -> None:
        """Remove the files and, when no process of it is left, the group (blocking)."""
        self.remove_files()
        if self.group is not None and self.group.empty():
            self.group.remove()
