"""cgroup v2: one unified tree; controllers are switched on per level.

What v2 needs that v1 does not:

- A controller works in a cgroup only if every level above enables it in
  ``cgroup.subtree_control`` (Corral does so from the root down to its parent;
  those levels hold no process, as v2 requires).
- Swap has its own limit: ``memory.swap.max`` 0 makes ``memory.max`` real.
- ``cpu.weight`` (1..10000, default 100) replaces ``cpu.shares`` (2..262144,
  default 1024); see :func:`shares_to_weight`.
- ``cpu.max`` holds quota and period in one file: ``"50000 100000"`` or ``"max 100000"``.
- Freezing (``cgroup.freeze``), killing (``cgroup.kill``) and CPU usage
  (``cpu.stat``) are in the core, with no controller to enable.
- There is no devices controller: an eBPF program attached to the container's
  cgroup allows the same devices as v1's list (:mod:`plugins.cgroups.devices`).
"""

from __future__ import annotations

import math
from pathlib import Path

from plugins.cgroups import devices
from plugins.cgroups.backend import (
    CPU,
    CPUACCT,
    CPUSET,
    DEVICES,
    MEMORY,
    PIDS,
    Backend,
    MemoryStat,
    read,
    read_int,
    read_keyed,
    read_keyed_if_present,
    write,
)
from plugins.cgroups.counters import Counter, keyed, number
from plugins.cgroups.values import CFS_PERIOD_US, MAX_SHARES, MIN_SHARES, cpus_for, quota_for

#: Controllers that must be enabled in ``cgroup.subtree_control`` (the others are core files).
ENABLED = (MEMORY, CPU, CPUSET, PIDS)
MIN_WEIGHT = 1
MAX_WEIGHT = 10000
#: The fitted curve below goes through these points.
DEFAULT_SHARES = 1024
DEFAULT_WEIGHT = 100


def shares_to_weight(shares: int) -> int:
    """The ``cpu.weight`` for v1 ``cpu.shares``.

    The linear map OCI runtimes used first sends the default 1024 shares to
    weight 39, so a container given the "default" got well under a default v2
    process. Corral uses the curve runc (1.3.2+) and crun (1.23+) switched to,
    quadratic in log2(shares), which maps the three points that matter exactly:
    2 -> 1 (minimum), 1024 -> 100 (default), 262144 -> 10000 (maximum)::

        l = log2(shares)
        weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34))
    """
    if shares <= MIN_SHARES:
        return MIN_WEIGHT
    if shares >= MAX_SHARES:
        return MAX_WEIGHT
    log = math.log2(shares)
    # The epsilon keeps float noise (100.00000000000001) from rounding an exact point up.
    weight = math.ceil(10 ** ((log * log + 125 * log) / 612 - 7 / 34) - 1e-9)
    return min(MAX_WEIGHT, max(MIN_WEIGHT, weight))


def weight_to_shares(weight: int) -> int:
    """The shares a ``cpu.weight`` stands for: the inverse of :func:`shares_to_weight`.

    Several share values map to one weight; this returns the one the inverse
    curve gives, nudged so that ``shares_to_weight(weight_to_shares(w)) == w``.
    """
    if weight <= MIN_WEIGHT:
        return MIN_SHARES
    if weight >= MAX_WEIGHT:
        return MAX_SHARES
    exponent = math.log10(weight) + 7 / 34
    log = (-125 + math.sqrt(125 * 125 + 4 * 612 * exponent)) / 2
    shares = min(MAX_SHARES, max(MIN_SHARES, round(2**log)))
    while shares < MAX_SHARES and shares_to_weight(shares) < weight:
        shares += 1
    while shares > MIN_SHARES and shares_to_weight(shares) > weight:
        shares -= 1
    return shares


#: Warden's ``memory_stat`` names (v1's) for the v2 ``memory.stat`` fields that mean the same.
WARDEN_MEMORY_NAMES = {
    "rss": "anon",
    "cache": "file",
    "mapped_file": "file_mapped",
    "pgfault": "pgfault",
    "pgmajfault": "pgmajfault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
}


def warden_memory_stat(stat: dict[str, int], swap: int | None) -> dict[str, int]:
    """v2's ``memory.stat`` as it is, plus Warden's (v1's) names for what it has: v2
    counts are hierarchical, so each is also its ``total_`` form."""
    out = dict(stat)
    named = {w: stat[v2] for w, v2 in WARDEN_MEMORY_NAMES.items() if v2 in stat}
    if swap is not None:
        named["swap"] = swap
    out.update(named)
    out.update({f"total_{name}": value for name, value in named.items()})
    return out


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """``cpu.max`` as (quota µs or None for ``max``, period µs)."""
    quota, _, period = text.strip().partition(" ")
    return (None if quota == "max" else int(quota)), int(period or CFS_PERIOD_US)


