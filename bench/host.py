"""The host: commands, processes and memory (/proc), the cgroup v2 quirk, the clean-up.

Everything here reads or changes the machine itself, not one tool: the
:class:`Janitor` removes what the run made, :class:`V1Controllers` works around
the hybrid cgroup layout crun and podman refuse, and :func:`leftovers` checks at
the end that nothing of the run is left.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from plugins.isolation.build import build_init, is_current, source_digest
from supervisor.testing import INSTALLED_INIT, INSTALLED_ROOTFS, REPO

#: The container init (the installed one if built from this checkout's source, else
#: built from it, as the daemon's protocol must match) and base rootfs, shared with
#: the peers.
INIT = (
    INSTALLED_INIT
    if is_current(INSTALLED_INIT, source_digest())
    else build_init(Path("/tmp/corral-bench-init/corral-init"))
)
BASE_ROOTFS = INSTALLED_ROOTFS
CGROUP_ROOT = Path("/sys/fs/cgroup")
PY_SPY = Path(sys.executable).parent / "py-spy"

#: The bench daemon's own nftables table, device-name prefix and address pool: a network
#: plugin that is live then never touches another daemon's. The pool holds the density run.
NET_TABLE = "corralbench"
NET_PREFIX = "cbn"
NET_POOL = "10.237.0.0/19"
#: Argument of every idle workload's `sleep`, to find them in /proc.
SLEEP_SECONDS = "3600123"
DEVNULL = subprocess.DEVNULL


# -- commands ------------------------------------------------------------------------


def log(*parts: Any) -> None:
    """A progress line on stderr, with the time."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}]", *parts, file=sys.stderr, flush=True)


def run_cmd(
    cmd: list[str], timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run *cmd* with its output captured; with *check*, raise if it fails."""
    result = subprocess.run(cmd, stdin=DEVNULL, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return result


def timed(cmd: list[str], timeout: float = 120) -> float:
    """Run *cmd* with no stdio; return wall ms; raise if it fails."""
    t0 = time.perf_counter()
    result = subprocess.run(
        cmd, stdin=DEVNULL, stdout=DEVNULL, stderr=subprocess.PIPE, timeout=timeout
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if result.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]}: exit {result.returncode}: {result.stderr.decode(errors='replace').strip()[-300:]}"
        )
    return elapsed


def first_line(cmd: list[str]) -> str:
    """The first line *cmd* prints (a version), or "not installed"."""
    try:
        out = run_cmd(cmd, timeout=30)
        text = (out.stdout or out.stderr).decode(errors="replace").strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


# -- processes and memory --------------------------------------------------------------


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])  # kB
    return out


def smaps(pid: int) -> dict[str, int]:
    """Rss and Pss (KiB) of *pid* from smaps_rollup; empty if it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def rss_kib(pid: int) -> int:
    """The Rss (KiB) of *pid*; 0 if it is gone."""
    return smaps(pid).get("Rss", 0)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) in clock ticks of *pid*."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


@dataclass(frozen=True, slots=True)
class Proc:
    """A live process as /proc showed it."""

    pid: int
    ppid: int
    comm: str
    state: str
    #: The target of /proc/PID/ns/pid, e.g. "pid:[4026531836]".
    pidns: str
    argv: list[bytes]


def processes() -> list[Proc]:
    """Every live (non-zombie) process: pid, ppid, comm, state, pid namespace, argv."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            head, tail = stat.rsplit(")", 1)
            comm = head.split("(", 1)[1]
            fields = tail.split()
            state = fields[0]
            if state in ("Z", "X"):
                continue  # PID 1 here reaps orphans only every few seconds: never count zombies
            pidns = os.readlink(f"/proc/{pid}/ns/pid")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except (OSError, IndexError):
            continue
        found.append(Proc(pid, int(fields[1]), comm, state, pidns, argv))
    return found


def is_idle_sleep(p: Proc) -> bool:
    """Whether *p* is one of the run's idle workloads (``sleep SLEEP_SECONDS``)."""
    return p.comm == "sleep" and SLEEP_SECONDS.encode() in b" ".join(p.argv)


# -- clean-up ----------------------------------------------------------------------------


def cgroups_named(prefix: str) -> list[Path]:
    """Cgroups named with *prefix* in every hierarchy, up to 4 levels down."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        found += _find_dirs(hierarchy, prefix, depth=4)
    return found


def _find_dirs(root: Path, prefix: str, depth: int) -> list[Path]:
    out: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return out
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if e.name.startswith(prefix):
                out.append(Path(e.path))
            elif depth > 1:
                out += _find_dirs(Path(e.path), prefix, depth - 1)
    return out


def net_devices() -> list[str]:
    """Host network devices named with the bench daemon's prefix."""
    out = run_cmd(["ip", "-o", "link", "show"]).stdout.decode()
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(NET_PREFIX)]


