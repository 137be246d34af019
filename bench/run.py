#!/opt/corral/venv/bin/python
"""Corral's benchmark: Corral against crun, runc, bubblewrap, unshare, nsenter and podman.

Run as root from the repository:

    /opt/corral/venv/bin/python bench/run.py            # full run (several minutes)
    /opt/corral/venv/bin/python bench/run.py --quick    # short run for development

It installs the peers (bench/install-peers.sh), starts a private corrald (own
config, socket, depot and cgroup parent, as tests/conftest.py does), measures
cold runs, exec, density, the control plane and output streaming, and writes
bench/RESULTS.md and bench/results.json. See bench/README.md for what is
measured and how. Everything it creates (containers, cgroups, mounts, bundles,
the daemon) is removed before it exits, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import array
import datetime
import functools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from supervisor.client import Client  # noqa: E402

INIT = Path("/usr/local/lib/corral/corral-init")
BASE_ROOTFS = Path("/var/lib/corral/rootfs/base")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PY_SPY = Path(sys.executable).parent / "py-spy"

#: The bench daemon's own nftables table, device-name prefix and address pool.
NET_TABLE = "corralbench"
NET_PREFIX = "cbn"
NET_POOL = "10.237.0.0/19"
#: Argument of every idle workload's `sleep`, to find them in /proc.
SLEEP_SECONDS = "3600123"
DEVNULL = subprocess.DEVNULL

TARGETS = {
    "cold": "<= 1.0x `crun run` (median)",
    "exec": "<= 1.5x nsenter (median)",
    "density_pss": "<= 200 KiB PSS per idle container besides the workload at 500",
    "density_start": "500 started no slower than 500 `crun run -d` (<= 1.0x)",
    "ping_p99": "ping p99 < 5 ms at 100 clients",
    "stream": ">= 200 MB/s (MB = 10^6 bytes)",
}


# -- small helpers -----------------------------------------------------------------


def log(*parts: Any) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}]", *parts, file=sys.stderr, flush=True)


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, p90, p99, mean, min, max of *samples* (ms or any unit), and n."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=100, method="inclusive")
        p90, p99 = q[89], q[98]
    else:
        p90 = p99 = s[0]
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p90": p90,
        "p99": p99,
        "mean": statistics.fmean(s),
        "min": s[0],
        "max": s[-1],
    }


def run_cmd(
    cmd: list[str], timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
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


def _timer(make: Callable[[], list[str]]) -> Callable[[], float]:
    """A tool of the round-robin: run a fresh command line from *make*, return its wall ms."""
    return lambda: timed(make())


def first_line(cmd: list[str]) -> str:
    try:
        out = run_cmd(cmd, timeout=30)
        text = (out.stdout or out.stderr).decode(errors="replace").strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


def meminfo() -> dict[str, int]:
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


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) in clock ticks of *pid*."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


class Proc:
    __slots__ = ("pid", "ppid", "comm", "state", "pidns", "argv")

    def __init__(self, pid: int, ppid: int, comm: str, state: str, pidns: str, argv: list[bytes]):
        self.pid, self.ppid, self.comm, self.state, self.pidns, self.argv = (
            pid,
            ppid,
            comm,
            state,
            pidns,
            argv,
        )


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
    return p.comm == "sleep" and SLEEP_SECONDS.encode() in b" ".join(p.argv)


# -- cleanup registry ----------------------------------------------------------------


class Janitor:
    """Remembers what the run made, and removes it all in :meth:`clean` (idempotent)."""

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.prefix = prefix
        self.workdir = workdir
        self.podman_globals: list[str] = []
        self.notes: list[str] = []

    def _list_ids(self, tool: str) -> list[str]:
        if not shutil.which(tool):
            return []
        out = run_cmd([tool, "list", "-q"], timeout=60)
        return [x for x in out.stdout.decode().split() if x.startswith(self.prefix)]

    def delete_oci(self, tool: str, name: str) -> None:
        run_cmd([tool, "delete", "-f", name], timeout=60)

    def clean_peers(self) -> None:
        for tool in ("crun", "runc"):
            try:
                for name in self._list_ids(tool):
                    self.delete_oci(tool, name)
                left = self._list_ids(tool)
                if left:
                    self.notes.append(f"{tool}: could not delete {left}")
            except Exception as exc:  # keep cleaning the rest
                self.notes.append(f"{tool} cleanup: {exc}")
        if self.podman_globals and shutil.which("podman"):
            try:
                out = run_cmd(
                    ["podman", *self.podman_globals, "ps", "-a", "--format", "{{.Names}}"],
                    timeout=60,
                )
                for name in out.stdout.decode().split():
                    if name.startswith(self.prefix):
                        run_cmd(["podman", *self.podman_globals, "rm", "-f", name], timeout=60)
            except Exception as exc:
                self.notes.append(f"podman cleanup: {exc}")
        self.clean_cgroups()
        try:
            self.clean_network()
        except Exception as exc:
            self.notes.append(f"network cleanup: {exc}")

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
            left = self.cgroups_left()
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
            time.sleep(0.25)
        self.notes.append(f"cgroups left behind: {[str(p) for p in self.cgroups_left()]}")

    def cgroups_left(self) -> list[Path]:
        found = []
        for hierarchy in CGROUP_ROOT.iterdir():
            found += _find_dirs(hierarchy, self.prefix, depth=4)
        return found


def net_devices() -> list[str]:
    """Host network devices named with the bench daemon's prefix."""
    out = run_cmd(["ip", "-o", "link", "show"]).stdout.decode()
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(NET_PREFIX)]


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


# -- the cgroup v2 quirk -----------------------------------------------------------


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[:1] == ["cgroup2"]:
            return Path(before.split()[4])
    return None


def v2_controllers() -> list[str]:
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


# -- peers: OCI bundles and commands -------------------------------------------------

