"""The memory pressure watcher: tells when the kernel reports memory pressure in a container.

The create option ``memory_pressure`` names what to watch (:func:`parse_option`):
a level, ``low``, ``medium`` or ``critical``, a PSI threshold on cgroup v2
(``{"psi": "some 150000 1000000"}``: stall type, stall µs, window µs, the
kernel's format), or a list of them. Each notification is published as
:class:`~supervisor.api.MemoryPressure` with the level as given (a threshold as
its normalized text), at most once per level per :data:`MIN_INTERVAL`.

How the kernel tells:

- v1: vmpressure. An eventfd per level is registered on ``memory.pressure_level``
  through ``cgroup.event_control`` (``"<eventfd> <fd> <level>,hierarchy"``). The
  kernel rates reclaim by the share of the pages it scanned that it could not
  reclaim (low: reclaiming at all; medium: 60%; critical: 95%) and signals every
  eventfd registered at that level *or below*: pressure at ``critical`` wakes the
  ``low`` watch too. Only reclaim caused by the container's own limit counts, not
  a host short of memory. ``hierarchy`` delivers the container's events whatever
  listens in a cgroup below it (none does today; the kernel's default mode would
  let one swallow them). The eventfd is also signalled when the cgroup is removed.
  (Linux 6.x logs once that ``pressure_level`` is deprecated; it still works.)
- v2: PSI triggers. Each level is a trigger written to an fd of its own on
  ``memory.pressure``; the kernel signals POLLPRI once the container's tasks were
  stalled on memory (reclaim, refaults, throttling; the host's shortage as well as
  the container's limit) for the given time within a window, at most once per
  window. A level is a trigger (:data:`PSI_LEVELS`): ``low`` is any stall worth
  the name, 0.1% of the time; ``medium`` 5%; ``critical`` 10% with *every* task of
  the container stalled at once. Windows are 1 s, or 2 s (stall doubled) when the
  daemon lacks ``CAP_SYS_RESOURCE``: the kernel then only takes windows that are
  multiples of 2 s (and checks them every 2 s).

trio waits for readability only, and a PSI trigger signals POLLPRI, so every fd
goes into an epoll of the watcher's own, which trio waits on (an epoll fd is
readable when one of its fds is ready). A trigger's poll *consumes* the event
it reports, and trio polls the epoll fd more than once per wake-up (when it
re-arms it, and when it waits), so a plain POLLPRI registration would lose
events. A trigger's poll always reports POLLIN too, though: registered
edge-triggered with POLLIN, the fd becomes ready exactly when the kernel wakes
it, which it does only when the trigger fires, and stays ready until the
watcher reads the epoll set.

A job whose memory is all anonymous, with no swap, gives the kernel next to
nothing to reclaim: its pressure, if reported at all, comes moments before its
OOM kill. A job with file pages (what it reads and writes) is reclaimed, then
thrashes, before it is killed: that is what pressure reports, seconds ahead.

The fds are registered (:func:`register`) before any limit is written, so no
pressure goes unseen, and again when a daemon restores the container (pressure
while no daemon ran is not reported). A watcher never raises for a cgroup that
vanishes: it just ends.
"""

from __future__ import annotations

import errno
import os
import re
import select
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from plugins.cgroups.backend import Backend, CgroupError, write
from supervisor.api import InvalidRequest

#: ``on_pressure(level)``: called for each notification the rate limit lets through.
PressureCallback = Callable[[str], Awaitable[None]]

OPTION = "memory_pressure"
#: The named levels, mildest first (v1's own names).
LEVELS = ("low", "medium", "critical")
#: cgroup v2: the PSI trigger of each named level, as (stall type, stall µs per second).
PSI_LEVELS: dict[str, tuple[str, int]] = {
    "low": ("some", 1_000),
    "medium": ("some", 50_000),
    "critical": ("full", 100_000),
}
#: The window of the named levels' triggers.
PSI_WINDOW_US = 1_000_000
#: The windows the kernel accepts (``psi_trigger_create``).
PSI_WINDOW_MIN_US = 500_000
PSI_WINDOW_MAX_US = 10_000_000
#: Without CAP_SYS_RESOURCE the kernel takes only windows that are multiples of this.
PSI_UNPRIVILEGED_STEP_US = 2_000_000
#: A few levels are all a client needs; each costs the daemon an fd (and the kernel a trigger).
MAX_LEVELS = 8
#: Seconds between two events of one level: a container under steady pressure does not
#: flood the bus (the notifications in between are dropped).
MIN_INTERVAL = 1.0

CAP_SYS_RESOURCE = 24
PROC_STATUS = Path("/proc/self/status")
PROC_PRESSURE = Path("/proc/pressure/memory")

_PSI_RE = re.compile(r"^(some|full) ([0-9]+) ([0-9]+)$")
_FORMS = (
    'a level ("low", "medium", "critical"), a PSI threshold '
    '({"psi": "some|full STALL_US WINDOW_US"}), or a list of them'
)