#: A peer's clean-up: removes what the run left in the tool's state, returns notes on
#: what it could not remove, raises when the tool fails.
Cleaner = Callable[[], list[str]]


class Janitor:
    """Remembers what the run made, and removes it all in :meth:`clean` (idempotent)."""

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.prefix = prefix
        self.workdir = workdir
        #: (tool, clean-up) of each peer; :class:`bench.peers.Peers` adds them.
        self.cleaners: list[tuple[str, Cleaner]] = []
        self.notes: list[str] = []

    def clean(self) -> None:
        """Remove the peers' containers, then the run's cgroups and the daemon's network."""
        self.clean_peers()
        self.clean_cgroups()
        try:
            self.clean_network()
        except Exception as exc:
            self.notes.append(f"network cleanup: {exc}")

    def clean_peers(self) -> None:
        """Remove the containers the peers left, each peer on its own (one failing is noted)."""
        for tool, cleaner in self.cleaners:
            try:
                self.notes += cleaner()
            except Exception as exc:  # keep cleaning the rest
                self.notes.append(f"{tool} cleanup: {exc}")

    def clean_network(self) -> None:
        """The bench daemon's nftables table and devices, if its network plugin left any."""
        if (
            shutil.which("nft")
            and run_cmd(["nft", "list", "table", "inet", NET_TABLE]).returncode == 0
        ):
            run_cmd(["nft", "delete", "table", "inet", NET_TABLE])
            self.notes.append(f"removed the nftables table inet {NET_TABLE} left by corrald")
        for name in net_devices():
            run_cmd(["ip", "link", "delete", name])
            self.notes.append(f"removed the network device {name} left by corrald")

    def clean_cgroups(self) -> None:
        """Remove every cgroup named with this run's prefix (peers' and Corral's), deepest first."""
        for _ in range(20):
            left = cgroups_named(self.prefix)
            if not left:
                return
            for path in sorted(left, key=lambda p: len(p.parts), reverse=True):
                for sub in sorted(
                    (d for d in path.rglob("*") if d.is_dir()),
                    key=lambda p: len(p.parts),
                    reverse=True,
                ):
                    with suppress(OSError):
                        sub.rmdir()
                with suppress(OSError):
                    path.rmdir()
            # A cgroup whose last process just exited cannot be removed at once.
            time.sleep(0.25)
        self.notes.append(f"cgroups left behind: {[str(p) for p in cgroups_named(self.prefix)]}")


def leftovers(prefix: str, workdir: Path) -> dict[str, Any]:
    """What of the run is still on the host; the last section of RESULTS.md."""
    out: dict[str, Any] = {}
    for tool in ("crun", "runc"):
        if shutil.which(tool):
            ids = run_cmd([tool, "list", "-q"]).stdout.decode().split()
            out[f"{tool} list"] = ids or "empty"
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if "hugetlb" in line or str(workdir) in line
    ]
    out["mounts (hugetlb or work dir)"] = mounts or "none"
    out["work dir"] = "removed" if not workdir.exists() else f"{workdir} still exists"
    sleeps = [p.pid for p in processes() if is_idle_sleep(p)]
    out["idle workloads left"] = sleeps or "none"
    out["cgroups with the run's prefix"] = [str(p) for p in cgroups_named(prefix)] or "none"
    out["cgroup2 root controllers"] = v2_controllers()
    if shutil.which("nft"):
        listed = run_cmd(["nft", "list", "table", "inet", NET_TABLE]).returncode == 0
        out[f"nftables table inet {NET_TABLE}"] = "still there" if listed else "none"
    out[f"network devices {NET_PREFIX}*"] = net_devices() or "none"
    return out


# -- the cgroup v2 quirk -----------------------------------------------------------------


def cgroup2_root() -> Path | None:
    """Where the cgroup2 hierarchy is mounted, if it is."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[:1] == ["cgroup2"]:
            return Path(before.split()[4])
    return None


def v2_controllers() -> list[str]:
    """The controllers the cgroup2 root lists."""
    root = cgroup2_root()
    if root is None:
        return []
    try:
        return (root / "cgroup.controllers").read_text().split()
    except OSError:
        return []


def hierarchy_cgroups(controller: str) -> int | None:
    """num_cgroups of *controller*'s hierarchy from /proc/cgroups."""
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        f = line.split()
        if f[0] == controller:
            return int(f[2])
    return None


