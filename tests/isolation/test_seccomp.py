"""Every job runs under a seccomp filter (issue #17, hole 9): the default profile
(Debian's, with Corral's rules on top), a client's profile file, or none.

A static probe (``seccomp_probe.c``, compiled here) tries each call the profile
blocks and prints the errno it got (0: the call went through).
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.isolation import seccomp
from plugins.isolation.build import CFLAGS
from supervisor import errors
from supervisor.client import Client
from tests.conftest import NOTHING_LEFT, Daemon, init_pid, leftovers

PROBE_SOURCE = Path(__file__).with_name("seccomp_probe.c")
ENOSYS, EPERM, ECONNREFUSED = errno.ENOSYS, errno.EPERM, errno.ECONNREFUSED

#: What the default profile answers an unprivileged job: the Debian profile's ENOSYS
#: (its default action) for calls it does not list, EPERM for those it refuses
#: without a capability; Corral's rules (EPERM) for namespaces, mounts and keyctl.
UNPRIVILEGED = {
    "keyctl": EPERM,
    "add_key": ENOSYS,
    "request_key": ENOSYS,
    "io_uring_setup": ENOSYS,
    "perf_event_open": EPERM,
    "bpf": EPERM,
    "kexec_load": EPERM,
    "open_by_handle_at": EPERM,
    "chroot": EPERM,  # the kernel's: no CAP_SYS_CHROOT
    # The socket is made, but the kernel answers audit only in the host's user namespace.
    "audit_socket": 0,
    "audit_user": ECONNREFUSED,
    "clone_newuser": ENOSYS,
    "clone3_newuser": ENOSYS,
    "unshare_newuser": EPERM,
    "mount": EPERM,
}
#: A privileged job's capabilities open chroot; nothing else.
PRIVILEGED = {**UNPRIVILEGED, "chroot": 0}


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the static probe, bound read-only into the containers."""
    directory = tmp_path_factory.mktemp("probe")
    directory.chmod(0o755)
    subprocess.run(["gcc", *CFLAGS, "-o", str(directory / "probe"), str(PROBE_SOURCE)], check=True)
    return directory


def create(client: Client, probe_dir: Path, **config: Any) -> str:
    return client.create({"bind_mounts": [[str(probe_dir), "/probe"]], **config})


@pytest.fixture
def probed(client: Client, probe_dir: Path) -> Iterator[str]:
    handle = create(client, probe_dir)
    yield handle
    client.destroy(handle)


def probe(client: Client, handle: str, **opts: Any) -> dict[str, int]:
    status, out, err = client.run(handle, "/probe/probe", **opts)
    assert status == 0, err
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def filter_mode(client: Client, handle: str, **opts: Any) -> tuple[str, str]:
    """The job's ``Seccomp`` and ``Seccomp_filters`` lines of /proc/self/status."""
    _, out, _ = client.run(handle, "grep ^Seccomp /proc/self/status", **opts)
    found = dict(re.findall(r"^(Seccomp\w*):\s*(\d+)$", out, flags=re.M))
    return found["Seccomp"], found.get("Seccomp_filters", "")


def test_a_job_gets_the_default_profiles_answer_for_each_blocked_call(
    client: Client, probed: str
) -> None:
    assert probe(client, probed) == UNPRIVILEGED
    # The container's filter, loaded by PID 1, and nothing on top: one serves every job.
    assert filter_mode(client, probed) == ("2", "1")
    _, out, _ = client.run(probed, "grep ^Seccomp /proc/1/status")
    assert re.findall(r"^Seccomp\w*:\s*(\d+)$", out, flags=re.M) == ["2", "1"]


def test_a_privileged_job_gets_what_the_profile_allows_its_capabilities(
    client: Client, probed: str
) -> None:
    assert probe(client, probed, privileged=True) == PRIVILEGED
    # Root with a restricted capability set may still not make a user namespace.
    status, _, err = client.run(probed, "unshare -U id -u", privileged=True)
    assert status != 0 and "Operation not permitted" in err


def test_every_descendant_of_a_job_is_filtered(client: Client, probed: str) -> None:
    """A background grandchild, still running after the job's first process exited, and a
    process of a second job alike: the filter comes with every fork and exec."""
    status, out, _ = client.run(
        probed, "(sh -c 'sleep 0.2; grep ^Seccomp: /proc/self/status' &) ; sleep 0.5"
    )
    assert (status, out) == (0, "Seccomp:\t2\n")
    assert probe(client, probed) == UNPRIVILEGED


