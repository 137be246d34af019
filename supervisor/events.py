"""The event bus: typed events, for the core's own subscribers and for clients' ``events``.

Plugins publish what the kernel tells them (a job exited, an OOM kill); the
core publishes what it does (state changes, jobs started, limits set). Two
kinds of subscriber read the bus:

- The core's own (each container's task) get every event of their container
  through a bounded channel; publishing waits when one is full, so they never
  miss an event, and they drain promptly.
- A client's subscription (the ``events`` command) is a :class:`Watch`: a
  bounded queue of encoded lines, filled without ever waiting. When a slow
  client lets it fill up, further events are counted, not queued, and the client
  reads an ``["dropped", N]`` line where they would have been: a slow client
  never slows the daemon or the other subscribers. While a watch's queue is
  empty and its socket has room, the publisher writes the line itself: waking
  the subscriber's task for each line cost each of 100 subscribers tens of
  microseconds more than the write (see bench/README.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import trio


@dataclass(frozen=True)
class Event:
    """Something that happened to a container."""

    #: The name clients filter on and read in ``kind``.
    kind: ClassVar[str] = "event"

    handle: str

    def to_json(self) -> dict[str, Any]:
        """The event as a client reads it: ``{"kind": ..., "handle": ..., FIELDS...}``."""
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class StateChanged(Event):
    """The container moved from one lifecycle state to another (``destroyed`` at the end)."""

    kind: ClassVar[str] = "state"
    old: str
    new: str


@dataclass(frozen=True)
class JobStarted(Event):
    """A job was started."""

    kind: ClassVar[str] = "job_started"
    job_id: int
    #: The spawn's ``log_tag`` (Warden's), None without one.
    log_tag: str | None = None


@dataclass(frozen=True)
class JobExited(Event):
    """A job's leader process ended; *status* is None when it cannot be known."""

    kind: ClassVar[str] = "job_exited"
    job_id: int
    status: int | None


@dataclass(frozen=True)
class OutputCut(Event):
    """A job's output passed ``output_limit`` on *stream*: kept up to it, the job killed."""

    kind: ClassVar[str] = "output_cut"
    job_id: int
    stream: str


@dataclass(frozen=True)
class OutOfMemory(Event):
    """The kernel OOM-killed a process of the container."""

    kind: ClassVar[str] = "oom"


@dataclass(frozen=True)
class MemoryPressure(Event):
    """The kernel reported memory pressure in the container at *level* (before any OOM kill)."""

    kind: ClassVar[str] = "memory_pressure"
    level: str


@dataclass(frozen=True)
class LimitChanged(Event):
    """A ``limit`` request set *resource* to *value* (as now in force)."""

    kind: ClassVar[str] = "limit"
    resource: str
    value: Any


@dataclass(frozen=True)
class NetRuleChanged(Event):
    """A network rule was added, or revoked (*rule* then holds ``"revoked": true``):
    *direction* ``in`` (a forward) or ``out`` (egress)."""

    kind: ClassVar[str] = "net"
    direction: str
    rule: dict[str, Any]


@dataclass(frozen=True)
class GraceExpired(Event):
    """No connection referenced the container for its grace time: it is being destroyed."""

    kind: ClassVar[str] = "grace_expired"
    grace_time: float


@dataclass(frozen=True)
class SandboxExited(Event):
    """The container's init (and so every process of it) is gone."""

    kind: ClassVar[str] = "init_exited"


#: Every kind a client may ask for.
KINDS = frozenset(
    cls.kind
    for cls in (
        StateChanged,
        JobStarted,
        JobExited,
        OutputCut,
        OutOfMemory,
        MemoryPressure,
        LimitChanged,
        NetRuleChanged,
        GraceExpired,
        SandboxExited,
    )
)

#: Lines a client's subscription holds before it counts drops.
WATCH_BUFFER = 1024

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def event_line(event: Event) -> bytes:
    """``["event", {...}]``, with the time it was published (seconds since the epoch)."""
    record = event.to_json()
    record["time"] = round(time.time(), 6)
    return b'["event",' + _encode(record).encode("ascii") + b"]\n"