@dataclass(frozen=True)
class Support:
    """What this host can watch; validation checks an option against it."""

    #: The cgroup version of the memory controller (None: no memory cgroup).
    version: int | None
    #: Whether the kernel keeps pressure stall information (v2 needs it).
    psi: bool = True
    #: Whether the daemon has CAP_SYS_RESOURCE (PSI windows of any length).
    privileged: bool = True

    @classmethod
    def detect(cls, version: int | None) -> Support:
        """The host's support, for a memory controller of cgroup *version*."""
        return cls(version, PROC_PRESSURE.exists(), has_capability(CAP_SYS_RESOURCE))


def has_capability(cap: int, status: str | None = None) -> bool:
    """Whether this process has capability *cap* in its effective set (``/proc/self/status``)."""
    if status is None:
        status = PROC_STATUS.read_text()
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


# -- the option ------------------------------------------------------------------------


def parse_option(value: Any, support: Support) -> list[str]:
    """The ``memory_pressure`` create option, checked completely: the levels to watch.

    Returns:
        each level as events name it: ``"low"``, ``"medium"``, ``"critical"``, or a
        PSI threshold's normalized text (``"some 150000 1000000"``).

    Raises:
        InvalidRequest: naming the option, the value and the reason.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidRequest(f"{OPTION}: [] names no level (give {_FORMS})")
    if len(items) > MAX_LEVELS:
        raise InvalidRequest(f"{OPTION}: {len(items)} levels, more than the {MAX_LEVELS} allowed")
    if support.version is None:
        raise InvalidRequest(f"{OPTION}: this host has no memory cgroup to watch")
    levels: list[str] = []
    for item in items:
        level = _parse_level(item, support)
        if level in levels:
            raise InvalidRequest(f"{OPTION}: {level!r} is given twice")
        levels.append(level)
    return levels


def _parse_level(item: Any, support: Support) -> str:
    if isinstance(item, str):
        if item not in LEVELS:
            raise InvalidRequest(
                f"{OPTION}: unknown level {item!r} (levels: {', '.join(LEVELS)}; "
                'a PSI threshold is {"psi": "some|full STALL_US WINDOW_US"})'
            )
        if support.version == 2 and not support.psi:
            raise InvalidRequest(_no_psi())
        return item
    if isinstance(item, dict):
        unknown = set(item) - {"psi"}
        if unknown or "psi" not in item:
            raise InvalidRequest(
                f"{OPTION}: {item!r} is not a PSI threshold "
                '({"psi": "some|full STALL_US WINDOW_US"}, and no other key)'
            )
        return parse_psi(item["psi"], support)
    raise InvalidRequest(f"{OPTION}: {item!r} is not {_FORMS}")


def _no_psi() -> str:
    return (
        f"{OPTION}: this kernel keeps no pressure stall information "
        "(/proc/pressure is missing: boot it with psi=1)"
    )


def parse_psi(text: Any, support: Support) -> str:
    """A PSI threshold, ``"some|full STALL_US WINDOW_US"``, as the kernel would take it; normalized."""
    if support.version != 2:
        raise InvalidRequest(
            f"{OPTION}: a PSI threshold needs cgroup v2, and memory is on cgroup v1 here "
            f"(use {', '.join(LEVELS)})"
        )
    if not support.psi:
        raise InvalidRequest(_no_psi())
    match = _PSI_RE.match(" ".join(text.split())) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequest(
            f"{OPTION}: PSI threshold {text!r} is not 'some|full STALL_US WINDOW_US' "
            "(e.g. 'some 150000 1000000': 150 ms of stall within 1 s)"
        )
    kind, stall, window = match.group(1), int(match.group(2)), int(match.group(3))
    normalized = f"{kind} {stall} {window}"
    if not PSI_WINDOW_MIN_US <= window <= PSI_WINDOW_MAX_US:
        raise InvalidRequest(
            f"{OPTION}: PSI threshold {normalized!r}: the window, {window} us, is outside "
            f"the kernel's {PSI_WINDOW_MIN_US}..{PSI_WINDOW_MAX_US} us"
        )
    if not 0 < stall <= window:
        raise InvalidRequest(
            f"{OPTION}: PSI threshold {normalized!r}: the stall, {stall} us, must be "
            f"from 1 us to the window ({window} us)"
        )
    if not support.privileged and window % PSI_UNPRIVILEGED_STEP_US:
        raise InvalidRequest(
            f"{OPTION}: PSI threshold {normalized!r}: the window must be a multiple of "
            f"{PSI_UNPRIVILEGED_STEP_US} us here (the daemon lacks CAP_SYS_RESOURCE)"
        )
    return normalized


def psi_trigger(level: str, privileged: bool) -> str:
    """The PSI trigger written for *level*: a named level's (:data:`PSI_LEVELS`) or the threshold itself."""
    if level not in PSI_LEVELS:
        return level
    kind, stall = PSI_LEVELS[level]
    scale = 1 if privileged else PSI_UNPRIVILEGED_STEP_US // PSI_WINDOW_US
    return f"{kind} {stall * scale} {PSI_WINDOW_US * scale}"


def v1_level(level: str) -> str:
    """The level text registered through ``cgroup.event_control`` on v1."""
    return f"{level},hierarchy"


