"""Drive ``corral-init`` directly, without the daemon (see plugins/isolation/README.md).

Each test launches a real container (new namespaces, an overlay on a busybox
rootfs), talks the init protocol over its socket and checks what a job sees.
The tests need root; they build the init with ``build.py`` and the rootfs with
``scripts/build-rootfs.sh`` (or use ``$CORRAL_TEST_ROOTFS``).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from plugins.cgroups.layout import Placement, detect

REPO = pathlib.Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
CORRAL_UID = 10000
TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
#: Docker's default capabilities without MKNOD (see README.md), as capability numbers.
PRIVILEGED_CAPS = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31)


def _load_build_module():
    """Import build.py by path: the plugin package itself needs the daemon's dependencies."""
    path = REPO / "plugins" / "isolation" / "build.py"
    spec = importlib.util.spec_from_file_location("corral_isolation_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Adopt each container's PID 1 when its launcher exits, so the test can reap it.

    Only for this module: other tests of the session must not inherit orphans.
    """
    _set_subreaper(True)
    yield
    _set_subreaper(False)


@pytest.fixture(scope="session")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _load_build_module().build_init(tmp_path_factory.mktemp("init") / "corral-init")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if os.environ.get("CORRAL_TEST_ROOTFS"):
        path = pathlib.Path(os.environ["CORRAL_TEST_ROOTFS"])
    else:
        path = tmp_path_factory.mktemp("rootfs") / "rootfs"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build-rootfs.sh"), str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    assert (path / "bin" / "busybox").is_file()
    return path


class Container:
    """One launched ``corral-init`` and a connection to its socket."""

    def __init__(self, init: pathlib.Path, rootfs: pathlib.Path, base: pathlib.Path) -> None:
        self.init = init
        self.rootfs = rootfs
        self.base = base
        self.root = base / "root"
        self.socket_path = base / "init.sock"
        self.hostname = "box-" + base.name[-8:].strip("_-") or "box"
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.exits: dict[int, int] = {}
        self._next_id = 1
        for name in ("root", "upper", "work"):
            (base / name).mkdir()

    def spec(self, extra: tuple[str, ...] = (), cgroups: tuple[pathlib.Path, ...] = ()) -> str:
        """The launch spec of a container, in the daemon's order: the set-up (the
        launcher's part up to the proc mount, then PID 1's, *extra* last), then cgroups."""
        lines = [
            f"root\t{self.root}",
            f"mount\toverlay\toverlay\t/\t-\tlowerdir={self.rootfs},"
            f"upperdir={self.base / 'upper'},workdir={self.base / 'work'}",
            "mount\tsysfs\tsysfs\t/sys\tro,nosuid,nodev,noexec\t-",
            "mount\ttmpfs\ttmpfs\t/dev\tnosuid\tmode=755",
            *(f"mknod\t/dev/{name}\tc\t{major}\t{minor}\t666" for name, major, minor in DEVICES),
            "mount\tdevpts\tdevpts\t/dev/pts\tmkdir\tnewinstance,ptmxmode=0666,mode=620",
            "symlink\tpts/ptmx\t/dev/ptmx",
            "mount\ttmpfs\tshm\t/dev/shm\tmkdir,nosuid,nodev\tmode=1777",
            f"hostname\t{self.hostname}",
            "loopback",
            f"socket\t{self.socket_path}",
            "mount\tproc\tproc\t/proc\tnosuid,nodev,noexec,mkdir\t-",
            *extra,
            *(f"cgroup\t{path}" for path in cgroups),
            "end",
        ]
        return "".join(line + "\n" for line in lines)

    def launch(self, extra: tuple[str, ...] = (), cgroups: tuple[pathlib.Path, ...] = ()) -> None:
        result = subprocess.run(
            [str(self.init), "launch", str(self.base)],  # a label, as the daemon passes
            input=self.spec(extra, cgroups),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        self.pid = int(result.stdout)
        self.sock = self.connect()

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(TIMEOUT)
        sock.connect(str(self.socket_path))
        return sock

    def _receive(self) -> list[str]:
        assert self.sock is not None
        packet = self.sock.recv(1 << 20)
        assert packet, "the init closed the connection"
        assert packet.endswith(b"\0")
        return [p.decode() for p in packet[:-1].split(b"\0")]

    def request(self, *parts: str, fds: tuple[int, ...] = ()) -> list[str]:
        """Send one request and return its reply (``exit`` messages met on the way are kept)."""
        assert self.sock is not None
        data = b"".join(p.encode() + b"\0" for p in parts)
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)
        while True:
            reply = self._receive()
            if reply[0] != "exit":
                return reply
            self.exits[int(reply[1])] = int(reply[2])

    def wait_exit(self, job_id: int) -> int:
        """Wait for the ``exit`` message of *job_id*; its status."""
        while job_id not in self.exits:
            reply = self._receive()
            assert reply[0] == "exit", reply
            self.exits[int(reply[1])] = int(reply[2])
        return self.exits[job_id]

    def spawn(self, script: str, *fields: str, job_id: int | None = None) -> Job:
        """Start ``/bin/sh -c SCRIPT`` with extra ``key=value`` *fields*."""
        if job_id is None:
            job_id = self._next_id
            self._next_id += 1
        job = Job(self, job_id, self.base / f"job{job_id}")
        with (
            open(job.path("out"), "wb") as out,
            open(job.path("err"), "wb") as err,
            open(job.path("status"), "wb") as status,
        ):
            job.reply = self.request(
                "spawn",
                f"id={job_id}",
                *fields,
                "arg=/bin/sh",
                "arg=-c",
                f"arg={script}",
                fds=(out.fileno(), err.fileno(), status.fileno()),
            )
        return job

    def run(self, script: str, *fields: str) -> Job:
        """Spawn a job and wait for its exit."""
        job = self.spawn(script, *fields)
        assert job.reply[0] == "started", job.reply
        job.status = self.wait_exit(job.id)
        return job

    def rss_kib(self) -> int:
        status = pathlib.Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match
        return int(match[1])

    def destroy(self) -> None:
        """SIGKILL PID 1, reap it, and check nothing of the container is left mounted."""
        if self.sock is not None:
            self.sock.close()
        if self.pid is not None:
            pid, self.pid = self.pid, None
            os.kill(pid, signal.SIGKILL)
            assert os.waitpid(pid, 0)[0] == pid
        assert not os.path.ismount(self.root)
        assert str(self.root) not in pathlib.Path("/proc/self/mountinfo").read_text()


class Job:
    def __init__(self, container: Container, job_id: int, prefix: pathlib.Path) -> None:
        self.container = container
        self.id = job_id
        self.prefix = prefix
        self.reply: list[str] = []
        self.status: int | None = None

    def path(self, name: str) -> pathlib.Path:
        return self.prefix.with_name(f"{self.prefix.name}.{name}")

    @property
    def out(self) -> str:
        return self.path("out").read_text()

    @property
    def err(self) -> str:
        return self.path("err").read_text()

    @property
    def status_file(self) -> str:
        return self.path("status").read_text()


@pytest.fixture
def new_container(
    init_binary: pathlib.Path, rootfs: pathlib.Path, tmp_path: pathlib.Path
) -> Iterator:
    """A factory of containers (not launched yet); each is destroyed after the test."""
    made: list[Container] = []

    def make(name: str = "c") -> Container:
        base = tmp_path / name
        base.mkdir()
        container = Container(init_binary, rootfs, base)
        made.append(container)
        return container

    yield make
    errors = []
    for container in made:
        try:
            container.destroy()
        except Exception as e:  # destroy the others all the same
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def container(new_container) -> Container:
    c = new_container()
    c.launch()
    return c


# ---- namespaces and the root filesystem ----------------------------------


def test_job_runs_in_its_own_pid_namespace(container: Container) -> None:
    job = container.run("echo $$; cat /proc/1/cmdline | tr '\\0' ' '")
    pid, init_cmdline = job.out.splitlines()
    assert job.status == 0
    assert 1 < int(pid) < 10
    assert int(job.reply[2]) == int(pid)
    assert "corral-init" in init_cmdline


def test_init_keeps_the_launch_label_in_its_cmdline(container: Container) -> None:
    cmdline = pathlib.Path(f"/proc/{container.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [str(container.init).encode(), b"launch", str(container.base).encode()]


def test_proc_shows_no_host_process(container: Container) -> None:
    job = container.run("ls /proc")
    pids = sorted(int(name) for name in job.out.split() if name.isdigit())
    assert pids[0] == 1
    assert len(pids) <= 3, pids  # init, the shell, ls
    assert max(pids) < 10


def test_hostname_and_loopback(container: Container) -> None:
    job = container.run("hostname; cat /sys/class/net/lo/operstate; ls /sys/class/net")
    hostname, lo_state, *devices = job.out.split()
    assert hostname == container.hostname
    assert lo_state in ("unknown", "up")
    assert devices == ["lo"]  # a new network namespace


def test_system_mounts_and_devices(container: Container) -> None:
    job = container.run(
        "cat /proc/self/mountinfo; echo ---; ls -l /dev; echo ---; echo hi >/dev/null; "
        "head -c 4 /dev/zero | wc -c; readlink /dev/ptmx; touch /sys/x 2>&1; true"
    )
    mounts, devices, rest = job.out.split("---\n")
    by_target = {line.split()[4]: line for line in mounts.splitlines()}
    assert " - overlay " in by_target["/"]
    assert "nosuid,nodev,noexec" in by_target["/proc"]
    assert by_target["/sys"].split()[5].startswith("ro")
    assert " - devpts " in by_target["/dev/pts"]
    assert " - tmpfs shm " in by_target["/dev/shm"]
    for name, major, minor in DEVICES:
        assert re.search(rf"^crw-rw-rw- .* {major}, +{minor} .* {name}$", devices, re.M), name
    assert rest.splitlines()[:2] == ["4", "pts/ptmx"]
    assert "Read-only file system" in rest


def test_mkdir_sets_the_mode_and_leaves_a_right_one_alone(new_container) -> None:
    c = new_container()
    # /tmp is 1777 in the rootfs already, /home/corral is not 0700.
    c.launch(extra=("mkdir\t/tmp\t1777", "mkdir\t/home/corral\t700", "mkdir\t/new/dir\t750"))
    job = c.run("stat -c '%a %n' /tmp /home/corral /new/dir")
    assert job.out.split("\n")[:3] == ["1777 /tmp", "700 /home/corral", "750 /new/dir"]
    # A chmod on the overlay copies the directory up: only the changed ones are there.
    upper = c.base / "upper"
    assert sorted(str(p.relative_to(upper)) for p in upper.rglob("*")) == [
        "home",
        "home/corral",
        "new",
        "new/dir",
    ]


def test_host_never_sees_the_container_mounts(container: Container) -> None:
    container.run("true")
    assert not os.path.ismount(container.root)
    assert str(container.root) not in pathlib.Path("/proc/self/mountinfo").read_text()
    assert os.listdir(container.root) == []


def test_symlink_in_rootfs_cannot_lead_to_the_host(new_container) -> None:
    host_dir = pathlib.Path("/etc/corral-test")
    assert not host_dir.exists(), "left over from an earlier run"
    assert not pathlib.Path("/evil").exists()
    c = new_container()
    os.symlink("/etc", c.base / "upper" / "evil")
    c.launch(extra=("mkdir\t/evil/corral-test\t0755",))
    try:
        job = c.run("test -d /etc/corral-test && stat -c %a /etc/corral-test")
        assert job.status == 0, job.err
        assert job.out.strip() == "755"
        assert (c.base / "upper" / "etc" / "corral-test").is_dir()
        assert not host_dir.exists()
        assert not pathlib.Path("/evil").exists()
    finally:
        if host_dir.is_dir():
            host_dir.rmdir()


def pids_hierarchy() -> Placement:
    """Where this host keeps the pids controller (a v1 hierarchy, or the v2 tree)."""
    placement = detect().placements.get("pids")
    if placement is None:
        pytest.skip("no pids controller on this host")
    return placement


def cgroup_line(placement: Placement, cgroup: pathlib.Path) -> tuple[str, str]:
    """A ``grep`` pattern for the line of /proc/PID/cgroup about *placement*'s hierarchy,
    and the end of that line for a process in *cgroup*."""
    relative = cgroup.relative_to(placement.root)
    if placement.version == 1:
        return ":pids:", f":pids:/{relative}"
    return "^0::", f"0::/{relative}"


def host_cgroup_line(pid: int, pattern: str) -> str:
    """The line of the host's /proc/PID/cgroup that ``grep -e PATTERN`` would find."""
    import re

    text = pathlib.Path(f"/proc/{pid}/cgroup").read_text()
    (line,) = [x for x in text.splitlines() if re.search(pattern, x)]
    return line


