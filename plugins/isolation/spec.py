"""Render the launch spec read by ``corral-init launch`` (see README.md beside this file)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from plugins.isolation.seccomp import Filters
from plugins.isolation.userns import HOST_IDS, IdMap
from supervisor.api import LaunchPlan, Mount

#: /dev of every container: (name, major, minor, mode).
DEVICES = (
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
)
#: /dev of a container made with ``fuse``, besides.
FUSE_DEVICE = ("fuse", 10, 229, 0o666)

#: Kernel interfaces a container has no business reading: hidden behind /dev/null.
MASKED_FILES = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
)
MASKED_DIRS = ("/proc/acpi", "/proc/scsi")
MASKED_SYS_DIRS = ("/sys/firmware",)
#: Kernel settings that are host-wide: read-only even for privileged jobs
#: (a writable /proc/sys/kernel/core_pattern alone would be a way out).
READ_ONLY_PROC = ("/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq")

PROC_MOUNT = Mount("proc", "proc", "/proc", ("nosuid", "nodev", "noexec", "mkdir"))
SYSTEM_MOUNTS = (
    Mount("sysfs", "sysfs", "/sys", ("ro", "nosuid", "nodev", "noexec", "mkdir")),
    Mount("tmpfs", "tmpfs", "/dev", ("nosuid", "noexec", "mkdir"), "mode=755,size=1024k"),
)
LATE_SYSTEM_MOUNTS = (
    Mount(
        "devpts",
        "devpts",
        "/dev/pts",
        ("nosuid", "noexec", "mkdir"),
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    Mount(
        "tmpfs", "shm", "/dev/shm", ("nosuid", "nodev", "noexec", "mkdir"), "mode=1777,size=65536k"
    ),
)


class SpecError(ValueError):
    """A value cannot be written into the spec (it holds a TAB or newline)."""


def _field(value: str) -> str:
    if "\t" in value or "\n" in value or "\0" in value:
        raise SpecError(f"{value!r} contains a TAB, newline or NUL")
    return value


def _line(*fields: str) -> str:
    return "\t".join(_field(f) for f in fields) + "\n"


def _mount(m: Mount) -> str:
    return _line("mount", m.fstype, m.source, m.target, ",".join(m.flags) or "-", m.data or "-")


def _mapped(m: Mount, ids: IdMap) -> Mount:
    """*m* as the init mounts it for a container with *ids*: the root overlay and binds
    of host paths id-mapped when the container has ids of its own."""
    if ids.own and "host" not in m.flags and ("bind" in m.flags or m.fstype == "overlay"):
        return dataclasses.replace(m, flags=(*m.flags, "idmap"))
    return m


def _owned_by_root(m: Mount, ids: IdMap) -> Mount:
    """A tmpfs of the set-up, its root directory the container root's."""
    if not ids.own:
        return m
    return dataclasses.replace(m, data=f"{m.data},uid={ids.first},gid={ids.first}")


def render_setup(
    plan: LaunchPlan,
    hostname: str,
    socket_path: Path,
    label: Path,
    filters: Filters | None = None,
    ids: IdMap = HOST_IDS,
    admin: bool = False,
) -> str:
    """The container's set-up: label, jobs' seccomp filters, ids, root, root mount,
    system mounts, devices, identity, socket, /proc. The label (*label*, the container's
    directory) is what the launcher's and its init's cmdline will read (see
    ``corral_startup``). *filters* None: the jobs run unfiltered. *admin*: the jobs'
    own mount namespace, privileged ones with CAP_SYS_ADMIN, and /dev/fuse (the
    README's ``admin``).

    Sent as soon as the root is planned: the launcher applies the lines as they
    arrive, up to the proc mount, while the daemon still makes the cgroups; PID 1
    applies the proc mount and what lies in /proc.
    """
    lines = [_line("label", str(label))]
    if filters is not None:
        lines.append(_line("seccomp", *filters.spec_fields()))
    lines.append(_line("userns", *ids.spec_fields()))
    if admin:
        lines.append(_line("admin"))
    lines.append(_line("root", str(plan.root_dir)))
    # Mounts on host paths (e.g. the disk-quota filesystem holding the overlay's
    # upper layer) come first: the root mount may need them.
    lines += [_mount(m) for m in plan.mounts if "host" in m.flags]
    if plan.root_mount is not None:
        lines.append(_mount(_mapped(plan.root_mount, ids)))
    sysfs, dev = SYSTEM_MOUNTS
    lines += [_mount(sysfs), _mount(_owned_by_root(dev, ids))]
    devices = (*DEVICES, FUSE_DEVICE) if admin else DEVICES
    lines += [
        _line("mknod", f"/dev/{name}", "c", str(major), str(minor), f"{mode:o}")
        for name, major, minor, mode in devices
    ]
    devpts, shm = LATE_SYSTEM_MOUNTS
    lines += [_mount(devpts), _mount(_owned_by_root(shm, ids))]
    lines += _symlinks(
        (
            ("pts/ptmx", "/dev/ptmx"),
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
        )
    )
    lines.append(_line("mkdir", "/tmp", "1777"))
    lines += [_masked_dir(path) for path in MASKED_SYS_DIRS]
    lines.append(_line("hostname", hostname))
    lines.append(_line("loopback"))
    lines.append(_line("socket", str(socket_path)))
    lines.append(_mount(PROC_MOUNT))
    lines += [
        _mount(Mount("none", "/dev/null", path, ("bind", "optional"))) for path in MASKED_FILES
    ]
    lines += [_masked_dir(path) for path in MASKED_DIRS]
    # Before pivot the container's /proc is visible at ROOT/proc: bind it onto itself read-only.
    lines += [
        _mount(Mount("none", f"{plan.root_dir}{path}", path, ("bind", "rec", "ro", "optional")))
        for path in READ_ONLY_PROC
    ]
    return "".join(lines)


def render_rest(plan: LaunchPlan, ids: IdMap = HOST_IDS) -> str:
    """Sent at launch: the plan's own mounts (made by PID 1, in order), the cgroups
    the launcher joins before it forks PID 1 into them, and the end of the spec."""
    lines = [_mount(_mapped(m, ids)) for m in plan.mounts if "host" not in m.flags]
    lines += [_line("cgroup", str(p)) for p in plan.cgroup_procs]
    lines.append(_line("end"))
    return "".join(lines)


def _masked_dir(path: str) -> str:
    return _mount(Mount("tmpfs", "tmpfs", path, ("ro", "optional"), "size=4k"))


def _symlinks(pairs: Iterable[tuple[str, str]]) -> list[str]:
    return [_line("symlink", target, path) for target, path in pairs]