# -- rate limit ------------------------------------------------------------------------


class RateLimit:
    """At most one event per key per *interval* seconds; those in between are dropped."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        """Whether an event of *key* at time *now* goes out (and if so, it counts from now)."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


# -- registration ----------------------------------------------------------------------


@dataclass
class Registration:
    """The kernel makes :attr:`epoll` readable when it reports pressure (see :func:`register`)."""

    version: int
    epoll: select.epoll = field(default_factory=select.epoll)
    #: The fd the kernel signals, for each level watched.
    levels: dict[int, str] = field(default_factory=dict)
    #: What the kernel was given for each level (for ``info``).
    kernel: dict[str, str] = field(default_factory=dict)
    #: v1: ``memory.pressure_level``, open while eventfds are registered on it.
    control: int = -1

    def fired(self) -> tuple[list[str], bool]:
        """The levels the kernel signalled since the last call (in the order watched), and
        whether a v2 trigger is gone (its cgroup was removed)."""
        fired: set[int] = set()
        gone = False
        for fd, events in self.epoll.poll(0):
            if events & select.EPOLLERR:
                gone = True
            elif self.version == 1:
                try:
                    os.eventfd_read(fd)  # reset the counter: the next signal wakes us again
                except BlockingIOError:
                    continue
                fired.add(fd)
            else:
                fired.add(fd)
        return [level for fd, level in self.levels.items() if fd in fired], gone

    def close(self) -> None:
        try:
            trio.lowlevel.notify_closing(self.epoll.fileno())
        except RuntimeError:
            pass  # not in trio (a registration that failed in a test): nobody waits on it
        self.epoll.close()
        for fd in self.levels:
            os.close(fd)  # a v1 eventfd's registration goes with it, a v2 trigger with its fd
        if self.control >= 0:
            os.close(self.control)


def register(backend: Backend, path: Path, levels: Sequence[str], privileged: bool) -> Registration:
    """Have the kernel report pressure at each of *levels* in the memory cgroup at *path*.

    Args:
        backend: the version of the hierarchy *path* is in.
        path: the container's memory cgroup.
        levels: what :func:`parse_option` returned.
        privileged: whether the daemon has CAP_SYS_RESOURCE (v2: the windows of the
            named levels).

    Raises:
        FileNotFoundError: the cgroup is gone.
        InvalidRequest: the kernel refused a level or threshold.
    """
    registration = Registration(backend.version)
    try:
        if backend.version == 1:
            _register_v1(registration, path, levels)
        else:
            _register_v2(registration, path, levels, privileged)
        # An edge-triggered fd is ready from its registration on: start from a clean slate.
        registration.epoll.poll(0)
    except BaseException:
        registration.close()
        raise
    return registration


def _register_v1(registration: Registration, path: Path, levels: Sequence[str]) -> None:
    registration.control = os.open(path / "memory.pressure_level", os.O_RDONLY | os.O_CLOEXEC)
    for level in levels:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        registration.levels[efd] = level
        text = v1_level(level)
        try:
            write(
                path / "cgroup.event_control",
                f"{efd} {registration.control} {text}",
                f"{OPTION} {level!r}",
            )
        except CgroupError as exc:
            if not path.is_dir():
                raise FileNotFoundError(errno.ENOENT, exc.message) from None
            raise
        registration.kernel[level] = text
        registration.epoll.register(efd, select.EPOLLIN)


def _register_v2(
    registration: Registration, path: Path, levels: Sequence[str], privileged: bool
) -> None:
    for level in levels:
        fd = os.open(path / "memory.pressure", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        registration.levels[fd] = level
        trigger = psi_trigger(level, privileged)
        try:
            os.write(fd, trigger.encode())
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EPERM, errno.EBUSY):
                raise InvalidRequest(
                    f"{OPTION}: the kernel refused the PSI trigger {trigger!r} "
                    f"for {level!r}: {exc.strerror}"
                ) from None
            raise
        registration.kernel[level] = trigger
        # Edge-triggered on POLLIN, which a trigger always reports: ready when the kernel
        # wakes the fd, i.e. when the trigger fires (see the module docstring).
        registration.epoll.register(fd, select.EPOLLIN | select.EPOLLPRI | select.EPOLLET)


async def watch(
    path: Path,
    on_pressure: PressureCallback,
    registration: Registration,
    *,
    interval: float = MIN_INTERVAL,
) -> None:
    """Report the pressure *registration* signals, until cancelled or the cgroup is gone.

    Args:
        path: the container's memory cgroup.
        on_pressure: awaited with the level, at most once per level per *interval* seconds.
        registration: made by :func:`register` (the watch closes it).
        interval: see :data:`MIN_INTERVAL`.
    """
    limit = RateLimit(interval)
    try:
        while True:
            await trio.lowlevel.wait_readable(registration.epoll.fileno())
            fired, gone = registration.fired()
            if gone or (fired and registration.version == 1 and not path.is_dir()):
                return  # the cgroup was removed (v1 signals every eventfd then)
            now = trio.current_time()
            for level in fired:
                if limit.allow(level, now):
                    await on_pressure(level)
    finally:
        registration.close()