@pytest.mark.parametrize("join_file", ["tasks", "cgroup.procs"])
def test_cgroup_directive_moves_the_container(new_container, join_file: str) -> None:
    pids = pids_hierarchy()
    if pids.version == 2 and join_file == "tasks":
        pytest.skip("cgroup v2 has no tasks file")
    cgroup = pids.root / f"corral-test-{os.getpid()}"
    c = new_container()
    cgroup.mkdir()
    try:
        c.launch(cgroups=(cgroup / join_file,))
        pattern, line = cgroup_line(pids, cgroup)
        assert host_cgroup_line(c.pid, pattern).endswith(line)
        # Its own cgroup namespace: inside, that cgroup is the root.
        job = c.run(f"grep -e {pattern} /proc/self/cgroup")
        assert job.out.strip().endswith(":/")
        assert str(c.pid) in (cgroup / "cgroup.procs").read_text().split()
        c.destroy()
        assert (cgroup / "cgroup.procs").read_text() == ""
    finally:
        c.destroy()  # (again, if a check failed first): a cgroup with a task cannot go
        cgroup.rmdir()


def test_launcher_sets_up_while_the_cgroups_are_still_to_come(new_container) -> None:
    pids = pids_hierarchy()
    join = pids.backend.join_file
    cgroup = pids.root / f"corral-test-stream-{os.getpid()}"
    cgroup.mkdir()
    c = new_container()
    launcher = subprocess.Popen(
        [str(c.init), "launch", str(c.base)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdin is not None
        launcher.stdin.write(c.spec().removesuffix("end\n"))
        launcher.stdin.flush()
        # The set-up up to the proc mount is applied at once, the socket included.
        deadline = time.monotonic() + TIMEOUT
        while not c.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert c.socket_path.exists() and launcher.poll() is None
        launcher.stdin.write(f"cgroup\t{cgroup / join}\nend\n")
        out, err = launcher.communicate(timeout=TIMEOUT)
        assert launcher.returncode == 0, err
        c.pid = int(out)
        c.sock = c.connect()
        pattern, line = cgroup_line(pids, cgroup)
        assert host_cgroup_line(c.pid, pattern).endswith(line)  # PID 1 was forked into it
        job = c.run(f"grep -e {pattern} /proc/self/cgroup; cat /proc/1/comm; hostname; ls /dev/pts")
        lines = job.out.split("\n")
        assert lines[0].endswith(":/")  # and is the root of its own cgroup namespace
        assert lines[1:3] == ["corral-init", c.hostname]  # its own /proc, made by PID 1
        assert "ptmx" in lines[3:]
        c.destroy()
    finally:
        launcher.kill()
        launcher.wait()
        c.destroy()  # (again, if a check failed first): a cgroup with a task cannot go
        cgroup.rmdir()


# ---- jobs: identity, privileges, set-up -----------------------------------


def test_default_user_is_corral_without_capabilities(container: Container) -> None:
    job = container.run(
        "id -u; id -g; id -G; pwd; echo $HOME $USER $LOGNAME; grep ^Cap /proc/self/status"
    )
    lines = job.out.splitlines()
    assert lines[:4] == [str(CORRAL_UID), str(CORRAL_UID), str(CORRAL_UID), "/home/corral"]
    assert lines[4] == "/home/corral corral corral"
    caps = dict(line.split(":\t") for line in lines[5:])
    assert set(caps.values()) == {"0000000000000000"}
    nnp = container.run("grep NoNewPrivs /proc/self/status")
    assert nnp.out.split() == ["NoNewPrivs:", "1"]


def test_privileged_job_is_root_with_docker_capabilities(container: Container) -> None:
    job = container.run("id -u; pwd; grep -E '^Cap(Eff|Bnd)' /proc/self/status", "privileged=1")
    uid, cwd, eff, bnd = job.out.splitlines()
    assert (uid, cwd) == ("0", "/root")
    expected = sum(1 << cap for cap in PRIVILEGED_CAPS)
    assert int(eff.split()[1], 16) == expected
    assert int(bnd.split()[1], 16) == expected


def test_privileged_job_cannot_mount(container: Container) -> None:
    job = container.run("mkdir -p /mnt && mount -t tmpfs x /mnt", "privileged=1")
    assert job.status != 0
    assert "denied" in job.err.lower() or "not permitted" in job.err.lower(), job.err


def test_user_by_name_or_uid(container: Container) -> None:
    assert container.run("id -u", "user=nobody").out.strip() == "65534"
    job = container.run("id -u; id -g; pwd; echo $USER", "user=4242")
    assert job.out.split() == ["4242", "4242", "/", "4242"]
    root = container.run("id -u; grep CapEff /proc/self/status", "user=root")
    assert root.out.split() == ["0", "CapEff:", "0000000000000000"]
    privileged = container.run(
        "id -u; grep CapEff /proc/self/status", "user=corral", "privileged=1"
    )
    uid, _, eff = privileged.out.split()
    assert uid == str(CORRAL_UID)
    assert int(eff, 16) == sum(1 << cap for cap in PRIVILEGED_CAPS)  # kept through exec (ambient)


def test_env_dir_and_rlimits(container: Container) -> None:
    job = container.run(
        'echo "$FOO|$PATH|$HOME"; pwd; ulimit -n; ulimit -Hn; ulimit -c; ls /proc/self/fd',
        "env=FOO=a=b",
        "env=PATH=/bin",
        "dir=/tmp",
        "rlimit=nofile:64:128",
        "rlimit=core:unlimited:unlimited",
    )
    lines = job.out.splitlines()
    assert lines[:5] == ["a=b|/bin|/home/corral", "/tmp", "64", "128", "unlimited"]
    assert sorted(lines[5:], key=int) == ["0", "1", "2", "3"]  # 3: the fd ls reads
    bad = container.spawn("true", "rlimit=nofile:lots:128")
    assert bad.reply == ["error", str(bad.id), "spawn: bad or unknown field"]


def test_stdin_is_dev_null_and_stderr_is_kept_apart(container: Container) -> None:
    job = container.run("cat; readlink /proc/self/fd/0; echo oops >&2")
    assert job.out.strip().endswith("null")
    assert job.err == "oops\n"


def test_unknown_user_is_an_error(container: Container) -> None:
    job = container.spawn("true", "user=nosuch")
    assert job.reply == ["error", str(job.id), "unknown user nosuch"]
    assert job.status_file == ""


def test_chdir_to_a_missing_dir_is_an_error(container: Container) -> None:
    job = container.spawn("true", "dir=/nope")
    assert job.reply == ["error", str(job.id), "chdir /nope: No such file or directory"]


def test_exec_failure_is_an_error(container: Container) -> None:
    reply = container.request(
        "spawn", "id=9", "arg=/bin/nothing-here", fds=(1, 2, os.open("/dev/null", os.O_WRONLY))
    )
    assert reply == ["error", "9", "exec /bin/nothing-here: No such file or directory"]
    assert container.request("jobs") == ["jobs"]


def test_bad_requests_are_errors(container: Container) -> None:
    null = os.open("/dev/null", os.O_WRONLY)
    try:
        assert container.request("spawn", "id=1", "arg=true")[0:2] == ["error", "1"]  # no fds
        assert container.request("spawn", "arg=true", fds=(null, null, null))[0] == "error"
        reply = container.request("spawn", "id=2", "bogus=1", "arg=x", fds=(null, null, null))
        assert reply == ["error", "2", "spawn: bad or unknown field"]
        assert container.request("signal", "77", "15") == ["error", "77", "signal: no such job"]
        assert container.request("what")[0] == "error"
        assert container.request("ping") == ["pong"]
    finally:
        os.close(null)


# ---- exit statuses, signals ----------------------------------------------


def test_exit_status_is_announced_and_written(container: Container) -> None:
    job = container.run("exit 3")
    assert job.status == 3
    assert job.status_file == "3\nexit 3\n"


def test_killed_job_reports_128_plus_signal(container: Container) -> None:
    job = container.run("kill -9 $$")
    assert job.status == 137
    assert job.status_file == "137\nsignal 9\n"


def test_an_exit_code_is_told_from_a_signal(container: Container) -> None:
    assert container.run("exit 137").status_file == "137\nexit 137\n"


def test_signal_and_jobs(container: Container) -> None:
    job = container.spawn("exec sleep 100")
    assert job.reply[0] == "started"
    other = container.spawn("exec sleep 100")
    assert sorted(container.request("jobs")[1:]) == sorted([str(job.id), str(other.id)])
    assert container.request("signal", str(job.id), str(int(signal.SIGTERM))) == ["ok"]
    assert container.wait_exit(job.id) == 128 + signal.SIGTERM
    assert container.request("jobs") == ["jobs", str(other.id)]
    assert container.request("signal", str(other.id), "9") == ["ok"]
    assert container.wait_exit(other.id) == 137


def test_signal_to_one_process_of_the_job(container: Container) -> None:
    job = container.spawn("sleep 100 & echo $! > /tmp/child; wait $!; exit $?")
    other = container.spawn("exec sleep 100")
    child = container.run("while [ ! -s /tmp/child ]; do sleep 0.01; done; cat /tmp/child")
    pid = child.out.strip()
    nosuch = "signal: no such process in the job"
    # PID 1, another job's leader, no process at all: refused, nothing sent.
    for wrong in ("1", other.reply[2], "99999"):
        assert container.request("signal", str(job.id), "9", wrong) == [
            "error",
            str(job.id),
            nosuch,
        ]
    assert container.request("signal", str(job.id), "9", pid) == ["ok"]
    assert container.wait_exit(job.id) == 137  # the shell exits with its child's status
    assert container.request("signal", str(other.id), "9", "x")[2] == "signal: bad request"
    assert container.request("signal", str(other.id), "9") == ["ok"]


def test_killall_then_none(container: Container) -> None:
    job = container.spawn("sleep 100")
    assert job.reply[0] == "started"
    assert container.request("killall", "0") == ["ok"]
    assert container.request("killall", str(int(signal.SIGTERM))) == ["ok"]
    assert container.wait_exit(job.id) == 128 + signal.SIGTERM
    assert container.request("killall", "0") == ["none"]


def test_orphans_are_reaped(container: Container) -> None:
    job = container.run("sleep 0.2 & sleep 0.2 & echo started")
    assert job.status == 0
    deadline = time.monotonic() + 10
    while container.request("killall", "0") != ["none"]:  # the orphans end, and are reaped
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ps = pathlib.Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text()
    assert ps.strip() == ""


def test_exit_is_sent_to_every_client(container: Container) -> None:
    second = container.connect()
    try:
        job = container.run("exit 5")
        assert job.status == 5
        packet = second.recv(4096)
        assert packet == f"exit\0{job.id}\x005\0".encode()
    finally:
        second.close()


def test_init_ignores_sigterm_and_sighup(container: Container) -> None:
    assert container.pid is not None
    os.kill(container.pid, signal.SIGTERM)
    os.kill(container.pid, signal.SIGHUP)
    time.sleep(0.1)
    assert container.request("ping") == ["pong"]


def test_large_request_and_small_memory(container: Container) -> None:
    chunk = "x" * 50_000
    out = container.base / "big.out"
    with open(out, "wb") as f:
        reply = container.request(
            "spawn",
            "id=1",
            *("arg=/bin/sh", "arg=-c", 'arg=echo "$#"'),
            *(f"arg={chunk}" for _ in range(4)),  # a packet of ~200 KB
            fds=(f.fileno(), f.fileno(), f.fileno()),
        )
    assert reply[0] == "started", reply[:2]
    assert container.wait_exit(1) == 0
    assert out.read_text() == "3\n0\nexit 0\n"  # $0 is the first chunk; then the status
    assert container.rss_kib() < 1024
    long_name = "/" + "y" * 2000
    reply = container.request("spawn", "id=2", f"arg={long_name}", fds=(1, 2, 2))
    assert reply[:2] == ["error", "2"]
    assert reply[2].startswith("exec /yyy") and reply[2].endswith(": File name too long")


# ---- launch ---------------------------------------------------------------


def test_launch_failure_names_the_step(new_container) -> None:
    c = new_container()
    spec = c.spec(extra=("mount\tnosuchfs\tnone\t/x\tmkdir\t-",))
    result = subprocess.run(
        [str(c.init), "launch"], input=spec, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "corral-init: mount nosuchfs on /x: No such device\n"
    assert not c.socket_path.exists() or not os.listdir(c.root)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("frobnicate\tx\n", "launch spec line 1: unknown directive frobnicate"),
        ("\nroot\t/x\tmore\n", "launch spec line 2: root takes 1 fields"),
        ("mount\tproc\tproc\t/proc\tbogus\t-\n", "launch spec line 1: unknown mount flag bogus"),
        ("mknod\t/dev/x\tb\t1\t3\t666\n", "launch spec line 1: bad mknod fields"),
        ("mkdir\t/x\t999\n", "launch spec line 1: bad mode 999"),
        (f"socket\t/{'s' * 110}\n", "launch spec line 1: socket path longer than 107 bytes"),
        ("seccomp\t0600\t-\t0600\n", "launch spec line 1: bad seccomp filter"),  # not whole insns
        (
            "seccomp\t-\t" + "zz" * 8 + "\t" + "00" * 8 + "\n",
            "launch spec line 1: bad seccomp filter",
        ),
        (
            "seccomp\t" + "00" * 8 * 4097 + "\t-\t" + "00" * 8 + "\n",
            "launch spec line 1: bad seccomp filter",
        ),
        ("seccomp\t-\t-\n", "launch spec line 1: seccomp takes 3 fields"),
        ("admin\tyes\n", "launch spec line 1: admin takes 0 fields"),
        (
            "seccomp\t-\t-\t-\n" + "seccomp\t-\t" + "00" * 8 + "\t-\n",
            "launch spec line 2: a second seccomp",
        ),
        ("hostname\th\nend\n", "launch spec: hostname before root"),
        ("end\n", "launch spec: no root"),
        (
            "root\t/nonexistent\nsocket\t/tmp/s\nend\n",
            "open root /nonexistent: No such file or directory",
        ),
        # A daemon that died half-way: the launcher makes no container.
        ("root\t/\n", "launch spec: no end line"),
    ],
)
def test_bad_spec_is_rejected(init_binary: pathlib.Path, spec: str, error: str) -> None:
    result = subprocess.run(
        [str(init_binary), "launch"], input=spec, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"corral-init: {error}\n"


# ---- the build helpers -----------------------------------------------------


def test_build_init_rebuilds_only_when_the_source_changed(tmp_path: pathlib.Path) -> None:
    build = _load_build_module()
    dest = tmp_path / "bin" / "corral-init"
    assert build.build_init(dest) == dest
    stamp = dest.with_suffix(".sha256")
    assert stamp.read_text().strip() == build.source_digest()
    inode = dest.stat().st_ino
    build.build_init(dest)
    assert dest.stat().st_ino == inode  # up to date: not rebuilt
    stamp.write_text("0" * 64 + "\n")  # as if built from another source
    build.build_init(dest)
    assert dest.stat().st_ino != inode  # rebuilt and renamed into place
    assert stamp.read_text().strip() == build.source_digest()
    assert os.access(dest, os.X_OK)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["corral-init", "corral-init.sha256"]


def test_rootfs_layout(rootfs: pathlib.Path) -> None:
    def mode(rel: str) -> int:
        return (rootfs / rel).stat().st_mode & 0o7777

    assert (mode("tmp"), mode("var/tmp"), mode("root")) == (0o1777, 0o1777, 0o700)
    home = (rootfs / "home/corral").stat()
    assert (home.st_uid, home.st_gid) == (CORRAL_UID, CORRAL_UID)
    for applet in ("bin/sh", "usr/bin/env", "sbin/ifconfig"):
        target = os.readlink(rootfs / applet)
        assert not target.startswith("/")
        assert (rootfs / applet).resolve() == rootfs / "bin/busybox"
    passwd = (rootfs / "etc/passwd").read_text()
    assert "corral:x:10000:10000:corral:/home/corral:/bin/sh" in passwd
    assert "127.0.0.1" in (rootfs / "etc/hosts").read_text()
    again = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-rootfs.sh"), str(rootfs)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "exists" in again.stdout


def test_job_joins_its_cgroups_before_it_runs(container: Container, tmp_path: pathlib.Path) -> None:
    """Fds past the three are membership files: the child writes ``0`` to each before exec
    (pipes stand in for ``cgroup.procs`` here: what matters is the write, and its order)."""
    pipes = [os.pipe() for _ in range(2)]
    out = tmp_path / "out"
    with open(out, "wb") as f:
        reply = container.request(
            "spawn",
            "id=1",
            *("arg=/bin/sh", "arg=-c", "arg=echo ran"),
            fds=(f.fileno(), f.fileno(), f.fileno(), pipes[0][1], pipes[1][1]),
        )
    for _, w in pipes:
        os.close(w)
    assert reply[0] == "started", reply
    assert container.wait_exit(1) == 0
    assert [os.read(r, 16) for r, _ in pipes] == [b"0", b"0"]
    for r, _ in pipes:
        os.close(r)
    # A membership file the child cannot write fails the job before it runs anything.
    ro = os.open("/dev/null", os.O_RDONLY)
    with open(out, "wb") as f:
        reply = container.request(
            "spawn", "id=2", "arg=/bin/true", fds=(f.fileno(), f.fileno(), f.fileno(), ro)
        )
    os.close(ro)
    assert reply[:2] == ["error", "2"] and reply[2].startswith("join the job's cgroup")