def test_ordinary_work_goes_on_under_the_filter(client: Client, probed: str) -> None:
    """A shell, forks, pipes, signals, a terminal, TCP over loopback, netlink."""
    script = "echo abc | tr b x; (echo sub) & wait; sleep 5 & kill $! && wait $!; echo killed $?"
    assert client.run(probed, script)[:2] == [0, "axc\nsub\nkilled 143\n"]
    tcp = (
        "nc -l -p 7070 -e echo over-tcp & "
        "for i in $(seq 50); do nc 127.0.0.1 7070 </dev/null 2>/dev/null && break; sleep 0.1; done; "
        "wait; ip -4 addr show eth0 | grep -c inet"  # ip: netlink
    )
    assert client.run(probed, tcp) == [0, "over-tcp\n1\n", ""]
    status, out, _ = client.run(probed, "tty; echo in-a-terminal", tty={"rows": 24, "cols": 80})
    assert status == 0 and "in-a-terminal" in out
    assert client.run(probed, "id -u", privileged=True) == [0, "0\n", ""]
    assert filter_mode(client, probed) == ("2", "1")
    assert filter_mode(client, probed, privileged=True) == ("2", "1")


def test_seccomp_false_lets_the_calls_through(client: Client, probe_dir: Path) -> None:
    handle = create(client, probe_dir, seccomp=False)
    try:
        results = probe(client, handle)
        assert filter_mode(client, handle) == ("0", "0")
        # What the kernel alone allows a job without capabilities.
        for name in ("keyctl", "add_key", "io_uring_setup", "unshare_newuser", "mount"):
            assert results[name] == 0, name
        assert client.run(handle, "unshare -U id -u") == [0, "65534\n", ""]
    finally:
        client.destroy(handle)


