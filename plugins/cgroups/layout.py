"""Where each controller lives on this host: a v1 hierarchy, the v2 tree, or nowhere.

Detected once at daemon start from ``/proc/self/mountinfo``. A controller
mounted as a v1 hierarchy is used there (a controller can be bound to one
hierarchy only); otherwise it is used on the v2 tree if the v2 root lists it in
``cgroup.controllers``. So one detection covers the three layouts found in the
wild: pure v1, hybrid (systemd's: v1 controllers plus a v2 mount with none, as on
these machines) and pure v2.

Every other mounted hierarchy (v1 ``blkio``, ``name=systemd``..., a hybrid host's v2
tree) is placed too, as a *bare* hierarchy: a container gets its directory there
under the parent, so that none of its processes stays in the daemon's cgroup (the
host's root, often) of any hierarchy, where a privileged job with a user and
cgroup namespace could make cgroups of its own.

On v2, ``cpuacct`` (CPU usage in ``cpu.stat``) and ``freezer``
(``cgroup.freeze``) are part of the core and need no controller; ``devices``
is an eBPF program (:mod:`plugins.cgroups.devices`), placed when the kernel
loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from plugins.cgroups import devices
from plugins.cgroups.backend import CONTROLLERS, CPUACCT, DEVICES, FREEZER, Backend, read
from plugins.cgroups.v1 import V1
from plugins.cgroups.v2 import V2

MOUNTINFO = Path("/proc/self/mountinfo")

BACKENDS: dict[int, Backend] = {1: V1(), 2: V2()}
#: Controllers that are part of the v2 core (present in every v2 cgroup).
V2_CORE = frozenset({CPUACCT, FREEZER})


@dataclass(frozen=True)
class Placement:
    """One controller's home: the cgroup version and the root of its hierarchy."""

    version: int
    root: Path

    @property
    def backend(self) -> Backend:
        """The backend that knows this version's files."""
        return BACKENDS[self.version]


@dataclass(frozen=True)
class Layout:
    """The placement of every controller Corral can use on this host."""

    placements: dict[str, Placement] = field(default_factory=dict)

    def has(self, controller: str) -> bool:
        """Whether the controller can be used."""
        return controller in self.placements

    def hierarchies(self) -> dict[Path, Placement]:
        """Each distinct hierarchy root with its placement (co-mounted controllers share one)."""
        return {p.root: p for p in self.placements.values()}

    def describe(self) -> dict[str, str]:
        """For the start-up log: ``{"memory": "v1 /sys/fs/cgroup/memory", ...}``."""
        return {c: f"v{p.version} {p.root}" for c, p in self.placements.items()}


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


#: What a hierarchy that holds no controller of Corral's is placed as (``hierarchy:blkio``,
#: ``hierarchy:name=systemd``, ``hierarchy:cgroup2``): containers get a directory there
#: too, joined and removed like the others, with nothing set in it.
BARE_PREFIX = "hierarchy:"
#: Mount options of a v1 cgroup mount that do not name its hierarchy.
_GENERIC_OPTIONS = frozenset({"rw", "ro", "xattr", "clone_children", "noprefix", "cpuset_v2_mode"})


def is_bare(controller: str) -> bool:
    """Whether a placement's name is a hierarchy without Corral's controllers (see :data:`BARE_PREFIX`)."""
    return controller.startswith(BARE_PREFIX)


def parse_mountinfo(text: str) -> tuple[dict[str, Path], Path | None]:
    """The v1 hierarchies' mount points and the v2 mount point found in mountinfo text.

    Returns:
        (controller -> mount point for v1 hierarchies, the first cgroup2 mount or None).
        A v1 hierarchy holding none of :data:`CONTROLLERS` is keyed by its name with
        :data:`BARE_PREFIX` (``hierarchy:blkio``).
    """
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point = Path(_unescape(fields[4]))
        fstype, super_options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup":
            ours = [option for option in super_options if option in CONTROLLERS]
            for option in ours:
                v1.setdefault(option, mount_point)
            names = [
                o
                for o in super_options
                if o not in _GENERIC_OPTIONS and "=" not in o[:-1] or o.startswith("name=")
            ]
            if not ours and names:
                v1.setdefault(BARE_PREFIX + ",".join(names), mount_point)
    return v1, v2


def detect(
    mountinfo: str | None = None,
    v2_controllers: Callable[[Path], set[str]] | None = None,
    device_filter: Callable[[], bool] = devices.supported,
) -> Layout:
    """Find every controller's placement.

    Args:
        mountinfo: text of ``/proc/self/mountinfo`` (read if None).
        v2_controllers: reads the controllers a v2 root offers (its
            ``cgroup.controllers``); replaceable for tests.
        device_filter: whether the kernel loads the v2 device filter (asked only
            when ``devices`` is not on v1); replaceable for tests.
    """
    if mountinfo is None:
        mountinfo = MOUNTINFO.read_text()
    if v2_controllers is None:
        v2_controllers = _read_v2_controllers
    v1, v2_root = parse_mountinfo(mountinfo)
    offered = v2_controllers(v2_root) if v2_root is not None else set()
    placements: dict[str, Placement] = {}
    for controller, mount_point in v1.items():
        if is_bare(controller):
            placements[controller] = Placement(1, mount_point)
    for controller in CONTROLLERS:
        if controller in v1:
            placements[controller] = Placement(1, v1[controller])
        elif v2_root is not None:
            if controller == DEVICES:
                available = device_filter()
            else:
                available = controller in V2_CORE or controller in offered
            if available:
                placements[controller] = Placement(2, v2_root)
    if v2_root is not None and not any(p.version == 2 for p in placements.values()):
        # A hybrid host's v2 tree, with no controller in it: containers must not stay in
        # the daemon's cgroup there (issue #17, hole 5).
        placements[BARE_PREFIX + "cgroup2"] = Placement(2, v2_root)
    return Layout(placements)


def _read_v2_controllers(root: Path) -> set[str]:
    try:
        return set(read(root / "cgroup.controllers").split())
    except OSError:
        return set()
