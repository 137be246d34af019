"""cgroup v1: one hierarchy per controller (``/sys/fs/cgroup/memory``, ``.../cpu``...).

What v1 needs that v2 does not:

- ``cpuset.cpus`` and ``cpuset.mems`` are empty in a new cgroup, and a task
  cannot join until both are set: every level copies its parent's.
- Swap is limited by ``memory.memsw.limit_in_bytes``, which may never be below
  ``memory.limit_in_bytes``; the two are written in the order that keeps that
  true. Without memsw accounting (``swapaccount=0``) the container gets
  ``memory.swappiness`` 0 instead, so it is never pushed to swap.
- The devices controller: deny everything, then allow the few character devices
  a container's ``/dev`` holds.

A new v1 cgroup starts with its parent's device list, swappiness and OOM
setting, and, with ``cgroup.clone_children``, its cpus and mems. So Corral's
own parent is given what every container needs, once, and a container's
directory is only read to check it (written when it differs: a parent that
had containers when the daemon started cannot change its device list).
"""

from __future__ import annotations

import os
from pathlib import Path

from plugins.cgroups.backend import (
    CPUACCT,
    CPUSET,
    DEVICES,
    MEMORY,
    PIDS,
    Backend,
    CgroupError,
    MemoryStat,
    read,
    read_int,
    read_keyed,
    read_keyed_if_present,
    write,
)
from plugins.cgroups.counters import Counter, keyed, number
from plugins.cgroups.devices import ALLOWED_DEVICES
from plugins.cgroups.values import cpus_for, quota_for

#: ``devices.list`` of a cgroup that allows every device (the kernel's default).
ALL = "a *:* rwm"
#: The unit of ``cpuacct.stat`` (USER_HZ).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def devices_rules(listed: set[str] | None = None) -> list[tuple[str, str]]:
    """The writes that make the device list *listed* (None: the kernel's allow-all) the
    container's: (file, rule). From allow-all, deny-all first, which the kernel refuses
    while the cgroup has children; from another list (an older daemon's), rule by rule."""
    if listed is None or ALL in listed:
        return [("devices.deny", "a")] + [("devices.allow", rule) for rule in ALLOWED_DEVICES]
    return [("devices.deny", rule) for rule in sorted(listed - set(ALLOWED_DEVICES))] + [
        ("devices.allow", rule) for rule in ALLOWED_DEVICES if rule not in listed
    ]


