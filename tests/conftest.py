"""Fixtures: real daemons on private sockets and depots, started as root.

Each :class:`Daemon` (:class:`supervisor.testing.PrivateDaemon`) runs ``corrald``
as a subprocess with a directory, cgroup parent and network of its own. The init
binary and base rootfs are the installed ones (``scripts/install.sh``), or are
built into a temp dir when missing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from plugins.cgroups.group import INIT_LEAF
from plugins.cgroups.layout import Placement
from plugins.isolation.build import build_init, is_current, source_digest
from supervisor.client import Client
from supervisor.depot import read_record
from supervisor.testing import INSTALLED_INIT, INSTALLED_ROOTFS, REPO
from supervisor.testing import PrivateDaemon as Daemon

__all__ = ["REPO", "Daemon"]

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="Corral's tests start real containers and must run as root")
        for item in items:
            # Every daemon, shared or not, comes with the artifacts.
            if "needs_root" in item.keywords or "artifacts" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(init binary, base rootfs), installed or freshly built."""
    work = tmp_path_factory.mktemp("artifacts")
    if is_current(INSTALLED_INIT, source_digest()):
        init = INSTALLED_INIT
    else:  # not installed, or built from another source than this checkout's
        init = build_init(work / "corral-init")
    rootfs = Path(os.environ.get("CORRAL_TEST_ROOTFS", INSTALLED_ROOTFS))
    if not (rootfs / "bin" / "busybox").exists():
        rootfs = work / "rootfs"
        subprocess.run(["bash", str(REPO / "scripts" / "build-rootfs.sh"), str(rootfs)], check=True)
    return init, rootfs


def init_pid(daemon: Daemon, handle: str) -> int:
    """Host pid of the container's init, as its record in the depot holds it."""
    record = read_record(daemon.depot / handle)
    assert record is not None, f"{handle} has no record"
    return int(record["plugins"]["isolation"]["pid"])