OCI_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
]
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def write_bundle(path: Path, rootfs: Path, args: list[str]) -> Path:
    """An OCI bundle: pid, mount, uts, ipc and network namespaces (only lo), no terminal."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "ociVersion": "1.0.0",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted", "ambient")}
            | {"inheritable": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bench",
        "mounts": OCI_MOUNTS,
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": [
                "/proc/kcore",
                "/proc/keys",
                "/proc/timer_list",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


class Peers:
    """Commands of the peer tools, on private copies of the busybox rootfs."""

    def __init__(self, workdir: Path, janitor: Janitor) -> None:
        self.workdir = workdir
        self.janitor = janitor
        self.prefix = janitor.prefix
        self.rootfs = workdir / "rootfs"
        self.podman_rootfs = workdir / "rootfs-podman"  # podman writes /etc/hostname etc. into it
        for target in (self.rootfs, self.podman_rootfs):
            subprocess.run(["cp", "-a", str(BASE_ROOTFS), str(target)], check=True)
        self.bundle_true = write_bundle(workdir / "bundle-true", self.rootfs, ["/bin/true"])
        self.bundle_sleep = write_bundle(
            workdir / "bundle-sleep", self.rootfs, ["/bin/sleep", SLEEP_SECONDS]
        )
        self.counter = 0
        self.available = {
            "crun": bool(shutil.which("crun")),
            "runc": bool(shutil.which("runc")),
            "bwrap": bool(shutil.which("bwrap")),
            "unshare": bool(shutil.which("unshare")),
            "nsenter": bool(shutil.which("nsenter")),
            "podman": bool(shutil.which("podman")),
        }
        self.podman_globals = [
            "--root",
            str(workdir / "podman" / "root"),
            "--runroot",
            str(workdir / "podman" / "run"),
            "--tmpdir",
            str(workdir / "podman" / "tmp"),
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
        ]
        janitor.podman_globals = self.podman_globals
        self.errors: dict[str, str] = {}

    def name(self, tool: str) -> str:
        self.counter += 1
        return f"{self.prefix}{tool}-{self.counter}"

    # cold runs: a fresh container running /bin/true, its exit status checked
    def unshare_cold(self) -> list[str]:
        return ["unshare", "-fpmnui", "--mount-proc", "chroot", str(self.rootfs), "/bin/true"]

    def bwrap_cold(self) -> list[str]:
        return [
            "bwrap",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-ipc",
            "--bind",
            str(self.rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/true",
        ]

    def oci_cold(self, tool: str) -> list[str]:
        return [tool, "run", "--bundle", str(self.bundle_true), self.name(tool)]

    def podman_cold(self) -> list[str]:
        return [
            "podman",
            *self.podman_globals,
            "run",
            "--rm",
            "--name",
            self.name("podman"),
            f"--cgroup-parent=/{self.prefix}podman",
            "--network=none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--rootfs",
            str(self.podman_rootfs),
            "/bin/true",
        ]

    def oci_start_idle(self, tool: str, name: str) -> None:
        """``run -d``: the container keeps the stdio it is given, so no pipes (they never close)."""
        with tempfile.TemporaryFile() as err:
            result = subprocess.run(
                [tool, "run", "-d", "--bundle", str(self.bundle_sleep), name],
                stdin=DEVNULL,
                stdout=DEVNULL,
                stderr=err,
                timeout=120,
            )
            if result.returncode != 0:
                err.seek(0)
                raise RuntimeError(
                    f"{tool} run -d {name}: exit {result.returncode}: "
                    f"{err.read().decode(errors='replace').strip()[-300:]}"
                )

    def oci_pid(self, tool: str, name: str) -> int:
        out = run_cmd([tool, "state", name], check=True)
        return int(json.loads(out.stdout)["pid"])

    def check(self, tool: str, cmd: list[str]) -> bool:
        """Whether *tool* runs a container at all; the reason is kept when not."""
        try:
            timed(cmd, timeout=120)
            return True
        except Exception as exc:
            self.errors[tool] = str(exc)
            return False


# -- the private corrald -------------------------------------------------------------


class Corral:
    """A corrald subprocess with its own config, depot, socket and cgroup parent."""

    def __init__(self, workdir: Path, prefix: str, output_limit: int) -> None:
        self.dir = workdir / "corral"
        self.dir.mkdir()
        self.socket = self.dir / "corral.sock"
        self.depot = self.dir / "depot"
        self.log = self.dir / "corrald.log"
        self.config = self.dir / "corral.toml"
        self.cgroup_parent = f"{prefix}corral"
        self.output_limit = output_limit
        self.process: subprocess.Popen[bytes] | None = None
        self.blocked: list[str] = []
        self.plugins: list[str] = []
        self.notes: list[str] = []

    def _write_config(self, with_net: bool) -> None:
        text = (
            f'[daemon]\nsocket = "{self.socket}"\ndepot = "{self.depot}"\nlog_level = "info"\n'
            f'[containers]\nrootfs = "{BASE_ROOTFS}"\ngrace_time = false\nstop_timeout = 2\n'
            f"output_limit = {self.output_limit}\n"
            f'[isolation]\ninit = "{INIT}"\n'
            f'[cgroups]\nparent = "{self.cgroup_parent}"\n'
        )
        if with_net:
            # Own nftables table, device names and address pool, so a network plugin that
            # is live never touches another daemon's; large enough for the density run.
            text += (
                f'[net]\ntable = "{NET_TABLE}"\ninterface_prefix = "{NET_PREFIX}"\n'
                f'pool = "{NET_POOL}"\n'
            )
        self.config.write_text(text)

    def start(self) -> None:
        """Start with every plugin; if that fails, block unfinished ones (net, cgroups, both)."""
        attempts: list[tuple[list[str], bool]] = [
            ([], True),
            (["net"], False),
            (["cgroups"], True),
            (["net", "cgroups"], False),
        ]
        errors: list[str] = []
        for blocked, with_net in attempts:
            self._write_config(with_net)
            try:
                self._start(blocked)
                with Client(self.socket, timeout=60) as c:  # one real container proves it works
                    handle = c.create()
                    status, _, err = c.run(handle, "/bin/true")
                    c.destroy(handle)
                    if status != 0:
                        raise RuntimeError(f"/bin/true exited {status}: {err}")
                self.blocked = blocked
                if blocked:
                    self.notes.append(
                        f"corrald ran with plugins blocked: {', '.join(blocked)} (it failed with them: "
                        f"{errors[-1][:300]})"
                    )
                self.plugins = self._plugin_names()
                return
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                log(f"corrald (blocked={blocked}) failed: {errors[-1][:300]}")
                self.stop()
                if "in use by another corrald" in str(exc):
                    # Another run of this benchmark: figures without a network would mislead.
                    raise RuntimeError(
                        f"another benchmark is running: {errors[-1][:300]}"
                    ) from None
        raise RuntimeError("corrald would not run a container: " + " | ".join(errors))

    def _start(self, blocked: list[str]) -> None:
        env = {**os.environ, "CORRAL_BLOCK_PLUGINS": ",".join(blocked)}
        with open(self.log, "ab") as logf:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon", "--config", str(self.config)],
                stdout=logf,
                stderr=logf,
                stdin=DEVNULL,
                env=env,
                cwd=str(REPO),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corrald exited {self.process.returncode}: {self.log_tail()}")
            try:
                with Client(self.socket, timeout=5) as c:
                    c.ping()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"corrald did not answer: {self.log_tail()}")

    def _plugin_names(self) -> list[str]:
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            if "corrald ready" in line:
                with suppress(ValueError):
                    return list(json.loads(line).get("plugins", []))
        return []

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's log records of *event*."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                with suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, timeout: float = 120) -> Client:
        return Client(self.socket, timeout=timeout)

    def inits(self) -> list[Proc]:
        """The live container inits (PID 1 of each container) of this daemon's depot."""
        depot = str(self.depot).encode()
        return [
            p
            for p in processes()
            if len(p.argv) >= 3
            and p.argv[0] == str(INIT).encode()
            and p.argv[1] == b"launch"
            and p.argv[2].startswith(depot + b"/")
        ]

    def destroy_all(self) -> None:
        with self.client() as c:
            for handle in c.list():
                with suppress(Exception):
                    c.destroy(handle)

    def stop(self) -> None:
        """Destroy what is left, stop the daemon, kill any init it left behind."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.destroy_all()
            except Exception as exc:
                self.notes.append(f"destroy_all failed: {exc}")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        left = self.inits()
        for p in left:
            with suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        if left:
            self.notes.append(f"killed {len(left)} container init(s) left by corrald")
            time.sleep(0.5)
        self.process = None


# -- phases --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, janitor: Janitor) -> None:
        self.args = args
        self.workdir = workdir
        self.janitor = janitor
        self.results: dict[str, Any] = {"errors": {}}
        self.peers: Peers | None = None
        self.corral: Corral | None = None
        #: False during warm-up rounds, whose samples are dropped.
        self.recording = True

    # ---- cold run ----
    def cold(self, n: int) -> dict[str, Any]:
        assert self.peers and self.corral
        peers, corral = self.peers, self.corral
        phases: dict[str, list[float]] = {"create": [], "run": [], "destroy": []}

        marks: dict[str, list[float]] = {}  # handle -> wall clock at each request/reply

        def corral_cold() -> float:
            t0 = time.perf_counter()
            w0 = time.time()
            with corral.client() as c:
                handle = c.create()
                t1, w1 = time.perf_counter(), time.time()
                status, _, err = c.run(handle, "/bin/true")
                t2, w2 = time.perf_counter(), time.time()
                c.destroy(handle)
            t3, w3 = time.perf_counter(), time.time()
            if status != 0:
                raise RuntimeError(f"/bin/true exited {status}: {err}")
            if self.recording:
                phases["create"].append((t1 - t0) * 1000)
                phases["run"].append((t2 - t1) * 1000)
                phases["destroy"].append((t3 - t2) * 1000)
                marks[handle] = [w0, w1, w2, w3]
            return (t3 - t0) * 1000

        tools: dict[str, Callable[[], float]] = {"corral": corral_cold}
        candidates: dict[str, Callable[[], list[str]]] = {
            "crun run": lambda: peers.oci_cold("crun"),
            "runc run": lambda: peers.oci_cold("runc"),
            "bwrap": peers.bwrap_cold,
            "unshare+chroot": peers.unshare_cold,
            "podman run": peers.podman_cold,
        }
        for label, make in candidates.items():
            tool = label.split()[0].split("+")[0]
            if not peers.available.get(tool):
                self.results["errors"][f"cold/{label}"] = f"{tool} is not installed"
                continue
            if peers.check(label, make()):
                tools[label] = _timer(make)
            else:
                self.results["errors"][f"cold/{label}"] = peers.errors[label]
        samples = self._interleave(tools, n, warmup=self.args.warmup)
        self.recording = False
        daemon_cpu = self._corral_cpu_per_call(corral_cold, 20)
        self.recording = True
        return {
            "samples_ms": samples,
            "stats": {k: summarize(v) for k, v in samples.items()},
            "corral_phases": {k: summarize(v) for k, v in phases.items()},
            "corral_phase_samples_ms": phases,
            "corral_daemon_cpu_ms_per_run": daemon_cpu,
            "corral_timeline_ms": corral_timeline(corral.log, marks),
        }

    def _corral_cpu_per_call(self, fn: Callable[[], Any], n: int) -> dict[str, float]:
        """CPU ms per call of the daemon itself and of the processes it and its zygote reaped
        (launchers, container inits with their jobs), over *n* calls."""
        assert self.corral
        tick = 1000 / os.sysconf("SC_CLK_TCK")

        def ticks() -> tuple[int, int]:
            own, kids = cpu_ticks(self.corral.pid)
            for proc in processes():  # the zygote: alive, so not in the daemon's children's
                if proc.ppid == self.corral.pid and proc.argv[1:2] == [b"zygote"]:
                    zygote_own, zygote_kids = cpu_ticks(proc.pid)
                    kids += zygote_own + zygote_kids
            return own, kids

        own0, kids0 = ticks()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        wall = (time.perf_counter() - t0) * 1000 / n
        own1, kids1 = ticks()
        return {
            "daemon": (own1 - own0) * tick / n,
            "daemon_children": (kids1 - kids0) * tick / n,
            "wall": wall,
            "calls": n,
        }

    def _interleave(
        self, tools: dict[str, Callable[[], float]], n: int, warmup: int
    ) -> dict[str, list[float]]:
        """Round-robin: each iteration runs every tool once, starting at a rotating tool."""
        samples: dict[str, list[float]] = {name: [] for name in tools}
        failures: dict[str, int] = dict.fromkeys(tools, 0)
        names = list(tools)
        # The first `warmup` rounds are run but not recorded.
        for i in range(warmup + n):
            recording = self.recording = i >= warmup
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                if name not in tools:
                    continue
                try:
                    ms = tools[name]()
                except Exception as exc:
                    failures[name] += 1
                    log(f"{name} failed: {exc}")
                    if failures[name] >= 3:
                        self.results["errors"][f"{name}"] = f"dropped after 3 failures: {exc}"
                        del tools[name]
                    continue
                if recording:
                    samples[name].append(ms)
            if (i + 1) % 50 == 0:
                log(f"  round {i + 1}/{warmup + n}")
        self.recording = True
        return samples

    # ---- exec in a running container ----
    def exec_(self, n: int) -> dict[str, Any]:
        assert self.peers and self.corral
        peers, corral = self.peers, self.corral
        tools: dict[str, Callable[[], float]] = {}
        client = corral.client()
        handle = client.create()

        def corral_exec() -> float:
            t0 = time.perf_counter()
            status, _, err = client.run(handle, "/bin/true")
            ms = (time.perf_counter() - t0) * 1000
            if status != 0:
                raise RuntimeError(f"/bin/true exited {status}: {err}")
            return ms

        tools["corral run"] = corral_exec
        nsenter_pid = None
        for tool in ("crun", "runc"):
            if not peers.available[tool]:
                self.results["errors"][f"exec/{tool}"] = f"{tool} is not installed"
                continue
            name = peers.name(f"{tool}-exec")
            try:
                peers.oci_start_idle(tool, name)
                pid = peers.oci_pid(tool, name)
                nsenter_pid = nsenter_pid or pid
                cmd = [tool, "exec", name, "/bin/true"]
                timed(cmd)
                tools[f"{tool} exec"] = _timer(functools.partial(list, cmd))
            except Exception as exc:
                self.results["errors"][f"exec/{tool}"] = str(exc)
        target = "crun container"
        if nsenter_pid is None:  # no OCI peer: enter the Corral container's init instead
            inits = corral.inits()
            nsenter_pid = inits[0].pid if inits else None
            target = "Corral container init"
        if nsenter_pid is not None:
            cmd = ["nsenter", "-a", "-t", str(nsenter_pid), "/bin/true"]
            try:
                timed(cmd)
                tools["nsenter -a"] = _timer(lambda: cmd)
            except Exception as exc:
                self.results["errors"]["exec/nsenter"] = str(exc)
        try:
            samples = self._interleave(tools, n, warmup=self.args.warmup)
            daemon_cpu = self._corral_cpu_per_call(corral_exec, 50)
        finally:
            with suppress(Exception):
                client.destroy(handle)
            client.close()
            for tool in ("crun", "runc"):
                for name in self.janitor._list_ids(tool):
                    if "-exec-" in name:
                        self.janitor.delete_oci(tool, name)
        return {
            "samples_ms": samples,
            "stats": {k: summarize(v) for k, v in samples.items()},
            "nsenter_target": target,
            "corral_daemon_cpu_ms_per_run": daemon_cpu,
        }

    # ---- density ----
    def density(self, n: int) -> dict[str, Any]:
        out: dict[str, Any] = {"n": n}
        out["corral"] = self._density_corral(n)
        if self.peers and self.peers.available["crun"]:
            out["crun"] = self._density_crun(n)
        else:
            self.results["errors"]["density/crun"] = "crun is not installed"
        return out

    def _density_corral(self, n: int) -> dict[str, Any]:
        assert self.corral
        corral = self.corral
        res: dict[str, Any] = {}
        with corral.client() as c:  # warm the daemon's code paths before the baseline
            h = c.create()
            c.destroy(h)
        time.sleep(0.5)
        daemon0 = smaps(corral.pid)
        mem0 = meminfo()
        handles: list[str] = []
        per_start: list[float] = []
        t0 = time.perf_counter()
        try:
            with corral.client() as c:
                for _i in range(n):
                    s = time.perf_counter()
                    h = c.create()
                    handles.append(h)
                    c.spawn(h, f"sleep {SLEEP_SECONDS}")
                    per_start.append((time.perf_counter() - s) * 1000)
        except Exception as exc:
            res["error"] = f"after {len(handles)} containers: {type(exc).__name__}: {exc}"
            log(f"corral density stopped: {res['error']}")
        res["start_s"] = time.perf_counter() - t0
        res["started"] = len(handles)
        res["per_container_start_ms"] = summarize(per_start)
        time.sleep(1.0)
        res.update(self._corral_memory(corral, daemon0, mem0, len(handles)))
        t0 = time.perf_counter()
        per_destroy: list[float] = []
        with corral.client() as c:
            for h in handles:
                s = time.perf_counter()
                c.destroy(h)
                per_destroy.append((time.perf_counter() - s) * 1000)
        res["destroy_s"] = time.perf_counter() - t0
        res["per_container_destroy_ms"] = summarize(per_destroy)
        return res

    def _corral_memory(
        self, corral: Corral, daemon0: dict[str, int], mem0: dict[str, int], count: int
    ) -> dict[str, Any]:
        procs = processes()
        inits = corral.inits()
        init_ns = {p.pidns: p for p in inits}
        overhead_kib: list[int] = []
        workload_kib: list[int] = []
        running = 0
        extra: dict[str, int] = {}
        by_ns: dict[str, list[Proc]] = {}
        for p in procs:
            if p.pidns in init_ns:
                by_ns.setdefault(p.pidns, []).append(p)
        for ns, members in by_ns.items():
            overhead = 0
            workload = 0
            for p in members:
                pss = smaps(p.pid).get("Pss", 0)
                if is_idle_sleep(p):
                    running += 1
                    workload += pss
                elif p.pid == init_ns[ns].pid:
                    overhead += pss
                else:  # anything else in the container is not the workload either
                    overhead += pss
                    extra[p.comm] = extra.get(p.comm, 0) + 1
            overhead_kib.append(overhead)
            workload_kib.append(workload)
        host_helpers = [
            p
            for p in procs
            if p.pidns not in init_ns
            and p.pid != corral.pid
            and any(str(corral.depot).encode() in a for a in p.argv)
        ]
        daemon1 = smaps(corral.pid)
        mem1 = meminfo()
        growth = {k: daemon1.get(k, 0) - daemon0.get(k, 0) for k in ("Rss", "Pss")}
        inits_pss = sum(overhead_kib)
        per = (inits_pss + growth["Pss"]) / count if count else None
        return {
            "running_workloads": running,
            "containers_seen": len(by_ns),
            "init_pss_kib": summarize([float(x) for x in overhead_kib]),
            "workload_pss_kib": summarize([float(x) for x in workload_kib]),
            "other_processes_in_containers": extra,
            "host_helper_processes": len(host_helpers),
            "processes_besides_workload_per_container": (
                len(by_ns) + sum(extra.values()) + len(host_helpers)
            )
            / count
            if count
            else None,
            "daemon_before_kib": daemon0,
            "daemon_after_kib": daemon1,
            "daemon_growth_kib": growth,
            "daemon_growth_pss_per_container_kib": growth["Pss"] / count if count else None,
            "pss_per_container_kib": per,
            "host_memavailable_drop_per_container_kib": (
                mem0["MemAvailable"] - mem1["MemAvailable"]
            )
            / count
            if count
            else None,
        }

    def _density_crun(self, n: int) -> dict[str, Any]:
        assert self.peers
        peers = self.peers
        res: dict[str, Any] = {}
        mem0 = meminfo()
        names: list[str] = []
        per_start: list[float] = []
        t0 = time.perf_counter()
        try:
            for _i in range(n):
                name = peers.name("crun-dense")
                s = time.perf_counter()
                peers.oci_start_idle("crun", name)
                names.append(name)
                per_start.append((time.perf_counter() - s) * 1000)
        except Exception as exc:
            res["error"] = f"after {len(names)} containers: {exc}"
        res["start_s"] = time.perf_counter() - t0
        res["started"] = len(names)
        res["per_container_start_ms"] = summarize(per_start)
        time.sleep(1.0)
        procs = processes()
        host_ns = os.readlink("/proc/self/ns/pid")
        sleeps = [p for p in procs if is_idle_sleep(p) and p.pidns != host_ns]
        ns_set = {p.pidns for p in sleeps}
        others = [p for p in procs if p.pidns in ns_set and not is_idle_sleep(p)]
        helpers = [p for p in procs if p.comm in ("crun", "conmon") and p.pidns == host_ns]
        overhead = sum(smaps(p.pid).get("Pss", 0) for p in others + helpers)
        mem1 = meminfo()
        count = len(names)
        res.update(
            {
                "running_workloads": len(sleeps),
                "other_processes_in_containers": len(others),
                "host_helper_processes": len(helpers),
                "processes_besides_workload_per_container": (len(others) + len(helpers)) / count
                if count
                else None,
                "pss_per_container_kib": overhead / count if count else None,
                "workload_pss_kib": summarize([float(smaps(p.pid).get("Pss", 0)) for p in sleeps]),
                "host_memavailable_drop_per_container_kib": (
                    mem0["MemAvailable"] - mem1["MemAvailable"]
                )
                / count
                if count
                else None,
            }
        )
        t0 = time.perf_counter()
        per_destroy: list[float] = []
        for name in names:
            s = time.perf_counter()
            run_cmd(["crun", "delete", "-f", name], check=True)
            per_destroy.append((time.perf_counter() - s) * 1000)
        res["destroy_s"] = time.perf_counter() - t0
        res["per_container_destroy_ms"] = summarize(per_destroy)
        return res

    # ---- control plane ----
    def control(self, containers: int, levels: list[int], duration: float) -> dict[str, Any]:
        assert self.corral
        corral = self.corral
        out: dict[str, Any] = {"containers": containers, "duration_s": duration, "levels": {}}
        handles: list[str] = []
        keeper = corral.client()  # holds the containers' references for the phase
        try:
            t0 = time.perf_counter()
            for _ in range(containers):
                handles.append(keeper.create())
            out["create_all_s"] = time.perf_counter() - t0
            for command in ("ping", "info"):
                for clients in levels:
                    log(f"  {command} x {clients} clients")
                    out["levels"][f"{command}/{clients}"] = self._load(
                        command, clients, handles, duration
                    )
        finally:
            t0 = time.perf_counter()
            for h in handles:
                with suppress(Exception):
                    keeper.destroy(h)
            out["destroy_all_s"] = time.perf_counter() - t0
            keeper.close()
        return out

    def _load(
        self, command: str, clients: int, handles: list[str], duration: float
    ) -> dict[str, Any]:
        assert self.corral
        ctx = multiprocessing.get_context("fork")
        warm = min(1.0, duration / 4)
        start = time.monotonic() + 1.0 + clients * 0.01
        stop = start + warm + duration
        pipes = []
        procs = []
        for i in range(clients):
            recv, send = ctx.Pipe(duplex=False)
            handle = handles[i % len(handles)] if handles else ""
            p = ctx.Process(
                target=_load_worker,
                args=(str(self.corral.socket), command, handle, start, start + warm, stop, send),
            )
            p.start()
            send.close()
            pipes.append(recv)
            procs.append(p)
        tick = 1000 / os.sysconf("SC_CLK_TCK")
        time.sleep(max(0.0, start + warm - time.monotonic()))
        cpu0, _ = cpu_ticks(self.corral.pid)
        time.sleep(max(0.0, stop - time.monotonic()))
        cpu1, _ = cpu_ticks(self.corral.pid)
        latencies = array.array("d")
        errors = 0
        for recv, p in zip(pipes, procs, strict=False):
            try:
                data = recv.recv_bytes()
                errors += int.from_bytes(data[:8], "little")
                latencies.frombytes(data[8:])
            except EOFError:
                errors += 1
            p.join(timeout=30)
        ms = [x * 1000 for x in latencies]
        stats = summarize(ms)
        stats.update(
            {
                "clients": clients,
                "requests": len(ms),
                "throughput_per_s": len(ms) / duration,
                "errors": errors,
                "daemon_cpu_percent": (cpu1 - cpu0) * tick / (duration * 1000) * 100,
            }
        )
        return stats

    # ---- stream ----
    def stream(self, size: int, runs: int) -> dict[str, Any]:
        """Stream a job's *size* bytes of stdout; also time the same job writing to a file alone."""
        assert self.corral
        out: dict[str, Any] = {"bytes": size, "runs": runs, "variants": {}}
        variants = {
            "yes | head, utf-8": (f"yes | head -c {size}", "utf-8"),
            "head /dev/zero, base64": (f"head -c {size} /dev/zero", "base64"),
            "dd bs=1MB /dev/zero, base64": (
                f"dd if=/dev/zero bs=1000000 count={size // 1_000_000} 2>/dev/null",
                "base64",
            ),
        }
        for label, (script, encoding) in variants.items():
            rates: list[float] = []
            alone: list[float] = []
            errs: list[str] = []
            cpu: list[dict[str, float]] = []
            for _ in range(runs):
                try:
                    rate, usage = self._stream_once(script, encoding, size)
                    rates.append(rate)
                    cpu.append(usage)
                    alone.append(self._job_alone(script, size))
                except Exception as exc:
                    errs.append(f"{type(exc).__name__}: {exc}")
                    log(f"stream {label} failed: {errs[-1]}")
            out["variants"][label] = {
                "script": script,
                "encoding": encoding,
                "mb_per_s": summarize(rates),
                "samples": rates,
                "job_alone_mb_per_s": summarize(alone),
                "job_alone_samples": alone,
                "cpu": cpu,
                "errors": errs,
            }
        return out

    def _job_alone(self, script: str, size: int) -> float:
        """MB/s of the job writing to a file in its own container, nobody streaming."""
        assert self.corral
        with self.corral.client(timeout=600) as c:
            handle = c.create()
            try:
                t0 = time.perf_counter()
                status, _, err = c.run(handle, f"{script} > $HOME/bench.out; rm -f $HOME/bench.out")
                elapsed = time.perf_counter() - t0
                if status != 0:
                    raise RuntimeError(f"job alone exited {status}: {err}")
                return size / 1e6 / elapsed
            finally:
                c.destroy(handle)

    def _stream_once(self, script: str, encoding: str, size: int) -> tuple[float, dict[str, float]]:
        assert self.corral
        tick = 1000 / os.sysconf("SC_CLK_TCK")
        with self.corral.client(timeout=600) as c:
            handle = c.create()
            try:
                cpu0, _ = cpu_ticks(self.corral.pid)
                client0 = time.process_time()
                t0 = time.perf_counter()
                job = c.spawn(handle, script)
                got = 0
                opts = {"encoding": "base64"} if encoding == "base64" else {}
                for name, chunk in c.stream(handle, job, **opts):
                    if name != "stdout":
                        continue
                    if encoding == "base64":
                        got += len(chunk) // 4 * 3 - chunk[-2:].count("=")
                    else:
                        got += (
                            len(chunk)
                            if chunk.isascii()
                            else len(chunk.encode("utf-8", "surrogateescape"))
                        )
                elapsed = time.perf_counter() - t0
                cpu1, _ = cpu_ticks(self.corral.pid)
                usage = {
                    "seconds": elapsed,
                    "daemon_cpu_s": (cpu1 - cpu0) * tick / 1000,
                    "client_cpu_s": time.process_time() - client0,
                }
                if got != size:
                    raise RuntimeError(f"streamed {got} bytes, expected {size}")
                return got / 1e6 / elapsed, usage
            finally:
                c.destroy(handle)

    # ---- profile ----
    def profile(self, iterations: int) -> dict[str, Any]:
        assert self.corral
        corral = self.corral
        if not PY_SPY.exists():
            return {"error": f"{PY_SPY} not found (pip install py-spy into the venv)"}

        def loop() -> None:
            for _ in range(iterations):
                with corral.client() as c:
                    h = c.create()
                    c.run(h, "/bin/true")
                    c.destroy(h)

        out: dict[str, Any] = {"iterations": iterations}
        passes = {
            "svg": (["--format", "flamegraph"], self.args.out / "profile-cold.svg"),
            "cpu": (["--format", "raw"], self.args.out / "profile-cold-cpu.txt"),
            "wall": (["--format", "raw", "--idle"], self.args.out / "profile-cold-wall.txt"),
        }
        for label, (flags, path) in passes.items():
            cmd = [
                str(PY_SPY),
                "record",
                "--pid",
                str(corral.pid),
                "--rate",
                "250",
                *flags,
                "-o",
                str(path),
            ]
            spy = subprocess.Popen(
                cmd, stdin=DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            time.sleep(1.5)
            t0 = time.perf_counter()
            try:
                loop()
            finally:
                spy.send_signal(signal.SIGINT)
                try:
                    spy_out = spy.communicate(timeout=60)[0].decode(errors="replace")
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy_out = spy.communicate()[0].decode(errors="replace")
            out[f"{label}_loop_s"] = time.perf_counter() - t0
            if not path.exists():
                out[f"{label}_error"] = spy_out[-500:]
                continue
            out[f"{label}_file"] = (
                str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
            )
            if label in ("cpu", "wall"):
                out[label] = analyse_collapsed(path)
        return out


def _load_worker(
    sock: str, command: str, handle: str, start: float, record_from: float, stop: float, out: Any
) -> None:
    """One load client: its own connection; records latencies of requests in [record_from, stop)."""
    lat = array.array("d")
    errors = 0
    try:
        c = Client(sock, timeout=30)
        request = json.dumps([command, handle] if command == "info" else [command]).encode() + b"\n"
        while time.monotonic() < start:
            time.sleep(min(0.01, max(0.0, start - time.monotonic())))
        sock_ = c.sock
        readline = c.file.readline
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                break
            sock_.sendall(request)
            line = readline()
            t1 = time.monotonic()
            if not line or b'"type":"error"' in line.replace(b" ", b""):
                errors += 1
                if not line:
                    break
                continue
            if t0 >= record_from and t1 <= stop:
                lat.append(t1 - t0)
        c.close()
    except Exception:
        errors += 1
    out.send_bytes(errors.to_bytes(8, "little") + lat.tobytes())
    out.close()


def corral_timeline(log_path: Path, marks: dict[str, list[float]]) -> dict[str, Any]:
    """Split Corral's cold runs with the daemon's own log lines (info level, UTC timestamps).

    For each run, the client's four marks (create sent, create reply = run sent, run
    reply = destroy sent, destroy reply) and every log line naming the container are
    put in time order; each gap is labelled "previous -> next" and summarized over
    the runs, in the order the gaps occur. Events that plugins log (e.g. "network
    attached") show up by themselves, so the split follows the code as it is.
    """
    client = ("create sent", "create reply", "run reply", "destroy reply")
    per_handle: dict[str, list[tuple[float, str]]] = {
        h: list(zip(w, client, strict=True)) for h, w in marks.items()
    }
    extra: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        handle = rec.get("handle")
        if handle not in per_handle or "timestamp" not in rec:
            continue
        when = datetime.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        event = str(rec.get("event"))
        if event == "state changed":
            event = f"{rec.get('old')} -> {rec.get('new')}"
        per_handle[handle].append((when, event))
        for key, value in rec.items():  # durations the daemon logs itself: ms, prepare_ms...
            if (key == "ms" or key.endswith("_ms")) and isinstance(value, int | float):
                extra.setdefault(f"{event}: {key} (logged by the daemon)", []).append(float(value))
    spans: dict[str, list[float]] = {}
    position: dict[str, list[int]] = {}
    for events in per_handle.values():
        events.sort()
        for i in range(1, len(events)):
            label = f"{events[i - 1][1]} → {events[i][1]}"
            spans.setdefault(label, []).append((events[i][0] - events[i - 1][0]) * 1000)
            position.setdefault(label, []).append(i)
    order = sorted(spans, key=lambda k: statistics.median(position[k]))
    out = {k: summarize(spans[k]) | {"runs": len(spans[k])} for k in order}
    out.update({k: summarize(v) | {"runs": len(v)} for k, v in extra.items()})
    return out


def analyse_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Where corrald's samples went, from py-spy's collapsed stacks.

    Samples are split into the trio thread (stacks through ``unrolled_run``) and
    trio's worker threads (``to_thread``); a worker waiting for work
    (``WorkerThread._work`` as the leaf) and the trio thread waiting in epoll
    (``get_events``) are idle, whatever py-spy decided (its idle detection misses
    both here). Reported: the share of
    every sample per Corral function (inclusive), the leaf functions of busy
    samples (self), and the Corral function nearest to each busy leaf.
    """
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    nearest: dict[str, int] = {}
    kinds = {
        "trio thread busy": 0,
        "trio thread idle (epoll)": 0,
        "worker busy": 0,
        "worker idle": 0,
        "other": 0,
    }
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = [_frame_name(f) for f in stack.split(";") if f]
        if not names:
            continue
        leaf = names[-1]
        in_trio = any(n.startswith("run (trio/_core/_run.py)") for n in names)
        in_worker = any(n.startswith("WorkerThread._work ") for n in names)
        if in_trio:
            kind = (
                "trio thread idle (epoll)"
                if leaf.startswith("EpollIOManager.get_events")
                else "trio thread busy"
            )
        elif in_worker:
            kind = "worker idle" if leaf.startswith("WorkerThread._work ") else "worker busy"
        else:
            kind = "other"
        kinds[kind] += count
        if "idle" in kind:
            continue
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for name in set(names):
            if _is_corral(name):
                incl_counts[name] = incl_counts.get(name, 0) + count
        corral_frames = [n for n in names if _is_corral(n)]
        if corral_frames:
            nearest[corral_frames[-1]] = nearest.get(corral_frames[-1], 0) + count

    def ranked(counts: dict[str, int]) -> list[list[Any]]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * c / total, 1)] for name, c in best]

    return {
        "samples": total,
        "kinds_percent": {k: round(100 * v / total, 1) if total else 0 for k, v in kinds.items()},
        "top_self_percent": ranked(self_counts),
        "top_corral_inclusive_percent": ranked(incl_counts),
        "top_corral_nearest_percent": ranked(nearest),
    }


def _is_corral(name: str) -> bool:
    """A function of Corral's own code (not the daemon's entry point, which holds every sample)."""
    if name.startswith(("main (supervisor/daemon.py)", "<module> (supervisor/daemon.py)")):
        return False
    return "(supervisor/" in name or "(plugins/" in name


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:LINE)"
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("/work/main/", "site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/work/main/":
                file = "/" + file
            break
    return f"{func} ({file})"


# -- machine, versions, report --------------------------------------------------------


def machine() -> dict[str, Any]:
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
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def versions(corral: Corral | None) -> dict[str, str]:
    git = run_cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.decode().strip()
    dirty = run_cmd(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]
    ).stdout
    untracked = run_cmd(["git", "-C", str(REPO), "status", "--porcelain"]).stdout
    import trio

    return {
        "corral": f"{git} (+{len(dirty.splitlines())} modified, "
        f"{len(untracked.splitlines()) - len(dirty.splitlines())} untracked files in the tree)",
        "corral plugins": ", ".join(corral.plugins) if corral and corral.plugins else "?",
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


def esc(text: str) -> str:
    """Text for a Markdown table cell (a `|` would end the cell, also inside backticks)."""
    return text.replace("|", "\\|")


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fastest_peer(stats: dict[str, Any], corral: str) -> tuple[str, float] | None:
    """The peer with the lowest median in *stats* (Corral's entry *corral* left out)."""
    return min(
        ((k, v["median"]) for k, v in stats.items() if k != corral and v.get("n")),
        key=lambda kv: kv[1],
        default=None,
    )


def ratio_row(
    metric: str,
    corral: float | None,
    peer_name: str,
    peer: float | None,
    target: str,
    ok: bool | None,
    unit: str,
    lower_better: bool = True,
) -> str:
    ratio = corral / peer if corral is not None and peer else None
    verdict = "–" if ok is None else ("**met**" if ok else "**not met**")
    way = "lower is better" if lower_better else "higher is better"
    peer_cell = "no peer" if peer_name == "–" else f"{esc(peer_name)}: {fmt(peer)} {unit}"
    ratio_cell = "–" if ratio is None else f"{fmt(ratio)}x ({way})"
    return (
        f"| {esc(metric)} | {fmt(corral)} {unit} | {peer_cell} | {ratio_cell} | {target} "
        f"| {verdict} |"
    )


def report(results: dict[str, Any], path: Path) -> None:
    r = results
    lines = [
        "# Corral benchmark results",
        "",
        f"Written by `bench/run.py{' --quick' if r['quick'] else ''}` on {r['date']} "
        f"({'QUICK run: fewer iterations, not the full figures' if r['quick'] else 'full run'}). "
        "See bench/README.md for the method. Times in ms unless stated; ratio = Corral / peer.",
        "",
        "## Machine",
        "",
    ]
    m = r["machine"]
    lines += [
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gib']} GiB; kernel {m['kernel']}; "
        f"Debian {m['debian']}",
        f"- load average at start {' '.join(m['loadavg_start'])}, at end {' '.join(m.get('loadavg_end', []))} "
        "(the machine is shared: other test suites may run at the same time)",
        "",
        "## Versions",
        "",
        "| tool | version |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in r["versions"].items()]
    lines += [
        "",
        "## Summary: Corral against the targets",
        "",
        "| metric | Corral | best / reference peer | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    cold = r.get("cold", {}).get("stats", {})
    if cold.get("corral", {}).get("n"):
        c = cold["corral"]["median"]
        crun = cold.get("crun run", {}).get("median")
        rows.append(
            ratio_row(
                "cold run, median",
                c,
                "crun run",
                crun,
                TARGETS["cold"],
                None if crun is None else c <= crun,
                "ms",
            )
        )
        best = fastest_peer(cold, "corral")
        if best:
            rows.append(
                ratio_row("cold run, median", c, f"best peer ({best[0]})", best[1], "–", None, "ms")
            )
    ex = r.get("exec", {}).get("stats", {})
    if ex.get("corral run", {}).get("n"):
        c = ex["corral run"]["median"]
        ns = ex.get("nsenter -a", {}).get("median")
        rows.append(
            ratio_row(
                "exec, median",
                c,
                "nsenter -a",
                ns,
                TARGETS["exec"],
                None if ns is None else c <= 1.5 * ns,
                "ms",
            )
        )
        best = fastest_peer(ex, "corral run")
        if best and best[0] != "nsenter -a":
            rows.append(
                ratio_row("exec, median", c, f"best peer ({best[0]})", best[1], "–", None, "ms")
            )
    d = r.get("density", {})
    if d.get("corral"):
        dc, dk = d["corral"], d.get("crun", {})
        n = d["n"]
        pss = dc.get("pss_per_container_kib")
        judged = n >= 500 and dc["started"] == n and pss is not None
        rows.append(
            ratio_row(
                f"PSS per idle container besides workload, N={n}",
                pss,
                "crun",
                dk.get("pss_per_container_kib"),
                TARGETS["density_pss"],
                pss <= 200 if judged else None,
                "KiB",
            )
        )
        ok = None
        if dk.get("start_s") and dc["started"] == n and dk.get("started") == n:
            ok = dc["start_s"] <= dk["start_s"] if n >= 500 else None
        rows.append(
            ratio_row(
                f"start {n} idle containers (wall)",
                dc["start_s"],
                "crun run -d",
                dk.get("start_s"),
                TARGETS["density_start"],
                ok,
                "s",
            )
        )
        rows.append(
            ratio_row(
                f"destroy {n} containers (wall)",
                dc.get("destroy_s"),
                "crun delete -f",
                dk.get("destroy_s"),
                "–",
                None,
                "s",
            )
        )
    cp = r.get("control", {}).get("levels", {})
    top = max((int(k.split("/")[1]) for k in cp if k.startswith("ping/")), default=None)
    if top is not None:
        p = cp[f"ping/{top}"]
        rows.append(
            ratio_row(
                f"ping p99 at {top} clients",
                p.get("p99"),
                "–",
                None,
                TARGETS["ping_p99"],
                (p.get("p99", 1e9) < 5) if top >= 100 else None,
                "ms",
            )
        )
    st = r.get("stream", {}).get("variants", {})
    for label, v in st.items():
        mm = v.get("mb_per_s", {})
        if mm.get("n"):
            rows.append(
                ratio_row(
                    f"stream `{label}`, median",
                    mm["median"],
                    "the same job writing a file, nobody streaming",
                    v.get("job_alone_mb_per_s", {}).get("median"),
                    TARGETS["stream"],
                    mm["median"] >= 200,
                    "MB/s",
                    lower_better=False,
                )
            )
    lines += rows
    if r["quick"]:
        lines += [
            "",
            "Targets stated at 500 containers / 100 clients are not judged on a quick run "
            "when it uses fewer.",
        ]

    # ---- details
    def table(title: str, stats: dict[str, Any], note: str = "") -> list[str]:
        out = ["", f"## {title}", ""]
        if note:
            out += [note, ""]
        out += [
            "| tool | n | median | p90 | p99 | mean | min | max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, v in sorted(stats.items(), key=lambda kv: kv[1].get("median", 1e18)):
            if v.get("n"):
                out.append(
                    f"| {k} | {v['n']} | {fmt(v['median'])} | {fmt(v['p90'])} | {fmt(v['p99'])} | "
                    f"{fmt(v['mean'])} | {fmt(v['min'])} | {fmt(v['max'])} |"
                )
        return out

    if cold:
        lines += table(
            "Cold run: create, run /bin/true, exit status, destroy (ms)",
            cold,
            "Interleaved round-robin, one sample per tool per round. Corral: create, run, destroy "
            "over one new connection per run.",
        )
        ph = r["cold"].get("corral_phases", {})
        if ph:
            lines += [
                "",
                "Corral's cold run by request (ms):",
                "",
                "| request | median | p90 | p99 |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {k} | {fmt(v.get('median'))} | {fmt(v.get('p90'))} | {fmt(v.get('p99'))} |"
                for k, v in ph.items()
            ]
            tl = r["cold"].get("corral_timeline_ms", {})
            if tl:
                lines += [
                    "",
                    "The same runs split by the daemon's own log lines (info level, its timestamps) "
                    "between the client's requests and replies (ms):",
                    "",
                    "| span | runs | median | p90 | p99 |",
                    "|---|---|---|---|---|",
                ]
                lines += [
                    f"| {esc(k)} | {v.get('runs')} | {fmt(v.get('median'))} | {fmt(v.get('p90'))} | "
                    f"{fmt(v.get('p99'))} |"
                    for k, v in tl.items()
                ]
            cpu = r["cold"].get("corral_daemon_cpu_ms_per_run", {})
            if cpu:
                lines += [
                    "",
                    f"Daemon CPU per cold run: {fmt(cpu.get('daemon'))} ms in corrald, "
                    f"{fmt(cpu.get('daemon_children'))} ms in its zygote, launchers, inits and jobs, "
                    f"for {fmt(cpu.get('wall'))} ms wall ({cpu.get('calls')} runs).",
                ]
    if ex:
        lines += table(
            "Exec in a running container: /bin/true (ms)",
            ex,
            f"Interleaved round-robin. nsenter enters the {r['exec'].get('nsenter_target')}. "
            "Corral: `run` over one open connection.",
        )
        cpu = r["exec"].get("corral_daemon_cpu_ms_per_run", {})
        if cpu:
            lines += [
                "",
                f"Daemon CPU per Corral exec: {fmt(cpu.get('daemon'))} ms for {fmt(cpu.get('wall'))} ms wall.",
            ]
    if d.get("corral"):
        lines += [
            "",
            f"## Density: {d['n']} idle containers, one `sleep` each",
            "",
            "| | Corral | crun |",
            "|---|---|---|",
        ]
        dc, dk = d["corral"], d.get("crun", {})

        def both(label: str, key: Callable[[dict[str, Any]], Any], digits: int = 2) -> str:
            def get(x: dict[str, Any]) -> str:
                try:
                    return fmt(key(x), digits)
                except (KeyError, TypeError):
                    return "–"

            return f"| {label} | {get(dc)} | {get(dk)} |"

        lines += [
            both(
                "started / running workloads",
                lambda x: f"{x['started']} / {x['running_workloads']}",
            ),
            both("wall time to start all (s)", lambda x: x["start_s"]),
            both(
                "per container start, median / p90 / p99 (ms)",
                lambda x: (
                    f"{fmt(x['per_container_start_ms']['median'])} / {fmt(x['per_container_start_ms']['p90'])}"
                    f" / {fmt(x['per_container_start_ms']['p99'])}"
                ),
            ),
            both(
                "PSS per container besides the workload (KiB)",
                lambda x: x["pss_per_container_kib"],
                1,
            ),
            both(
                "  of which container init PSS, median (KiB)",
                lambda x: x["init_pss_kib"]["median"],
                1,
            ),
            both(
                "  of which daemon PSS growth / N (KiB)",
                lambda x: x["daemon_growth_pss_per_container_kib"],
                1,
            ),
            both(
                "daemon RSS growth / N (KiB)",
                lambda x: x["daemon_growth_kib"]["Rss"] / x["started"],
                1,
            ),
            both(
                "daemon RSS before → after (KiB)",
                lambda x: f"{x['daemon_before_kib']['Rss']} → {x['daemon_after_kib']['Rss']}",
            ),
            both(
                "processes per container besides the workload",
                lambda x: x["processes_besides_workload_per_container"],
            ),
            both(
                "workload (sleep) PSS, median (KiB)", lambda x: x["workload_pss_kib"]["median"], 1
            ),
            both(
                "host MemAvailable drop / N, incl. kernel objects and workload (KiB, noisy)",
                lambda x: x["host_memavailable_drop_per_container_kib"],
                0,
            ),
            both("wall time to destroy all (s)", lambda x: x["destroy_s"]),
            both(
                "per container destroy, median (ms)",
                lambda x: x["per_container_destroy_ms"]["median"],
            ),
        ]
        for side in ("corral", "crun"):
            if d.get(side, {}).get("error"):
                lines += ["", f"{side} density error: {d[side]['error']}"]
    if cp:
        c = r["control"]
        lines += [
            "",
            f"## Control plane with {c['containers']} containers present",
            "",
            f"Each client is its own process with its own connection, sending the next request as "
            f"soon as the reply arrives, for {c['duration_s']} s after a warm-up. "
            f"Creating the {c['containers']} containers took {fmt(c.get('create_all_s'))} s.",
            "",
            "| request | clients | throughput (req/s, higher is better) | median | p90 | p99 | max | errors | daemon CPU % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, v in cp.items():
            lines.append(
                f"| {k.split('/')[0]} | {v['clients']} | {fmt(v['throughput_per_s'], 0)} | {fmt(v.get('median'), 3)} | "
                f"{fmt(v.get('p90'), 3)} | {fmt(v.get('p99'), 3)} | {fmt(v.get('max'), 3)} | {v['errors']} | "
                f"{fmt(v['daemon_cpu_percent'], 0)} |"
            )
    if st:
        s = r["stream"]
        lines += [
            "",
            f"## Stream: a job writing {s['bytes'] / 1e6:.0f} MB to stdout, read with `stream`",
            "",
            "MB/s = 10^6 bytes of job output per second, from `spawn` to the final `[]`, counted "
            "after decoding (higher is better). 'Job alone': the same script in a Corral "
            "container writing to a file in its home, nobody streaming: the producer's own "
            "speed, a ceiling for the stream.",
            "",
            "| job, encoding | runs | stream median | min | max | job alone, median | "
            "daemon CPU s / client CPU s / wall s (first run) |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in st.values():
            mm = v["mb_per_s"]
            cpu = v.get("cpu") or [{}]
            usage = (
                f"{fmt(cpu[0].get('daemon_cpu_s'), 1)} / {fmt(cpu[0].get('client_cpu_s'), 1)} / "
                f"{fmt(cpu[0].get('seconds'), 1)}"
            )
            if mm.get("n"):
                lines.append(
                    f"| `{esc(v['script'])}`, {v['encoding']} | {mm['n']} | {fmt(mm['median'], 1)} | "
                    f"{fmt(mm['min'], 1)} | {fmt(mm['max'], 1)} | "
                    f"{fmt(v['job_alone_mb_per_s'].get('median'), 1)} | {usage} |"
                )
            for e in v.get("errors", []):
                lines.append(f"| `{esc(v['script'])}` | error: {esc(e[:200])} | | | | | |")
    prof = r.get("profile", {})
    if prof:
        lines += ["", "## Profile of corrald during cold runs (py-spy)", ""]
        if prof.get("error"):
            lines.append(prof["error"])
        else:
            lines.append(
                f"{prof['iterations']} cold runs per pass; flame graph (CPU): `{prof.get('svg_file')}`, "
                f"collapsed stacks: `{prof.get('cpu_file')}` (CPU), `{prof.get('wall_file')}` (wall, incl. idle)."
            )
            for label in ("cpu", "wall"):
                a = prof.get(label)
                if not a:
                    continue
                kinds = ", ".join(f"{k} {v}%" for k, v in a["kinds_percent"].items() if v)
                cols = (
                    "top_self_percent",
                    "top_corral_nearest_percent",
                    "top_corral_inclusive_percent",
                )
                lines += [
                    "",
                    f"### {label.upper()} profile: {a['samples']} samples ({kinds})",
                    "",
                    "Shares are of all samples; idle samples are left out of the columns.",
                    "",
                    "| busy leaf function (self) | % | nearest Corral function | % "
                    "| Corral function, inclusive | % |",
                    "|---|---|---|---|---|---|",
                ]
                for i in range(max(len(a[c]) for c in cols)):
                    cells = []
                    for c in cols:
                        name, pct = a[c][i] if i < len(a[c]) else ("", "")
                        cells += [f"`{name}`" if name else "", str(pct)]
                    lines.append("| " + " | ".join(cells) + " |")
    hug = r.get("cgroup_quirk", {})
    lines += ["", "## Peers and host set-up", ""]
    lines += [
        f"- peers installed: {', '.join(k for k, v in r.get('peers_available', {}).items() if v) or 'none'}; "
        f"missing: {', '.join(k for k, v in r.get('peers_available', {}).items() if not v) or 'none'}"
    ]
    if hug:
        lines += [
            f"- cgroup2 root controllers before the run: {hug.get('v2_root_controllers_before')}; "
            f"v1 hierarchies mounted for the run: {hug.get('mounted')}; after: {hug.get('v2_root_controllers_after')}",
            f"- crun before the mount: {r.get('crun_without_quirk', '?')}; with it: {r.get('crun_with_quirk', '?')}",
        ]
    corral_notes = r.get("corral_notes", [])
    if corral_notes:
        lines += [f"- corrald: {n}" for n in corral_notes]
    if r["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {k}: {str(v)[:400]}" for k, v in r["errors"].items()]
    if r.get("cleanup"):
        lines += ["", "## Clean-up check", ""]
        lines += [f"- {k}: {v}" for k, v in r["cleanup"].items()]
    path.write_text("\n".join(lines) + "\n")


# -- main ------------------------------------------------------------------------------


def leftovers(prefix: str, workdir: Path) -> dict[str, Any]:
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
    out["cgroups with the run's prefix"] = [
        str(p) for p in Janitor(prefix, workdir).cgroups_left()
    ] or "none"
    out["cgroup2 root controllers"] = v2_controllers()
    if shutil.which("nft"):
        listed = run_cmd(["nft", "list", "table", "inet", NET_TABLE]).returncode == 0
        out[f"nftables table inet {NET_TABLE}"] = "still there" if listed else "none"
    out[f"network devices {NET_PREFIX}*"] = net_devices() or "none"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few iterations (development)")
    parser.add_argument("--runs", type=int, help="cold and exec rounds (default 250, quick 30)")
    parser.add_argument("--density", type=int, help="idle containers (default 500, quick 50)")
    parser.add_argument(
        "--only",
        default="cold,exec,density,control,stream,profile",
        help="comma list of phases to run",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not run bench/install-peers.sh"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH, help="where RESULTS.md and results.json go"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py must run as root (it starts containers)", file=sys.stderr)
        return 2
    q = args.quick
    args.runs = args.runs or (30 if q else 250)
    args.density = args.density or (50 if q else 500)
    args.warmup = 3 if q else 10
    phases = set(args.only.split(","))

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": q,
        "settings": {
            "runs": args.runs,
            "density": args.density,
            "warmup": args.warmup,
            "phases": sorted(phases),
        },
        "machine": machine(),
        "errors": {},
    }
    if not args.no_install:
        log("installing peers (bench/install-peers.sh)")
        inst = subprocess.run(
            ["bash", str(BENCH / "install-peers.sh")], capture_output=True, text=True
        )
        results["install_peers"] = {
            "exit": inst.returncode,
            "output": (inst.stdout + inst.stderr)[-2000:],
        }
        sys.stderr.write(inst.stdout + inst.stderr)

    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cbench-", dir="/tmp"))
    prefix = f"cbench{os.getpid()}-"
    janitor = Janitor(prefix, workdir)
    bench = Bench(args, workdir, janitor)
    bench.results = results
    quirk = V1Controllers()
    corral: Corral | None = None
    status = 0
    try:
        peers = Peers(workdir, janitor)
        bench.peers = peers
        results["peers_available"] = peers.available
        if peers.available["crun"]:
            ok = peers.check("crun-pre", peers.oci_cold("crun"))
            results["crun_without_quirk"] = (
                "runs" if ok else f"fails: {peers.errors.get('crun-pre', '')}"
            )
        quirk.__enter__()
        results["cgroup_quirk"] = quirk.report
        if peers.available["crun"]:
            ok = peers.check("crun-post", peers.oci_cold("crun"))
            results["crun_with_quirk"] = (
                "runs" if ok else f"fails: {peers.errors.get('crun-post', '')}"
            )
        output_limit = 1_000_000_000 if q else 1_200_000_000
        corral = Corral(workdir, prefix, output_limit)
        bench.corral = corral
        log("starting a private corrald")
        corral.start()
        log(f"corrald pid {corral.pid}, plugins {corral.plugins}, blocked {corral.blocked}")
        results["versions"] = versions(corral)
        plan: list[tuple[str, Callable[[], Any]]] = [
            ("cold", lambda: bench.cold(args.runs)),
            ("exec", lambda: bench.exec_(args.runs)),
            ("density", lambda: bench.density(args.density)),
            ("control", lambda: bench.control(50 if q else 200, [1, 10, 100], 1.5 if q else 5.0)),
            ("stream", lambda: bench.stream(100_000_000 if q else 500_000_000, 1 if q else 3)),
            ("profile", lambda: bench.profile(40 if q else 150)),
        ]
        for name, fn in plan:
            if name not in phases:
                continue
            log(f"phase {name}")
            try:
                results[name] = fn()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"phase {name} failed:\n{traceback.format_exc()}")
                if corral.process is None or corral.process.poll() is not None:
                    results["errors"]["corrald"] = "daemon died: " + corral.log_tail()
                    break
                janitor.clean_peers()
        attached = corral.log_events("network attached")
        if attached:
            first = attached[0]
            corral.notes.append(
                f"network plugin live: {len(attached)} containers got a veth, e.g. device "
                f"{first.get('device')} address {first.get('address')}"
            )
        else:
            corral.notes.append("no container got a network device (network plugin not live)")
        errors = corral.log_events("request crashed") + corral.log_events("container task failed")
        if errors:
            corral.notes.append(
                f"{len(errors)} internal errors in the daemon log, first: {errors[0]}"
            )
        results["corral_notes"] = corral.notes
        log("stopping corrald and cleaning up")
        corral.stop()
        results["corral_notes"] = corral.notes
        janitor.clean_peers()
    except KeyboardInterrupt as exc:
        results["errors"]["interrupted"] = str(exc) or "interrupted"
        status = 130
    except Exception as exc:
        results["errors"]["fatal"] = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
        status = 1
    finally:
        # Every step runs even if an earlier one fails.
        with suppress(Exception):
            if corral is not None:
                corral.stop()
        with suppress(Exception):
            janitor.clean_peers()
        with suppress(Exception):
            quirk.__exit__(None, None, None)  # after every cgroup of the run is gone
        results["cgroup_quirk"] = quirk.report
        mounted_in_workdir = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(workdir) in line.split()[4]
        ]
        if mounted_in_workdir:
            results["errors"]["mounts in the work dir"] = (
                mounted_in_workdir  # never rm -rf through a mount
            )
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        results["janitor_notes"] = janitor.notes
        results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        results["cleanup"] = leftovers(prefix, workdir)
        results.setdefault("versions", versions(corral))
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        report(results, args.out / "RESULTS.md")
        log(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
