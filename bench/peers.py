"""The peers: the tools Corral is compared with, one small class each.

As in benchexec's ``tools/template.py``, each tool is a class with the same few
methods, so a phase asks every peer the same way: :meth:`Peer.cold_cmd` (one
fresh container running ``/bin/true``), and for the OCI runtimes
:meth:`Oci.start_idle`, :meth:`Oci.exec_cmd` and :meth:`Oci.delete`.
:class:`Peers` holds what they share: private copies of the busybox rootfs, the
OCI bundles and the run's container names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.host import BASE_ROOTFS, DEVNULL, SLEEP_SECONDS, Janitor, run_cmd, timed

OCI_MOUNTS: list[dict[str, Any]] = [
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


class Peer:
    """A tool Corral is compared with; a subclass per tool fills in what it does."""

    #: Its executable.
    tool = ""
    #: Its cold run's name in the results; "" when it has no cold run.
    cold_label = ""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.available = bool(shutil.which(self.tool))

    def cold_cmd(self) -> list[str]:
        """One cold run: a fresh container running /bin/true, its exit status checked."""
        raise NotImplementedError(f"{self.tool} has no cold run")

    def clean(self) -> list[str]:
        """Remove the containers of the run left in the tool's state; notes on any left."""
        return []


class Unshare(Peer):
    """util-linux ``unshare`` and ``chroot``: the baseline, namespaces and nothing else."""

    tool = "unshare"
    cold_label = "unshare+chroot"

    def cold_cmd(self) -> list[str]:
        """``unshare -fpmnui --mount-proc chroot ROOTFS /bin/true``."""
        return ["unshare", "-fpmnui", "--mount-proc", "chroot", str(self.peers.rootfs), "/bin/true"]


class Bwrap(Peer):
    """bubblewrap, with the namespaces the OCI bundles have."""

    tool = "bwrap"
    cold_label = "bwrap"

    def cold_cmd(self) -> list[str]:
        """``bwrap`` with new pid, net, uts and ipc namespaces, the rootfs as /."""
        return [
            "bwrap",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-ipc",
            "--bind",
            str(self.peers.rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/true",
        ]


class Oci(Peer):
    """An OCI runtime (crun, runc) running the run's bundles."""

    def __init__(self, peers: Peers, tool: str) -> None:
        self.tool = tool
        self.cold_label = f"{tool} run"
        super().__init__(peers)

    def cold_cmd(self) -> list[str]:
        """``run`` of the /bin/true bundle, which deletes the container when it exits."""
        return [
            self.tool,
            "run",
            "--bundle",
            str(self.peers.bundle_true),
            self.peers.name(self.tool),
        ]

    def start_idle(self, name: str) -> None:
        """``run -d``: the container keeps the stdio it is given, so no pipes (they never close)."""
        with tempfile.TemporaryFile() as err:
            result = subprocess.run(
                [self.tool, "run", "-d", "--bundle", str(self.peers.bundle_sleep), name],
                stdin=DEVNULL,
                stdout=DEVNULL,
                stderr=err,
                timeout=120,
            )
            if result.returncode != 0:
                err.seek(0)
                raise RuntimeError(
                    f"{self.tool} run -d {name}: exit {result.returncode}: "
                    f"{err.read().decode(errors='replace').strip()[-300:]}"
                )

    def pid(self, name: str) -> int:
        """The host pid of container *name*'s process."""
        out = run_cmd([self.tool, "state", name], check=True)
        return int(json.loads(out.stdout)["pid"])

    def exec_cmd(self, name: str) -> list[str]:
        """``exec`` of /bin/true in the running container *name*."""
        return [self.tool, "exec", name, "/bin/true"]

    def delete(self, name: str, check: bool = False) -> None:
        """``delete -f`` of container *name*; with *check*, raise if it fails."""
        run_cmd([self.tool, "delete", "-f", name], timeout=60, check=check)

    def containers(self) -> list[str]:
        """Names of the run's containers the runtime knows."""
        if not self.available:
            return []
        out = run_cmd([self.tool, "list", "-q"], timeout=60)
        return [x for x in out.stdout.decode().split() if x.startswith(self.peers.prefix)]

    def clean(self) -> list[str]:
        """``delete -f`` every container of the run."""
        for name in self.containers():
            self.delete(name)
        left = self.containers()
        return [f"{self.tool}: could not delete {left}"] if left else []


class Nsenter(Peer):
    """util-linux ``nsenter``: entering a running container, the baseline of exec."""

    tool = "nsenter"

    def exec_cmd(self, pid: int) -> list[str]:
        """/bin/true in every namespace of *pid*."""
        return ["nsenter", "-a", "-t", str(pid), "/bin/true"]


class Podman(Peer):
    """podman with a private root, run root and tmp dir, so it meets no other podman state."""

    tool = "podman"
    cold_label = "podman run"

    def __init__(self, peers: Peers) -> None:
        super().__init__(peers)
        state = peers.workdir / "podman"
        #: Options before the command of every podman call.
        self.globals = [
            "--root",
            str(state / "root"),
            "--runroot",
            str(state / "run"),
            "--tmpdir",
            str(state / "tmp"),
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
        ]

    def cold_cmd(self) -> list[str]:
        """``run --rm`` of /bin/true on its own copy of the rootfs, no network."""
        return [
            "podman",
            *self.globals,
            "run",
            "--rm",
            "--name",
            self.peers.name("podman"),
            f"--cgroup-parent=/{self.peers.prefix}podman",
            "--network=none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--rootfs",
            str(self.peers.podman_rootfs),
            "/bin/true",
        ]

    def clean(self) -> list[str]:
        """``rm -f`` every container of the run."""
        if not self.available:
            return []
        out = run_cmd(["podman", *self.globals, "ps", "-a", "--format", "{{.Names}}"], timeout=60)
        for name in out.stdout.decode().split():
            if name.startswith(self.peers.prefix):
                run_cmd(["podman", *self.globals, "rm", "-f", name], timeout=60)
        return []


class Peers:
    """Every peer, on private copies of the busybox rootfs, and the run's container names."""

    def __init__(self, workdir: Path, janitor: Janitor) -> None:
        self.workdir = workdir
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
        self.crun = Oci(self, "crun")
        self.runc = Oci(self, "runc")
        self.bwrap = Bwrap(self)
        self.unshare = Unshare(self)
        self.nsenter = Nsenter(self)
        self.podman = Podman(self)
        #: Every peer, in the order of the results.
        self.all: list[Peer] = [
            self.crun,
            self.runc,
            self.bwrap,
            self.unshare,
            self.nsenter,
            self.podman,
        ]
        for peer in self.all:
            janitor.cleaners.append((peer.tool, peer.clean))
        #: Why a check (:meth:`check`) failed, by its label.
        self.errors: dict[str, str] = {}

    @property
    def available(self) -> dict[str, bool]:
        """Which peers are installed, by tool."""
        return {peer.tool: peer.available for peer in self.all}

    def cold_peers(self) -> list[Peer]:
        """The peers with a cold run, in the order of the results."""
        return [peer for peer in self.all if peer.cold_label]

    def name(self, tool: str) -> str:
        """A new container name: the run's prefix, *tool*, a counter."""
        self.counter += 1
        return f"{self.prefix}{tool}-{self.counter}"

    def check(self, label: str, cmd: list[str]) -> bool:
        """Whether *cmd* runs a container at all; the reason is kept under *label* when not."""
        try:
            timed(cmd, timeout=120)
            return True
        except Exception as exc:
            self.errors[label] = str(exc)
            return False
