"""The event bus: typed events delivered to per-subscriber bounded channels.

Plugins publish what the kernel tells them (a job exited, an OOM kill); the
core subscribes and turns events into state. A subscriber names the container
handle it cares about (or none, for all). Publishing waits when a subscriber's
channel is full, so events are never dropped; subscribers drain promptly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class Event:
    """Something that happened to a container."""

    handle: str


@dataclass(frozen=True)
class JobExited(Event):
    """A job's leader process ended; *status* is None when it cannot be known."""

    job_id: int
    status: int | None


@dataclass(frozen=True)
class StateChanged(Event):
    """The container moved from one lifecycle state to another."""

    old: str
    new: str


@dataclass(frozen=True)
class OutOfMemory(Event):
    """The kernel OOM-killed a process of the container."""


@dataclass(frozen=True)
class SandboxExited(Event):
    """The container's init (and so every process of it) is gone."""


class EventBus:
    """Fan-out of events to subscribers, filtered by handle."""

    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: defaultdict[str | None, set[trio.MemorySendChannel[Event]]] = (
            defaultdict(set)
        )

    async def publish(self, event: Event) -> None:
        """Deliver *event* to every subscriber of its handle and to global subscribers."""
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