class V1Controllers:
    """crun 1.8.1 and podman refuse a hybrid host whose cgroup2 root lists a controller.

    For the run, every controller the v2 root lists (here ``hugetlb``) is bound to a
    v1 hierarchy of its own at /sys/fs/cgroup/NAME; on exit the hierarchy is
    unmounted once empty, so the kernel gives the controller back to v2.
    """

    def __init__(self) -> None:
        self.mounted: list[Path] = []
        #: What was mounted, and the v2 root's controllers before, during and after.
        self.report: dict[str, Any] = {}

    def __enter__(self) -> V1Controllers:
        listed = v2_controllers()
        self.report["v2_root_controllers_before"] = listed
        for name in listed:
            path = CGROUP_ROOT / name
            if os.path.ismount(path):
                continue
            path.mkdir(exist_ok=True)
            result = run_cmd(["mount", "-t", "cgroup", "-o", name, "none", str(path)])
            if result.returncode != 0:
                with suppress(OSError):
                    path.rmdir()
                self.report.setdefault("errors", []).append(
                    f"mount {name}: {result.stderr.decode(errors='replace').strip()}"
                )
                continue
            self.mounted.append(path)
            log(f"mounted a v1 {name} hierarchy at {path} for the run")
        self.report["mounted"] = [str(p) for p in self.mounted]
        self.report["v2_root_controllers_during"] = v2_controllers()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.report.get("done") or "v2_root_controllers_before" not in self.report:
            return
        self.report["done"] = True
        for path in self.mounted:
            name = path.name
            deadline = time.monotonic() + 15
            # cgroups rmdir'ed a moment ago still count until the kernel frees them; a
            # hierarchy unmounted with children is never released (the controller
            # would stay off v2 until the next mount + cleanup).
            while time.monotonic() < deadline and (hierarchy_cgroups(name) or 1) > 1:
                time.sleep(0.1)
            left = hierarchy_cgroups(name)
            if left and left > 1:
                self.report.setdefault("errors", []).append(
                    f"{name}: {left - 1} child cgroup(s) still exist at unmount; the hierarchy will linger"
                )
            result = run_cmd(["umount", str(path)])
            if result.returncode != 0:
                self.report.setdefault("errors", []).append(
                    f"umount {path}: {result.stderr.decode(errors='replace').strip()}"
                )
                continue
            with suppress(OSError):
                path.rmdir()
            log(f"unmounted {path}")
        if self.mounted:
            deadline = time.monotonic() + 10
            want = set(self.report["v2_root_controllers_before"])
            while time.monotonic() < deadline and not want <= set(v2_controllers()):
                time.sleep(0.2)
        self.report["v2_root_controllers_after"] = v2_controllers()


# -- what the run measured on --------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU, cores, memory, kernel, Debian release and load average at the start."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    debian = (
        Path("/etc/debian_version").read_text().strip()
        if Path("/etc/debian_version").exists()
        else "?"
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(meminfo()["MemTotal"] / 1024 / 1024, 1),
        "kernel": platform.release(),
        "debian": debian,
        "loadavg_start": loadavg(),
    }


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


def versions(plugins: list[str]) -> dict[str, str]:
    """Versions of Corral (the tree's commit, the daemon's *plugins*) and of every tool."""
    git = run_cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.decode().strip()
    dirty = run_cmd(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]
    ).stdout
    untracked = run_cmd(["git", "-C", str(REPO), "status", "--porcelain"]).stdout
    return {
        "corral": f"{git} (+{len(dirty.splitlines())} modified, "
        f"{len(untracked.splitlines()) - len(dirty.splitlines())} untracked files in the tree)",
        "corral plugins": ", ".join(plugins) or "?",
        "python": platform.python_version(),
        "trio": trio.__version__,
        "corral-init": f"{INIT} ({INIT.stat().st_size} bytes)" if INIT.exists() else "missing",
        "crun": first_line(["crun", "--version"]),
        "runc": first_line(["runc", "--version"]),
        "bwrap": first_line(["bwrap", "--version"]),
        "podman": first_line(["podman", "--version"]),
        "unshare": first_line(["unshare", "--version"]),
        "nsenter": first_line(["nsenter", "--version"]),
        "busybox": first_line([str(BASE_ROOTFS / "bin" / "busybox")]),
        "py-spy": first_line([str(PY_SPY), "--version"]) if PY_SPY.exists() else "not installed",
    }