def test_a_custom_profile_file_is_honoured(client: Client, probe_dir: Path, tmp_path: Path) -> None:
    """Its default action's errno, its rules with their argument conditions, its
    capability includes; Corral's rules are not added to a client's profile."""
    profile = json.loads(seccomp.DEFAULT_PROFILE.read_text())
    profile["defaultErrnoRet"] = errno.EXDEV  # io_uring_setup, add_key... are not listed
    rules = {
        "syscalls": [  # the probe asks keyctl for op 0 (KEYCTL_GET_KEYRING_ID)
            {
                "names": ["keyctl"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EDOM,
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}],
            },
            {
                "names": ["keyctl"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_NE"}],
            },
        ]
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(seccomp.with_rules(profile, rules)))
    handle = create(client, probe_dir, seccomp=str(path))
    try:
        results = probe(client, handle)
        assert (results["io_uring_setup"], results["add_key"]) == (errno.EXDEV, errno.EXDEV)
        assert results["keyctl"] == errno.EDOM
        assert results["unshare_newuser"] == 0  # Debian's own rule, not Corral's
        assert probe(client, handle, privileged=True)["chroot"] == 0
    finally:
        client.destroy(handle)


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "per-job"])
def test_a_profile_stacks_only_where_that_filters_exactly(
    client: Client, probe_dir: Path, tmp_path: Path, stacked: bool
) -> None:
    """keyctl op 0 refused by a rule for one kind of job. Kept for unprivileged jobs only,
    it stacks on the privileged filter, which allows the call. Kept for privileged jobs
    only, it cannot: stacked, the privileged filter would refuse the call to every job.
    Each job then loads its own kind's filter."""
    caps = {"caps": ["CAP_SYS_CHROOT"]}
    rule = {
        "names": ["keyctl"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": errno.EDOM,
        "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}],
        **({"excludes": caps} if stacked else {"includes": caps}),
    }
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    assert (seccomp.compile_file(path).unprivileged_rest is not None) == stacked
    handle = create(client, probe_dir, seccomp=str(path))
    try:
        assert filter_mode(client, handle) == ("2", "2" if stacked else "1")
        assert filter_mode(client, handle, privileged=True) == ("2", "1")
        refused = (errno.EDOM, 0) if stacked else (0, errno.EDOM)
        assert probe(client, handle)["keyctl"] == refused[0]
        assert probe(client, handle, privileged=True)["keyctl"] == refused[1]
    finally:
        client.destroy(handle)


def test_a_fuse_containers_privileged_jobs_are_filtered_for_cap_sys_admin(
    client: Client, probe_dir: Path, tmp_path: Path
) -> None:
    """With ``fuse`` a privileged job has CAP_SYS_ADMIN (in the container's namespaces),
    and its filter is compiled for it: a profile's rules for the capability apply to it,
    and to it only. The default profile's unprivileged filter is the same as ever."""
    default, _ = seccomp.compile_default()
    admin, _ = seccomp.compile_default(privileged_caps=seccomp.ADMIN_CAPS)
    assert admin.unprivileged == default.unprivileged
    assert admin.privileged != default.privileged
    rule = {
        "names": ["keyctl"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": errno.EDOM,
        "includes": {"caps": ["CAP_SYS_ADMIN"]},
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    cache = seccomp.ProfileCache()
    plain = cache.get(path)
    assert cache.get(path, seccomp.ADMIN_CAPS).privileged != plain.privileged
    assert cache.get(path) is plain  # each kept apart
    for fuse, refused in ((True, errno.EDOM), (False, 0)):
        handle = create(client, probe_dir, seccomp=str(path), fuse=fuse)
        try:
            assert probe(client, handle, privileged=True)["keyctl"] == refused
            assert probe(client, handle)["keyctl"] == 0
        finally:
            client.destroy(handle)


def test_the_init_and_every_kind_of_job_set_up_need_only_its_listed_calls(
    daemon: Daemon, client: Client, probe_dir: Path, tmp_path: Path
) -> None:
    """Under a profile that allows only ``seccomp.INIT_CALLS``, stacked: PID 1 sets the
    network up and serves, and jobs of each kind start (a static program that only
    exits: its exec and exit are listed), are signalled and end."""
    source = tmp_path / "exit0.c"
    source.write_text(
        'void _start(void) { __asm__ volatile("mov $231, %eax; xor %edi, %edi; syscall"); }\n'
    )
    subprocess.run(
        ["gcc", "-static", "-nostdlib", "-o", str(probe_dir / "exit0"), str(source)], check=True
    )
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": sorted(seccomp.INIT_CALLS), "action": "SCMP_ACT_ALLOW"}],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    assert seccomp.compile_file(path).unprivileged_rest == b""  # stacked, nothing on top
    handle = create(client, probe_dir, seccomp=str(path))
    try:
        status = (Path("/proc") / str(init_pid(daemon, handle)) / "status").read_text()
        assert re.findall(r"^Seccomp\w*:\s*(\d+)$", status, flags=re.M) == ["2", "1"]
        kinds: list[dict[str, Any]] = [
            {},
            {"privileged": True},
            {"stdin": True},
            {"tty": {"rows": 24, "cols": 80}},
            {"user": "root"},
            {"dir": "/tmp", "env": {"A": "b"}},
        ]
        for opts in kinds:
            ran = client.run(handle, "", argv=["/probe/exit0"], **opts)
            assert ran[0] == 0, (opts, ran)
        job = client.spawn(handle, "", argv=["/probe/exit0"], stdin=True)
        assert client.link(handle, job)[0] == 0
        assert client.call("ping") is not None
    finally:
        client.destroy(handle)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "unknown action 'SCMP_ACT_NOPE'"),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": '
            '[{"names": ["keyctll"], "action": "SCMP_ACT_ERRNO"}]}',
            "unknown syscall 'keyctll'",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], '
            '"action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]}',
            "args index must be 0-5",
        ),
        ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY"),
        ("[]", "not a JSON object"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_file_and_the_reason(
    fresh_daemon: Daemon, tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with fresh_daemon.client() as c:
        with pytest.raises(errors.InvalidRequest, match=re.escape(str(path))) as refused:
            c.create({"seccomp": str(path)})
        assert reason in str(refused.value)
        assert c.call("list") == []
    assert leftovers(fresh_daemon) == NOTHING_LEFT


def test_a_missing_or_relative_profile_is_refused(client: Client, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidRequest, match="No such file or directory"):
        client.create({"seccomp": str(tmp_path / "nope.json")})
    with pytest.raises(errors.InvalidRequest, match="absolute path"):
        client.create({"seccomp": "profile.json"})
    with pytest.raises(errors.InvalidRequest, match="absolute path"):
        client.create({"seccomp": 1})


def test_a_changed_profile_file_is_compiled_again(
    client: Client, probe_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "profile.json"
    allow_all = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    path.write_text(json.dumps(allow_all))
    first = create(client, probe_dir, seccomp=str(path))
    path.write_text(
        json.dumps(
            {
                **allow_all,
                "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}],
            }
        )
    )
    second = create(client, probe_dir, seccomp=str(path))
    try:
        assert probe(client, first)["keyctl"] == 0
        assert probe(client, second)["keyctl"] == errno.EXDEV
    finally:
        client.destroy(first)
        client.destroy(second)


def test_a_container_keeps_its_filter_across_a_daemon_restart(
    fresh_daemon: Daemon, probe_dir: Path
) -> None:
    with fresh_daemon.client() as c:
        handle = create(c, probe_dir)
    fresh_daemon.kill9()
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        assert probe(c, handle) == UNPRIVILEGED
        c.destroy(handle)


def test_the_privileged_capabilities_match_the_inits() -> None:
    """The profile is compiled for the capability set the init gives a privileged job."""
    source = (Path(seccomp.__file__).with_name("corral_init.c")).read_text()
    listed = re.search(r"privileged_caps\[\] = \{(.*?)\};", source, flags=re.S)
    assert listed is not None
    assert set(re.findall(r"CAP_\w+", listed.group(1))) == seccomp.PRIVILEGED_CAPS


def _keyctl(
    action: str, op: str | None = None, kept: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A keyctl rule, on op 0 with *op*, for the jobs *kept* names (includes/excludes)."""
    args = [{"index": 0, "value": 0, "op": op}] if op else []
    return {
        "names": ["keyctl"],
        "action": action,
        "errnoRet": errno.EDOM,
        "args": args,
        **(kept or {}),
    }


UNPRIVILEGED_ONLY = {"excludes": {"caps": ["CAP_SYS_CHROOT"]}}
PRIVILEGED_ONLY = {"includes": {"caps": ["CAP_SYS_CHROOT"]}}
#: A default that refuses, with what PID 1 needs allowed.
REFUSING = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "syscalls": [{"names": sorted(seccomp.INIT_CALLS), "action": "SCMP_ACT_ALLOW"}],
}


@pytest.mark.parametrize(
    ("profile", "rest"),
    [
        # The unprivileged rules answer every op (op 0 and the others): stacked.
        (
            {
                **REFUSING,
                "syscalls": [
                    *REFUSING["syscalls"],
                    _keyctl("SCMP_ACT_ERRNO", "SCMP_CMP_EQ", kept=UNPRIVILEGED_ONLY),
                    _keyctl("SCMP_ACT_ALLOW", "SCMP_CMP_NE", kept=UNPRIVILEGED_ONLY),
                    _keyctl("SCMP_ACT_ALLOW", kept=PRIVILEGED_ONLY),
                ],
            },
            2,
        ),
        # Op 0 is left to the default, which refuses: the rest would allow it.
        (
            {
                **REFUSING,
                "syscalls": [
                    *REFUSING["syscalls"],
                    _keyctl("SCMP_ACT_ALLOW", "SCMP_CMP_NE", kept=UNPRIVILEGED_ONLY),
                    _keyctl("SCMP_ACT_ALLOW", kept=PRIVILEGED_ONLY),
                ],
            },
            None,
        ),
        # The privileged filter refuses what the unprivileged one allows (op 1 here).
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    _keyctl("SCMP_ACT_ERRNO", "SCMP_CMP_EQ", kept=UNPRIVILEGED_ONLY),
                    _keyctl("SCMP_ACT_ERRNO", kept=PRIVILEGED_ONLY),
                ],
            },
            None,
        ),
        # PID 1 could not work under it.
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}, None),
        # Both kinds filtered alike: nothing on top.
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_keyctl("SCMP_ACT_ERRNO")]}, 0),
    ],
    ids=["covered", "uncovered", "privileged-stricter", "init-refused", "alike"],
)
def test_what_an_unprivileged_job_adds_on_top(profile: dict[str, Any], rest: int | None) -> None:
    """How many rules the rest has, or None where a job loads its own kind's filter."""
    found = seccomp._stacked_rest(profile, seccomp.kernel_version())
    assert (None if found is None else len(found["syscalls"])) == rest
    filters, _ = seccomp.compile_profile(profile)
    assert (filters.unprivileged_rest is None) == (rest is None)
    assert (filters.unprivileged_rest == b"") == (rest == 0)


def test_the_default_profile_is_one_filter_for_every_job() -> None:
    """Podman's profile opens chroot and audit sockets to the capabilities that the kernel
    asks for anyway; Corral's rules open them to all, so no job loads a filter of its own."""
    filters, _ = seccomp.compile_default()
    assert filters.unprivileged == filters.privileged
    assert filters.spec_fields() == (filters.privileged.hex(), "-", "-")
