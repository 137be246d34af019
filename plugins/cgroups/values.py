"""Limit values as clients send them: validation, normalization and cpuset syntax.

Everything here is pure (no file is touched), so a bad value is refused before
anything is built or changed. Each parser takes the client's value and returns
the normalized one, or raises :class:`~supervisor.api.InvalidRequest` whose
message names the resource and the value: ``mem 0 is not a positive number of
bytes``. The caller prefixes the container or the create option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from supervisor.api import InvalidRequest

#: Below this not even the container's init can run; the kernel would OOM-kill it at once.
MIN_MEM = 1 << 20
#: cpu.shares range of cgroup v1 (kernel MIN_SHARES/MAX_SHARES); v2 weights are converted from it.
MIN_SHARES = 2
MAX_SHARES = 262144
#: The smallest CFS quota the kernel accepts is 1 ms, i.e. 1% of the 100 ms period Corral uses.
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1000
MIN_CPUS = MIN_QUOTA_US / CFS_PERIOD_US
#: PID_MAX_LIMIT on 64-bit kernels: pids.max refuses more.
MAX_PIDS = 4 * 1024 * 1024

_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass(frozen=True)
class Host:
    """What validation needs to know about the machine: the cores a container may use."""

    cores: frozenset[int]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def parse_mem(value: Any, host: Host) -> int:
    """Memory limit in bytes (swap included)."""
    if not _is_int(value) or value <= 0:
        raise InvalidRequest(f"mem {value!r} is not a positive number of bytes")
    if value < MIN_MEM:
        raise InvalidRequest(f"mem {value} is less than the {MIN_MEM} bytes a container needs")
    return int(value)


def parse_cpu(value: Any, host: Host) -> int:
    """Relative CPU shares, as cgroup v1 ``cpu.shares`` (default 1024), clamped to
    the kernel's range as the kernel and Warden do (``limit cpu 1`` is 2)."""
    if not _is_int(value) or value < 0:
        raise InvalidRequest(f"cpu {value!r} is not a number of shares (a whole number >= 0)")
    return min(max(int(value), MIN_SHARES), MAX_SHARES)


def parse_cpus(value: Any, host: Host) -> float:
    """Hard CPU quota in cores (0.5 = half a core), at most the cores of the host."""
    if not _is_number(value) or value < MIN_CPUS:
        raise InvalidRequest(f"cpus {value!r} is not a number of cores >= {MIN_CPUS}")
    if value > len(host.cores):
        raise InvalidRequest(
            f"cpus {value!r} is more than the {len(host.cores)} cores of this host"
        )
    return float(value)


def parse_cpuset(value: Any, host: Host) -> str:
    """Cores in cpuset syntax ("1,3", "0-7"), each of which must exist; normalized."""
    if not isinstance(value, str):
        raise InvalidRequest(f'cpuset {value!r} is not a string of cores such as "0-3" or "1,3"')
    try:
        cores = cpuset_cores(value, limit=max(host.cores, default=0) + 1)
    except MissingCore as exc:
        cores = frozenset({exc.core})
    except ValueError as exc:
        raise InvalidRequest(f"cpuset {value!r}: {exc}") from None
    if not cores:
        raise InvalidRequest(f"cpuset {value!r} names no core")
    missing = cores - host.cores
    if missing:
        raise InvalidRequest(
            f"cpuset {value!r}: core {format_cpuset(missing)} does not exist on this host "
            f"(cores: {format_cpuset(host.cores)})"
        )
    return format_cpuset(cores)


def parse_pids(value: Any, host: Host) -> int:
    """Maximum number of tasks (processes and threads, the init included)."""
    if not _is_int(value) or not 1 <= value <= MAX_PIDS:
        raise InvalidRequest(f"pids {value!r} is not a number of tasks from 1 to {MAX_PIDS}")
    return int(value)


#: Resource name -> parser, in the order limits are applied at create.
PARSERS: dict[str, Callable[[Any, Host], Any]] = {
    "cpuset": parse_cpuset,
    "mem": parse_mem,
    "cpu": parse_cpu,
    "cpus": parse_cpus,
    "pids": parse_pids,
}


def parse_limits(value: Any, host: Host, available: Iterable[str]) -> dict[str, Any]:
    """The ``limits`` object of the create CONFIG, every value checked.

    Args:
        value: the client's object.
        host: the cores validation checks against.
        available: the resources this host can limit (its controllers).
    """
    if not isinstance(value, dict):
        raise InvalidRequest(f"limits: {value!r} is not an object of resource to value")
    known = set(available)
    limits: dict[str, Any] = {}
    for name in PARSERS:
        if name in value:
            if name not in known:
                raise InvalidRequest(
                    f"limits: {name} cannot be limited on this host (no controller)"
                )
            try:
                limits[name] = PARSERS[name](value[name], host)
            except InvalidRequest as exc:
                raise InvalidRequest(f"limits: {exc.message}") from None
    unknown = set(value) - set(PARSERS)
    if unknown:
        raise InvalidRequest(
            f"limits: unknown resource {', '.join(map(repr, sorted(unknown)))} "
            f"(known: {', '.join(PARSERS)})"
        )
    return limits


# -- cpuset syntax ----------------------------------------------------------------


class MissingCore(ValueError):
    """A cpuset list names a core at or above the limit given to :func:`cpuset_cores`."""

    def __init__(self, core: int) -> None:
        super().__init__(f"core {core} does not exist on this host")
        self.core = core


def cpuset_cores(text: str, limit: int | None = None) -> frozenset[int]:
    """The cores of a cpuset list ("0-2,5" -> {0, 1, 2, 5}); "" is the empty set.

    Args:
        text: the list, as the kernel writes it (a trailing newline is allowed).
        limit: refuse core numbers at or above it (keeps "0-99999999" from building
            a huge set before it is found not to exist).

    Raises:
        ValueError: the text is not a cpuset list (:class:`MissingCore` past *limit*).
    """
    text = text.strip()
    if not text:
        return frozenset()
    if not _CPUSET_RE.match(text):
        raise ValueError('not a list of cores such as "0-3" or "1,3"')
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if low > high:
            raise ValueError(f"range {part} goes backwards")
        if limit is not None and high >= limit:
            raise MissingCore(high)
        cores.update(range(low, high + 1))
    return frozenset(cores)


def format_cpuset(cores: Iterable[int]) -> str:
    """The kernel's canonical form of a set of cores ({0, 1, 2, 5} -> "0-2,5")."""
    ordered = sorted(set(cores))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


# -- conversions shared by both hierarchies ---------------------------------------


def quota_for(cpus: float, period_us: int = CFS_PERIOD_US) -> int:
    """CFS quota (µs per period) that gives *cpus* cores."""
    return max(MIN_QUOTA_US, round(cpus * period_us))


def cpus_for(quota_us: int, period_us: int) -> float:
    """Cores a CFS quota gives, rounded to what a client would have asked (0.5, not 0.49999)."""
    return round(quota_us / period_us, 4)