class Watch:
    """A client's subscription: the lines of the events it asked for, and the drops."""

    def __init__(
        self,
        handles: Collection[str] | None,
        kinds: Collection[str] | None,
        limit: int,
        send_now: Callable[[bytes], int] | None = None,
    ) -> None:
        """
        Args:
            handles: the containers watched (None: all).
            kinds: the kinds of event wanted (None: all).
            limit: lines queued at most; more are dropped (and counted).
            send_now: writes what it can of a line to the client without waiting, and
                says how much; used while nothing is queued nor being sent.
        """
        self.handles = frozenset(handles) if handles else None
        self.kinds = frozenset(kinds) if kinds else None
        self._limit = limit
        self._send_now = send_now
        #: The reader is sending a line: a new one must wait its turn in the queue.
        self.sending = False
        self._lines: deque[bytes] = deque()
        self._dropped = 0
        self._ready = trio.Event()
        #: Watched handles not destroyed yet (None: every container is watched).
        self._remaining = set(self.handles) if self.handles else None

    def see(self, event: Event, line: Callable[[], bytes]) -> None:
        """Queue the event's *line* if it is wanted (never waits: when the queue is full the
        line is counted as dropped); note a watched container's destruction in any case."""
        if self.handles is not None and event.handle not in self.handles:
            return
        if self.kinds is None or event.kind in self.kinds:
            if len(self._lines) >= self._limit:
                self._dropped += 1
            else:
                self._flush_drops()
                self._queue(line())
        if isinstance(event, StateChanged) and event.new == "destroyed" and self._remaining:
            self._remaining.discard(event.handle)
            self._ready.set()  # the reader may be done

    def _queue(self, line: bytes) -> None:
        """Send *line* at once if nothing goes before it, else queue it for the reader."""
        if not self._lines and not self.sending and self._send_now is not None:
            sent = self._send_now(line)
            if sent == len(line):
                return
            line = line[sent:]  # the rest goes first, by the reader
        self._lines.append(line)
        self._ready.set()

    def _flush_drops(self) -> None:
        if self._dropped:
            self._lines.append(b'["dropped",%d]\n' % self._dropped)
            self._dropped = 0

    @property
    def finished(self) -> bool:
        """Every watched container is destroyed, and every line was read."""
        return self._remaining == set() and not self._lines and not self._dropped

    async def next(self) -> bytes | None:
        """The next line (a ``dropped`` marker where lines were lost); None when finished."""
        while not self._lines:
            if self.finished:
                return None
            if self._dropped:
                self._flush_drops()
                break
            self._ready = trio.Event()
            await self._ready.wait()
        return self._lines.popleft()


class EventBus:
    """Fan-out of events to the core's subscribers (by handle) and to clients' watches."""

    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: defaultdict[str | None, set[trio.MemorySendChannel[Event]]] = (
            defaultdict(set)
        )
        self._watches: set[Watch] = set()

    async def publish(self, event: Event) -> None:
        """Deliver *event* to every subscriber of its handle, to global subscribers, and to
        the watches that want it."""
        if self._watches:
            encoded: list[bytes] = []

            def line() -> bytes:  # encoded once, for the first watch that wants it
                if not encoded:
                    encoded.append(event_line(event))
                return encoded[0]

            for watch in self._watches:
                watch.see(event, line)
        targets = list(self._subscribers.get(event.handle, ())) + list(
            self._subscribers.get(None, ())
        )
        for channel in targets:
            try:
                await channel.send(event)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the subscriber left while we were delivering

    @asynccontextmanager
    async def subscribe(
        self, handle: str | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """Receive the events of *handle* (all events if None) while the block runs."""
        send, receive = trio.open_memory_channel[Event](self._buffer)
        self._subscribers[handle].add(send)
        try:
            yield receive
        finally:
            self._subscribers[handle].discard(send)
            if not self._subscribers[handle]:
                del self._subscribers[handle]
            send.close()
            receive.close()

    @asynccontextmanager
    async def watch(
        self,
        handles: Collection[str] | None = None,
        kinds: Collection[str] | None = None,
        limit: int = WATCH_BUFFER,
        send_now: Callable[[bytes], int] | None = None,
    ) -> AsyncIterator[Watch]:
        """A client's subscription to the events of *handles* of *kinds* (None: all)."""
        watch = Watch(handles, kinds, limit, send_now)
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)