def format_cpu_max(quota: int | None, period: int) -> str:
    """The text for ``cpu.max``."""
    return f"{'max' if quota is None else quota} {period}"


class V2(Backend):
    """The v2 files."""

    version = 2
    counters = {
        MEMORY: (
            Counter("memory_stat", "usage", "memory.current", number),
            Counter("memory_stat", "max_usage", "memory.peak", number),  # Linux 5.19
            Counter("memory_stat", "oom_count", "memory.events", keyed("oom_kill")),
        ),
        CPUACCT: (Counter("cpu_stat", "usage", "cpu.stat", keyed("usage_usec", 1000)),),
        PIDS: (Counter("pids", "current", "pids.current", number),),
    }

    def setup_parent(self, controller: str, path: Path) -> None:
        if controller in ENABLED:
            control = path / "cgroup.subtree_control"
            if controller not in read(control).split():
                write(control, f"+{controller}")

    def setup_containers_parent(self, controller: str, path: Path) -> None:
        """Nothing: a new v2 cgroup inherits none of the settings a container needs."""

    def setup_child(self, controller: str, path: Path) -> None:
        if controller == MEMORY:
            _no_swap(path)
        elif controller == DEVICES:
            devices.attach(path)

    # -- memory ---------------------------------------------------------------------

    def set_memory(self, path: Path, limit: int) -> None:
        _no_swap(path)
        # Unlike v1, a limit below the usage is accepted: the kernel reclaims, then OOM-kills.
        write(path / "memory.max", str(limit), f"mem {limit}")

    def memory_limit(self, path: Path) -> int | None:
        return read_int(path / "memory.max")

    def memory_stat(self, path: Path) -> MemoryStat:
        peak = path / "memory.peak"  # Linux 5.19
        return MemoryStat(
            usage=read_int(path / "memory.current"),
            max_usage=read_int(peak) if peak.exists() else None,
            limit=self.memory_limit(path),
            oom_count=self.oom_kills(path),
            details=warden_memory_stat(
                read_keyed_if_present(path / "memory.stat"),
                read_int(swap) if (swap := path / "memory.swap.current").exists() else None,
            ),
        )

    def oom_kills(self, path: Path) -> int:
        return read_keyed(path / "memory.events").get("oom_kill", 0)

    # -- cpu --------------------------------------------------------------------------

    def set_cpu_shares(self, path: Path, shares: int) -> None:
        write(path / "cpu.weight", str(shares_to_weight(shares)), f"cpu {shares}")

    def cpu_shares(self, path: Path, written: int | None) -> int:
        weight = int(read(path / "cpu.weight"))
        if written is not None and shares_to_weight(written) == weight:
            return written
        return weight_to_shares(weight)

    def set_cpu_quota(self, path: Path, cpus: float) -> None:
        _, period = parse_cpu_max(read(path / "cpu.max"))
        write(path / "cpu.max", format_cpu_max(quota_for(cpus, period), period), f"cpus {cpus}")

    def cpu_quota(self, path: Path) -> float | None:
        quota, period = parse_cpu_max(read(path / "cpu.max"))
        return None if quota is None else cpus_for(quota, period)

    def cpu_usage_ns(self, path: Path) -> int:
        return read_keyed(path / "cpu.stat")["usage_usec"] * 1000

    def cpu_user_system_ns(self, path: Path) -> tuple[int, int]:
        stat = read_keyed(path / "cpu.stat")
        return stat["user_usec"] * 1000, stat["system_usec"] * 1000

    # -- cpuset -------------------------------------------------------------------------

    def set_cpuset(self, path: Path, cpus: str) -> None:
        write(path / "cpuset.cpus", cpus, f"cpuset {cpus!r}")

    def cpuset(self, path: Path) -> str:
        # An empty cpuset.cpus means "the parent's": the effective list is what is in force.
        return read(path / "cpuset.cpus").strip() or read(path / "cpuset.cpus.effective").strip()

    def available_cores(self, path: Path) -> str:
        while not (path / "cpuset.cpus.effective").exists() and path != path.parent:
            path = path.parent
        return read(path / "cpuset.cpus.effective").strip()

    # -- freezer --------------------------------------------------------------------------

    def start_freeze(self, path: Path) -> None:
        write(path / "cgroup.freeze", "1")

    def frozen(self, path: Path) -> bool:
        return read_keyed(path / "cgroup.events").get("frozen") == 1

    def thaw(self, path: Path) -> None:
        write(path / "cgroup.freeze", "0")

    def kill_all(self, path: Path) -> bool:
        kill = path / "cgroup.kill"  # Linux 5.14
        if not kill.exists():
            return False
        write(kill, "1")
        return True


def _no_swap(path: Path) -> None:
    swap = path / "memory.swap.max"  # absent without swap accounting: nothing to limit then
    if swap.exists() and read(swap).strip() != "0":
        write(swap, "0")