def ended(pid: int) -> bool:
    """Whether process *pid* has ended (it may wait as a zombie for the host's PID 1)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll *predicate* until it is true (and return its value); fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what or predicate}"
        time.sleep(0.02)
    return value


def wait_for_output(
    daemon: Daemon, handle: str, job: int, text: str = "ready\n", timeout: float = 10.0
) -> None:
    """A job's handshake: read its stdout as it comes, on a connection of its own, until
    it has printed *text* (say, once its ``trap`` is set)."""
    seen = ""
    with daemon.client(timeout=timeout) as c:
        for stream, chunk in c.stream(handle, job):
            seen += chunk if stream == "stdout" else ""
            if text in seen:
                return
    raise AssertionError(f"job {job} of {handle} ended without printing {text!r}: {seen!r}")


#: What :func:`leftovers` returns when a daemon left nothing behind.
NOTHING_LEFT: dict[str, list[str]] = {
    "mounts": [],
    "processes": [],
    "depot": [],
    "cgroups": [],
    "devices": [],
}


def leftovers(daemon: Daemon) -> dict[str, list[str]]:
    """What of this daemon's containers is still on the host: mounts, processes, depot entries."""
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(daemon.dir) in line
    ]
    processes = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(daemon.depot).encode() in cmdline and state != "Z":
                processes.append(f"{entry.name}: {cmdline!r}")
    depot = (
        sorted(p.name for p in daemon.depot.iterdir() if not p.name.startswith("."))
        if daemon.depot.exists()
        else []
    )
    # Destroyed containers' directories are deleted from the trash after the reply.
    trash = daemon.depot / ".trash"
    deadline = time.monotonic() + 5
    while trash.is_dir() and any(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    if trash.is_dir():
        depot += sorted(f".trash/{p.name}" for p in trash.iterdir())
    return {
        "mounts": mounts,
        "processes": processes,
        "depot": depot,
        "cgroups": cgroup_leftovers(daemon),
        "devices": device_leftovers(daemon),
    }


def device_leftovers(daemon: Daemon) -> list[str]:
    """Network devices named with this daemon's prefix (its containers' veths and bridges)."""
    prefix = daemon.net.get("interface_prefix")

    def ours() -> list[str]:
        return sorted(n for n in os.listdir("/sys/class/net") if prefix and n.startswith(prefix))

    # A destroyed container's veth goes with its network namespace, in the background.
    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ours()


def live_children(pid: int) -> list[int]:
    """Pids of the processes whose parent is *pid*, zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def waiting_launchers(zygote_pid: int) -> list[int]:
    """Launchers the zygote forked that still wait for their spec (no label in their cmdline)."""
    found = []
    for pid in live_children(zygote_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"launch", b""]:
            found.append(pid)
    return found


def cgroup_layout(daemon: Daemon) -> dict[str, Placement]:
    """Controller -> its cgroup version and hierarchy root, as the daemon found them at its
    last start.

    Read from its log: the layout it actually uses (v1, v2 or a mix), so that the
    cgroup checks look where its cgroups are. A daemon that logged none fails the test.
    """
    found = daemon.log_records("cgroup controllers found")
    assert found, f"the daemon logged no cgroup layout:\n{daemon.log_tail()}"
    return {
        controller: Placement(int(where[1]), Path(where[3:]))
        for controller, where in found[-1].items()
        if isinstance(where, str) and where[:3] in ("v1 ", "v2 ")
    }


def cgroup_parents(daemon: Daemon) -> list[Path]:
    """The daemon's parent cgroup in each hierarchy it uses (whether it exists or not)."""
    return sorted({p.root / daemon.cgroup_parent for p in cgroup_layout(daemon).values()})


def cgroup_dirs(daemon: Daemon, handle: str | None = None) -> list[Path]:
    """The container cgroups of *daemon* (of one handle, or all), in every hierarchy it uses.

    Not the daemon's spare sets (``.spare-N``, made ahead); a destroyed container's,
    renamed to ``.trash-N``, count until they are removed after destroy's reply.
    """

    def found() -> list[Path]:
        return sorted(
            d
            for parent in cgroup_parents(daemon)
            if parent.is_dir()
            for d in parent.iterdir()
            if d.is_dir() and not d.name.startswith(".spare-") and handle in (None, d.name)
        )

    deadline = time.monotonic() + 5
    while any(d.name.startswith(".trash-") for d in found()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found()


def cgroup_of(daemon: Daemon, handle: str, controller: str) -> Path:
    """The container's cgroup that holds *controller* (v1: its hierarchy's; v2: the one)."""
    return cgroup_layout(daemon)[controller].root / daemon.cgroup_parent / handle


def init_cgroup_of(daemon: Daemon, handle: str, controller: str) -> Path:
    """The cgroup holding the container's init for *controller*: the container's, or on a
    v2 tree with memory its leaf ``init`` (which lets the jobs' cgroups have memory)."""
    layout = cgroup_layout(daemon)
    path = cgroup_of(daemon, handle, controller)
    if layout[controller].version == 2 and layout["memory"].version == 2:
        return path / INIT_LEAF
    return path


def cgroup_leftovers(daemon: Daemon) -> list[str]:
    """Container cgroups of this daemon still on the host, in any hierarchy."""
    return [str(d) for d in cgroup_dirs(daemon)]


@pytest.fixture(scope="session")
def daemon(artifacts: tuple[Path, Path]) -> Iterator[Daemon]:
    """One daemon shared by the tests that do not restart it."""
    d = Daemon(*artifacts).start()
    yield d
    d.close()


@pytest.fixture
def fresh_daemon(artifacts: tuple[Path, Path]) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that kill or restart it."""
    d = Daemon(*artifacts).start()
    yield d
    if d.process is not None and d.process.poll() is not None:
        d.start()  # a test left it dead: bring it back to destroy what is left
    d.close()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as c:
        yield c


@pytest.fixture
def container(client: Client) -> Iterator[str]:
    handle = client.create()
    yield handle
    try:
        client.destroy(handle)
    except Exception:
        pass