class V1(Backend):
    """The v1 files."""

    version = 1
    # A thread's own move ("0" to ``tasks``) skips the global threadgroup lock; a
    # process's (``cgroup.procs``) takes it and waits an RCU grace period, 5-14 ms
    # here. The launcher is single-threaded: moving its one thread moves it.
    join_file = "tasks"
    renames = True
    counters = {
        MEMORY: (
            Counter("memory_stat", "usage", "memory.usage_in_bytes", number),
            Counter("memory_stat", "max_usage", "memory.max_usage_in_bytes", number),
            Counter("memory_stat", "oom_count", "memory.oom_control", keyed("oom_kill")),
        ),
        CPUACCT: (Counter("cpu_stat", "usage", "cpuacct.usage", number),),
        PIDS: (Counter("pids", "current", "pids.current", number),),
    }

    def setup_parent(self, controller: str, path: Path) -> None:
        if controller == CPUSET:
            _inherit_cpuset(path)
        elif controller == MEMORY:
            # Without hierarchy a child's usage does not count against its parent's
            # limit. Always on since Linux 5.x; older kernels allow setting it only
            # while the cgroup has no children, hence "try".
            if read(path / "memory.use_hierarchy").strip() == "0":
                try:
                    write(path / "memory.use_hierarchy", "1")
                except CgroupError:
                    pass

    def setup_containers_parent(self, controller: str, path: Path) -> None:
        if controller == CPUSET:
            if read(path / "cgroup.clone_children").strip() != "1":
                write(path / "cgroup.clone_children", "1")
        elif controller == MEMORY:
            _container_memory(path)
        elif controller == DEVICES:
            _container_devices(path)

    def setup_child(self, controller: str, path: Path) -> None:
        if controller == CPUSET:
            _inherit_cpuset(path)
        elif controller == MEMORY:
            _container_memory(path)
        elif controller == DEVICES:
            _container_devices(path)

    # -- memory ---------------------------------------------------------------------

    def set_memory(self, path: Path, limit: int) -> None:
        what = f"mem {limit}"
        mem = path / "memory.limit_in_bytes"
        memsw = path / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            write(mem, str(limit), what)
            return
        first, second = memory_write_order(limit, read_int(memsw), mem, memsw)
        old = read(first)
        write(first, str(limit), what)
        try:
            write(second, str(limit), what)
        except BaseException:
            write(first, old)  # put the pair back as it was: nothing changes
            raise

    def memory_limit(self, path: Path) -> int | None:
        return read_int(path / "memory.limit_in_bytes")

    def memory_stat(self, path: Path) -> MemoryStat:
        return MemoryStat(
            usage=read_int(path / "memory.usage_in_bytes"),
            max_usage=read_int(path / "memory.max_usage_in_bytes"),
            limit=self.memory_limit(path),
            oom_count=self.oom_kills(path),
            details=read_keyed_if_present(path / "memory.stat"),  # Warden's names are v1's own
        )

    def oom_kills(self, path: Path) -> int:
        # ``oom_kill`` appeared in Linux 4.13; older kernels only signal the eventfd.
        return read_keyed(path / "memory.oom_control").get("oom_kill", 0)

    # -- cpu --------------------------------------------------------------------------

    def set_cpu_shares(self, path: Path, shares: int) -> None:
        write(path / "cpu.shares", str(shares), f"cpu {shares}")

    def cpu_shares(self, path: Path, written: int | None) -> int:
        return int(read(path / "cpu.shares"))

    def set_cpu_quota(self, path: Path, cpus: float) -> None:
        period = int(read(path / "cpu.cfs_period_us"))
        write(path / "cpu.cfs_quota_us", str(quota_for(cpus, period)), f"cpus {cpus}")

    def cpu_quota(self, path: Path) -> float | None:
        quota = int(read(path / "cpu.cfs_quota_us"))
        if quota < 0:
            return None
        return cpus_for(quota, int(read(path / "cpu.cfs_period_us")))

    def cpu_usage_ns(self, path: Path) -> int:
        return int(read(path / "cpuacct.usage"))

    def cpu_user_system_ns(self, path: Path) -> tuple[int, int]:
        ticks = read_keyed(path / "cpuacct.stat")  # in USER_HZ
        per_tick = 1_000_000_000 // CLOCK_TICKS
        return ticks["user"] * per_tick, ticks["system"] * per_tick

    # -- cpuset -------------------------------------------------------------------------

    def set_cpuset(self, path: Path, cpus: str) -> None:
        write(path / "cpuset.cpus", cpus, f"cpuset {cpus!r}")

    def cpuset(self, path: Path) -> str:
        return read(path / "cpuset.cpus").strip()

    def available_cores(self, path: Path) -> str:
        # A child may only be given cores of its parent; a parent not made yet will
        # copy its own parent's.
        while not (path / "cpuset.cpus").exists() and path != path.parent:
            path = path.parent
        return read(path / "cpuset.cpus").strip()

    # -- freezer --------------------------------------------------------------------------

    def start_freeze(self, path: Path) -> None:
        write(path / "freezer.state", "FROZEN")

    def frozen(self, path: Path) -> bool:
        return read(path / "freezer.state").strip() == "FROZEN"

    def thaw(self, path: Path) -> None:
        write(path / "freezer.state", "THAWED")


def memory_write_order(
    limit: int, memsw_now: int | None, mem: Path, memsw: Path
) -> tuple[Path, Path]:
    """In which order to write the two memory files so that memsw >= mem holds throughout.

    Raising above the current memsw limit must move memsw first; anything else
    (lowering, or raising within memsw) moves the memory limit first.
    """
    if memsw_now is not None and limit > memsw_now:
        return memsw, mem
    return mem, memsw


def _container_memory(path: Path) -> None:
    # A parent with oom_kill_disable=1 would hand it down: the container would
    # then hang at its limit instead of having a process killed.
    if read(path / "memory.oom_control").startswith("oom_kill_disable 1"):
        write(path / "memory.oom_control", "0")
    swappiness = path / "memory.swappiness"
    if not (path / "memory.memsw.limit_in_bytes").exists() and swappiness.exists():
        if read(swappiness).strip() != "0":
            write(swappiness, "0")


def _container_devices(path: Path) -> None:
    listed = set(read(path / "devices.list").splitlines())
    if listed == set(ALLOWED_DEVICES):
        return
    if ALL in listed and any(p.is_dir() for p in path.iterdir()):
        return  # the kernel refuses deny-all while there are children; they have their own
    for name, rule in devices_rules(listed):
        write(path / name, rule)


def _inherit_cpuset(path: Path) -> None:
    """Copy the parent's cpus and mems into an empty cpuset cgroup (a task cannot join otherwise)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not read(path / name).strip():
            write(path / name, read(path.parent / name).strip())
