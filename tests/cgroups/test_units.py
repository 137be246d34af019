"""Unit tests of the cgroups plugin: values, file formats, layouts, both backends, the OOM
and memory pressure watchers.

Most run anywhere: the backends are pointed at a directory of plain files laid
out like a cgroup. The few marked ``needs_root`` use the real kernel of this
machine (a v1 memory hierarchy and the v2 mount, which on a hybrid host holds
no controller but has the core files: freeze, kill, procs, cpu.stat).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import plugins.cgroups as plugin
from plugins.cgroups import backend, devices, oom, pressure, v1, v2, values
from plugins.cgroups.backend import CgroupError, parse_keyed, read_int
from plugins.cgroups.counters import FdBudget
from plugins.cgroups.group import ContainerCgroups
from plugins.cgroups.layout import Placement, detect, parse_mountinfo
from plugins.cgroups.values import Host, cpuset_cores, format_cpuset
from supervisor import config
from supervisor.errors import InvalidRequest
from supervisor.settings import parse_table

HOST = Host(frozenset({0, 1, 2, 3}))

# -- values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, cores",
    [
        ("0", {0}),
        ("1,3", {1, 3}),
        ("0-3", {0, 1, 2, 3}),
        ("0-2,5,7-8\n", {0, 1, 2, 5, 7, 8}),
        ("", set()),
    ],
)
def test_cpuset_syntax_round_trips(text: str, cores: set[int]) -> None:
    assert cpuset_cores(text) == cores
    assert cpuset_cores(format_cpuset(cores)) == cores


def test_cpuset_canonical_form_is_the_kernels() -> None:
    assert format_cpuset({1, 0}) == "0-1"
    assert format_cpuset({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpuset([3]) == "3"


@pytest.mark.parametrize("text", ["a", "1-", "-1", "1,,2", "1 2", "3-1", "1;2"])
def test_cpuset_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        cpuset_cores(text)


def test_cpuset_huge_range_is_refused_before_it_is_built() -> None:
    with pytest.raises(values.MissingCore, match="core 99999999999"):
        cpuset_cores("0-99999999999", limit=4)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("mem", 64 << 20, 64 << 20),
        ("cpu", 512, 512),
        ("cpu", 1, 2),  # clamped to the kernel's range, as Warden does
        ("cpu", 0, 2),
        ("cpu", 300000, 262144),
        ("cpus", 0.5, 0.5),
        ("cpus", 2, 2.0),
        ("cpuset", "3,1-2", "1-3"),
        ("pids", 20, 20),
    ],
)
def test_good_values_are_normalized(name: str, value: object, expected: object) -> None:
    assert values.PARSERS[name](value, HOST) == expected


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("mem", 0, "mem 0 is not a positive number of bytes"),
        ("mem", -1, "mem -1 is not a positive"),
        ("mem", "64M", "mem '64M' is not"),
        ("mem", 1.5e6, "mem 1500000.0 is not"),
        ("mem", True, "mem True is not"),
        ("mem", 4096, "less than the 1048576 bytes"),
        ("cpu", -1, "cpu -1 is not a number of shares (a whole number >= 0)"),
        ("cpu", 1.5, "cpu 1.5 is not"),
        ("cpu", "1024", "cpu '1024'"),
        ("cpus", 0, "cpus 0 is not a number of cores >= 0.01"),
        ("cpus", -0.5, "cpus -0.5"),
        ("cpus", float("nan"), "cpus nan"),
        ("cpus", 5, "cpus 5 is more than the 4 cores of this host"),
        ("cpus", "half", "cpus 'half'"),
        ("cpuset", "99", "cpuset '99': core 99 does not exist on this host (cores: 0-3)"),
        ("cpuset", "2-9", "core 9 does not exist"),
        ("cpuset", "", "cpuset '' names no core"),
        ("cpuset", "x", "cpuset 'x': not a list of cores"),
        ("cpuset", 1, "cpuset 1 is not a string"),
        ("pids", 0, "pids 0 is not a number of tasks from 1"),
        ("pids", 1 << 40, "pids 1099511627776"),
        ("pids", None, "pids None"),
    ],
)
def test_bad_values_name_the_resource_and_value(name: str, value: object, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        values.PARSERS[name](value, HOST)
    assert words in caught.value.message


def test_limits_option_checks_every_key() -> None:
    everything = set(values.PARSERS)
    assert values.parse_limits({"mem": 1 << 30, "cpuset": "0,1"}, HOST, everything) == {
        "mem": 1 << 30,
        "cpuset": "0-1",
    }
    with pytest.raises(InvalidRequest, match="limits: unknown resource 'disk'"):
        values.parse_limits({"disk": 1}, HOST, everything)
    with pytest.raises(InvalidRequest, match="limits: cpuset '99': core 99"):
        values.parse_limits({"cpuset": "99"}, HOST, everything)
    with pytest.raises(InvalidRequest, match="limits: pids cannot be limited on this host"):
        values.parse_limits({"pids": 5}, HOST, everything - {"pids"})
    with pytest.raises(InvalidRequest, match="limits: .* is not an object"):
        values.parse_limits([1], HOST, everything)


def test_quota_conversions() -> None:
    assert values.quota_for(0.5) == 50_000
    assert values.quota_for(0.001) == values.MIN_QUOTA_US
    assert values.cpus_for(50_000, 100_000) == 0.5
    assert values.cpus_for(33_333, 100_000) == 0.3333


# -- shared file formats -------------------------------------------------------------


def test_keyed_files_and_unlimited_numbers(tmp_path: Path) -> None:
    assert parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == {
        "oom_kill_disable": 0,
        "under_oom": 0,
        "oom_kill": 3,
    }
    assert (
        parse_keyed("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")["oom_kill"] == 1
    )
    f = tmp_path / "n"
    for text, expected in [
        ("max\n", None),
        ("-1\n", None),
        ("9223372036854771712\n", None),
        ("42\n", 42),
    ]:
        f.write_text(text)
        assert read_int(f) == expected


def test_write_refusals_are_invalid_requests_only_for_values(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="cannot write '1' to .*missing/x"):
        backend.write(tmp_path / "missing" / "x", "1", "pids 1")


# -- cgroup v2 (formats and a fake tree) -----------------------------------------------


def test_v2_weight_conversion_keeps_the_three_points() -> None:
    assert v2.shares_to_weight(2) == 1
    assert v2.shares_to_weight(1024) == 100
    assert v2.shares_to_weight(262144) == 10000
    assert v2.shares_to_weight(1) == 1 and v2.shares_to_weight(10**9) == 10000
    assert v2.weight_to_shares(100) == 1024


def test_v2_weight_conversion_is_monotonic_and_inverts() -> None:
    weights = [v2.shares_to_weight(s) for s in range(2, 262145, 7)]
    assert weights == sorted(weights)
    assert all(v2.shares_to_weight(v2.weight_to_shares(w)) == w for w in range(1, 10001))


def test_v2_cpu_max_format() -> None:
    assert v2.parse_cpu_max("max 100000\n") == (None, 100000)
    assert v2.parse_cpu_max("50000 100000") == (50000, 100000)
    assert v2.format_cpu_max(None, 100000) == "max 100000"
    assert v2.format_cpu_max(25000, 50000) == "25000 50000"


@pytest.fixture
def v2_dir(tmp_path: Path) -> Path:
    """A container directory of plain files laid out like cgroup v2 (with a parent)."""
    parent = tmp_path / "corral"
    path = parent / "h"
    path.mkdir(parents=True)
    files = {
        "memory.max": "max",
        "memory.swap.max": "max",
        "memory.current": "8192",
        "memory.peak": "16384",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0",
        "cpu.weight": "100",
        "cpu.max": "max 100000",
        "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500",
        "cpuset.cpus": "",
        "cpuset.cpus.effective": "0-3",
        "pids.max": "max",
        "pids.current": "3",
        "cgroup.freeze": "0",
        "cgroup.events": "populated 1\nfrozen 0",
        "cgroup.procs": "10\n11\n",
        "cgroup.subtree_control": "",
    }
    for name, text in files.items():
        (path / name).write_text(text + "\n")
    (parent / "cpuset.cpus.effective").write_text("0-3\n")
    (parent / "cgroup.subtree_control").write_text("cpu\n")
    return path


def test_v2_memory_limit_counts_swap(v2_dir: Path) -> None:
    b = v2.V2()
    b.set_memory(v2_dir, 64 << 20)
    assert (v2_dir / "memory.swap.max").read_text() == "0"
    assert b.memory_limit(v2_dir) == 64 << 20
    stat = b.memory_stat(v2_dir)
    assert (stat.usage, stat.max_usage, stat.limit, stat.oom_count) == (8192, 16384, 64 << 20, 1)


def test_v2_cpu_files(v2_dir: Path) -> None:
    b = v2.V2()
    b.set_cpu_shares(v2_dir, 512)
    assert (v2_dir / "cpu.weight").read_text() == str(v2.shares_to_weight(512))
    assert b.cpu_shares(v2_dir, 512) == 512  # what the client wrote, while it is in force
    (v2_dir / "cpu.weight").write_text("100\n")  # someone else changed it
    assert b.cpu_shares(v2_dir, 512) == 1024
    b.set_cpu_quota(v2_dir, 0.5)
    assert (v2_dir / "cpu.max").read_text() == "50000 100000"
    assert b.cpu_quota(v2_dir) == 0.5
    (v2_dir / "cpu.max").write_text("max 100000\n")
    assert b.cpu_quota(v2_dir) is None
    assert b.cpu_usage_ns(v2_dir) == 1_500_000


def test_v2_cpuset_empty_means_the_parents(v2_dir: Path) -> None:
    b = v2.V2()
    assert b.cpuset(v2_dir) == "0-3"
    b.set_cpuset(v2_dir, "1")
    assert b.cpuset(v2_dir) == "1"
    assert b.available_cores(v2_dir.parent) == "0-3"
    assert b.available_cores(v2_dir.parent / "not-made-yet") == "0-3"


def test_v2_pids_freeze_and_subtree_control(v2_dir: Path) -> None:
    b = v2.V2()
    b.set_pids_max(v2_dir, 20)
    assert b.pids_max(v2_dir) == 20 and b.pids_current(v2_dir) == 3
    b.start_freeze(v2_dir)
    assert (v2_dir / "cgroup.freeze").read_text() == "1"
    assert not b.frozen(v2_dir)
    (v2_dir / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert b.frozen(v2_dir)
    parent = v2_dir.parent
    b.setup_parent("memory", parent)
    assert (parent / "cgroup.subtree_control").read_text() == "+memory"
    (parent / "cgroup.subtree_control").write_text("cpu memory\n")
    b.setup_parent("memory", parent)  # already on: not written again
    assert (parent / "cgroup.subtree_control").read_text() == "cpu memory\n"
    b.setup_parent("freezer", parent)  # part of the v2 core: nothing to enable
    assert backend.procs(v2_dir) == [10, 11]
    assert not b.kill_all(v2_dir / "gone")


# -- cgroup v1 (formats and a fake tree) -------------------------------------------------


def test_v1_memory_write_order_keeps_memsw_above_mem() -> None:
    mem, memsw = Path("mem"), Path("memsw")
    assert v1.memory_write_order(2 << 30, 1 << 30, mem, memsw) == (memsw, mem)  # raising past memsw
    assert v1.memory_write_order(1 << 20, 1 << 30, mem, memsw) == (mem, memsw)  # lowering
    assert v1.memory_write_order(1 << 20, None, mem, memsw) == (mem, memsw)  # memsw unlimited


@pytest.fixture
def v1_memory(tmp_path: Path) -> Path:
    path = tmp_path / "h"
    path.mkdir()
    for name, text in {
        "memory.limit_in_bytes": "9223372036854771712",
        "memory.memsw.limit_in_bytes": "9223372036854771712",
        "memory.usage_in_bytes": "4096",
        "memory.max_usage_in_bytes": "8192",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2",
    }.items():
        (path / name).write_text(text + "\n")
    return path


def test_v1_memory_limit_sets_both_files_in_order(
    v1_memory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    real_write = v1.write

    def recording(path: Path, value: str, what: str | None = None) -> None:
        writes.append(f"{path.name}={value}")
        real_write(path, value, what)

    monkeypatch.setattr(v1, "write", recording)
    b = v1.V1()
    b.set_memory(v1_memory, 64 << 20)  # lowering from unlimited: memory first
    b.set_memory(v1_memory, 128 << 20)  # raising past memsw: memsw first
    assert writes == [
        f"memory.limit_in_bytes={64 << 20}",
        f"memory.memsw.limit_in_bytes={64 << 20}",
        f"memory.memsw.limit_in_bytes={128 << 20}",
        f"memory.limit_in_bytes={128 << 20}",
    ]
    stat = b.memory_stat(v1_memory)
    assert (stat.usage, stat.max_usage, stat.limit, stat.oom_count) == (4096, 8192, 128 << 20, 2)


def test_v1_memory_limit_is_put_back_when_the_second_write_fails(
    v1_memory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = v1.write

    def refusing_memsw(path: Path, value: str, what: str | None = None) -> None:
        if path.name == "memory.memsw.limit_in_bytes":
            raise InvalidRequest(f"{what} refused by the kernel: Device or resource busy")
        real_write(path, value, what)

    monkeypatch.setattr(v1, "write", refusing_memsw)
    with pytest.raises(InvalidRequest, match="mem 67108864 refused"):
        v1.V1().set_memory(v1_memory, 64 << 20)
    assert v1.V1().memory_limit(v1_memory) is None  # nothing changed


def test_v1_cpu_and_cpuset_files(tmp_path: Path) -> None:
    parent = tmp_path / "corral"
    path = parent / "h"
    path.mkdir(parents=True)
    for d in (tmp_path, parent):
        (d / "cpuset.cpus").write_text("0-3\n")
        (d / "cpuset.mems").write_text("0\n")
    for name, text in {
        "cpuset.cpus": "",
        "cpuset.mems": "",
        "cpu.shares": "1024",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "-1",
        "cpuacct.usage": "123456789",
    }.items():
        (path / name).write_text(text + "\n")
    b = v1.V1()
    b.setup_child("cpuset", path)  # a task cannot join an empty cpuset: inherit the parent's
    assert (path / "cpuset.cpus").read_text() == "0-3"
    assert (path / "cpuset.mems").read_text() == "0"
    assert b.cpu_quota(path) is None
    b.set_cpu_quota(path, 0.25)
    assert (path / "cpu.cfs_quota_us").read_text() == "25000"
    assert b.cpu_quota(path) == 0.25
    b.set_cpu_shares(path, 256)
    assert b.cpu_shares(path, None) == 256
    assert b.cpu_usage_ns(path) == 123456789
    assert b.available_cores(parent / "not-made-yet") == "0-3"


def test_v1_device_rules_deny_first_then_allow_the_container_nodes() -> None:
    rules = v1.devices_rules()
    assert rules[0] == ("devices.deny", "a")
    allowed = {rule for name, rule in rules[1:] if name == "devices.allow"}
    assert allowed == {
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
        "c 10:229 rwm",
    }


def test_v1_device_rules_from_an_older_list_go_rule_by_rule() -> None:
    older = {"c 1:3 rwm", "c 1:5 rwm", "c 4:0 rwm"}  # a rule since dropped, fuse missing
    rules = v1.devices_rules(older)
    assert ("devices.deny", "a") not in rules
    assert ("devices.deny", "c 4:0 rwm") in rules
    assert {rule for name, rule in rules if name == "devices.allow"} == (
        set(v1.ALLOWED_DEVICES) - older
    )


# -- layout -------------------------------------------------------------------------------

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = """\
24 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
COMOUNTED = """\
25 24 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
26 24 0:24 / /sys/fs/cgroup/my\\040memory rw,nosuid shared:10 - cgroup cgroup rw,memory
"""


def test_hybrid_layout_puts_everything_on_v1() -> None:
    layout = detect(HYBRID, lambda root: {"hugetlb"})
    assert {c: p.version for c, p in layout.placements.items()} == {
        **dict.fromkeys(("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices"), 1),
        # the hierarchies without Corral's controllers: bare, the containers are put there too
        "hierarchy:name=systemd": 1,
        "hierarchy:cgroup2": 2,
    }
    assert layout.placements["memory"].root == Path("/sys/fs/cgroup/memory")
    assert layout.placements["hierarchy:cgroup2"].root == Path("/sys/fs/cgroup/unified")
    assert len(layout.hierarchies()) == 9


def test_pure_v2_layout_uses_the_core_for_cpuacct_and_freezer_and_ebpf_for_devices() -> None:
    offered = {"cpuset", "cpu", "io", "memory", "pids"}
    layout = detect(PURE_V2, lambda root: offered, device_filter=lambda: True)
    root = Placement(2, Path("/sys/fs/cgroup"))
    assert layout.placements == {
        c: root for c in ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices")
    }
    assert list(layout.hierarchies()) == [Path("/sys/fs/cgroup")]
    # a kernel that does not load the device filter: no devices
    assert not detect(PURE_V2, lambda root: offered, device_filter=lambda: False).has("devices")
    # a v2 tree that does not offer pids: pids cannot be limited
    assert not detect(PURE_V2, lambda root: {"memory", "cpu"}).has("pids")


def test_comounted_v1_controllers_share_one_directory() -> None:
    v1_mounts, v2_root = parse_mountinfo(COMOUNTED)
    assert v1_mounts == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/my memory"),
    }
    assert v2_root is None
    group = ContainerCgroups.plan(detect(COMOUNTED, lambda root: set()), "corral", "h")
    assert sorted(group.procs_files()) == [  # v1: the launcher moves its one thread
        Path("/sys/fs/cgroup/cpu,cpuacct/corral/h/tasks"),
        Path("/sys/fs/cgroup/my memory/corral/h/tasks"),
    ]


def test_container_cgroups_state_round_trips() -> None:
    group = ContainerCgroups.plan(detect(HYBRID, lambda root: set()), "a/b", "h")
    assert group.path("memory") == Path("/sys/fs/cgroup/memory/a/b/h")
    again = ContainerCgroups.from_state("h", group.to_state())
    assert again.to_state() == group.to_state()
    assert again.backend("pids").version == 1


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, words",
    [
        ("parent = '/abs'", "parent: '/abs' is not a relative cgroup path"),
        ("parent = '../up'", "parent: '../up'"),
        ("parent = 'a//b'", "parent: 'a//b'"),
        ("parent = 3", "parent: 3"),
        ("parnet = 'x'", r"\[cgroups\] parnet: unknown setting"),
        ("default_pids_limit = -1", "default_pids_limit: must be a number of tasks from 0"),
        ("default_pids_limit = true", "default_pids_limit: must be"),
        ("default_pids_limit = '4k'", "default_pids_limit: must be"),
        ("default_pids_limit = 5000000", "default_pids_limit: must be"),
    ],
)
def test_config_errors_name_the_setting(table: str, words: str) -> None:
    with pytest.raises(config.ConfigError, match=words):
        parse_table(
            plugin.Settings, config.parse(f"[cgroups]\n{table}\n").tables["cgroups"], "cgroups"
        )


def test_default_pids_limit_is_4096_and_false_means_none() -> None:
    def parsed(table: str) -> int:
        raw = config.parse(f"[cgroups]\n{table}\n").tables["cgroups"]
        return int(parse_table(plugin.Settings, raw, "cgroups").default_pids_limit)

    assert plugin.Settings().default_pids_limit == 4096
    assert parsed("default_pids_limit = false") == 0
    assert parsed("default_pids_limit = 0") == 0
    assert parsed("default_pids_limit = 64") == 64


# -- OOM watcher ----------------------------------------------------------------------------


def test_inotify_event_masks_are_parsed() -> None:
    def field(n: int) -> bytes:
        return n.to_bytes(4, sys.byteorder)

    event = field(1) + field(oom.IN_MODIFY | oom.IN_IGNORED) + field(0) + field(4) + b"abc\0"
    assert oom.parse_event_masks(event * 2) == [oom.IN_MODIFY, oom.IN_IGNORED] * 2


@pytest.mark.parametrize("ahead", [False, True], ids=["registering", "registered-ahead"])
def test_v2_watcher_reports_each_rise_of_oom_kill(v2_dir: Path, ahead: bool) -> None:
    """The whole v2 watcher against a plain file: inotify works the same on it.

    Registered ahead, as the plugin does before it writes limits, the watch also
    reports a kill that came before its task ran, and closes the registration.
    """
    events = v2_dir / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")
    seen: list[int] = []
    registration: oom.Registration | None = None

    async def main() -> None:
        nonlocal registration

        async def on_oom(count: int) -> None:
            seen.append(count)

        async with trio.open_nursery() as nursery:
            if ahead:
                registration = oom.register(v2.V2(), v2_dir)
                events.write_text("oom 1\noom_kill 1\n")
                nursery.start_soon(oom.watch, v2.V2(), v2_dir, 0, on_oom, registration)
            else:
                await nursery.start(oom.watch, v2.V2(), v2_dir, 0, on_oom)
                events.write_text("oom 1\noom_kill 1\n")
            with trio.fail_after(5):
                while seen != [1]:
                    await trio.sleep(0.01)
            events.write_text("oom 2\noom_kill 1\n")  # an OOM without a kill: nothing
            events.write_text("oom 3\noom_kill 3\n")
            with trio.fail_after(5):
                while seen != [1, 3]:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    if registration is not None:
        # Closed with the watch, on the closer thread (close_soon): give it a moment.
        deadline = time.monotonic() + 5
        while _is_open(registration.fd) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(OSError):
            os.fstat(registration.fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_watcher_reports_kills_that_happened_while_no_daemon_ran(v2_dir: Path) -> None:
    (v2_dir / "memory.events").write_text("oom 2\noom_kill 2\n")
    seen: list[int] = []

    async def main() -> None:
        async def on_oom(count: int) -> None:
            seen.append(count)

        async with trio.open_nursery() as nursery:
            await nursery.start(oom.watch, v2.V2(), v2_dir, 1, on_oom)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen == [2]


def test_watcher_of_a_vanished_cgroup_just_ends(tmp_path: Path) -> None:
    async def main() -> None:
        async def on_oom(count: int) -> None:
            raise AssertionError("no OOM here")

        async with trio.open_nursery() as nursery:
            for b in (v1.V1(), v2.V2()):
                await nursery.start(oom.watch, b, tmp_path / "gone", 0, on_oom)

    trio.run(main)


# -- memory pressure ----------------------------------------------------------------------------

V1_HOST = pressure.Support(1)
V2_HOST = pressure.Support(2)
#: A v2 host whose daemon lacks CAP_SYS_RESOURCE (as in this machine's sandbox).
V2_UNPRIVILEGED = pressure.Support(2, privileged=False)


@pytest.mark.parametrize(
    "value, support, expected",
    [
        ("low", V1_HOST, ["low"]),
        (["critical", "low"], V1_HOST, ["critical", "low"]),
        ("medium", V2_HOST, ["medium"]),
        ({"psi": " full  150000 1000000 "}, V2_HOST, ["full 150000 1000000"]),
        ({"psi": "some 1 500000"}, V2_HOST, ["some 1 500000"]),
        ({"psi": "some 10000000 10000000"}, V2_HOST, ["some 10000000 10000000"]),
        (
            ["low", {"psi": "some 300000 4000000"}],
            V2_UNPRIVILEGED,
            ["low", "some 300000 4000000"],
        ),
    ],
)
def test_memory_pressure_option_is_normalized(
    value: object, support: pressure.Support, expected: list[str]
) -> None:
    assert pressure.parse_option(value, support) == expected


@pytest.mark.parametrize(
    "value, support, words",
    [
        ("high", V1_HOST, "memory_pressure: unknown level 'high' (levels: low, medium, critical;"),
        ("LOW", V2_HOST, "unknown level 'LOW'"),
        ([], V1_HOST, "memory_pressure: [] names no level"),
        (["low", "low"], V1_HOST, "memory_pressure: 'low' is given twice"),
        (
            [{"psi": "some 1 1000000"}, {"psi": "some  1 1000000"}],
            V2_HOST,
            "'some 1 1000000' is given twice",
        ),
        (["low", "medium"] * 5, V1_HOST, "memory_pressure: 10 levels, more than the 8 allowed"),
        (None, V1_HOST, "memory_pressure: None is not a level"),
        (True, V1_HOST, "memory_pressure: True is not a level"),
        ([["low"]], V1_HOST, "memory_pressure: ['low'] is not a level"),
        ({"level": "low"}, V2_HOST, "{'level': 'low'} is not a PSI threshold"),
        ({"psi": "some 1 1000000", "x": 1}, V2_HOST, "and no other key"),
        (
            {"psi": "some 150000 1000000"},
            V1_HOST,
            "memory_pressure: a PSI threshold needs cgroup v2, and memory is on cgroup v1 here",
        ),
        ("low", pressure.Support(None), "memory_pressure: this host has no memory cgroup"),
        ("low", pressure.Support(2, psi=False), "no pressure stall information"),
        ({"psi": "some 1 1000000"}, pressure.Support(2, psi=False), "boot it with psi=1"),
        (
            {"psi": "sum 1 1000000"},
            V2_HOST,
            "'sum 1 1000000' is not 'some|full STALL_US WINDOW_US'",
        ),
        ({"psi": "some 1.5 1000000"}, V2_HOST, "'some 1.5 1000000' is not"),
        ({"psi": "some -1 1000000"}, V2_HOST, "'some -1 1000000' is not"),
        ({"psi": "some 1000"}, V2_HOST, "'some 1000' is not"),
        ({"psi": 150000}, V2_HOST, "PSI threshold 150000 is not"),
        (
            {"psi": "some 1000 499999"},
            V2_HOST,
            "'some 1000 499999': the window, 499999 us, is outside the kernel's 500000..10000000 us",
        ),
        ({"psi": "some 1000 10000001"}, V2_HOST, "the window, 10000001 us, is outside"),
        (
            {"psi": "some 0 1000000"},
            V2_HOST,
            "the stall, 0 us, must be from 1 us to the window (1000000 us)",
        ),
        ({"psi": "full 1000001 1000000"}, V2_HOST, "the stall, 1000001 us, must be"),
        (
            {"psi": "some 100000 1000000"},
            V2_UNPRIVILEGED,
            "the window must be a multiple of 2000000 us here (the daemon lacks CAP_SYS_RESOURCE)",
        ),
    ],
)
def test_bad_memory_pressure_options_name_the_value_and_the_reason(
    value: object, support: pressure.Support, words: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pressure.parse_option(value, support)
    assert words in caught.value.message


def test_named_levels_are_psi_triggers_the_kernel_takes_from_mildest_to_worst() -> None:
    assert pressure.psi_trigger("low", True) == "some 1000 1000000"
    assert pressure.psi_trigger("medium", True) == "some 50000 1000000"
    assert pressure.psi_trigger("critical", True) == "full 100000 1000000"
    # Without CAP_SYS_RESOURCE: 2 s windows, the same share of the time.
    assert pressure.psi_trigger("low", False) == "some 2000 2000000"
    assert pressure.psi_trigger("critical", False) == "full 200000 2000000"
    for privileged in (True, False):
        support = pressure.Support(2, privileged=privileged)
        triggers = [pressure.psi_trigger(level, privileged) for level in pressure.LEVELS]
        assert [pressure.parse_psi(t, support) for t in triggers] == triggers
        shares = [int(t.split()[1]) / int(t.split()[2]) for t in triggers]
        assert shares == sorted(shares) == [0.001, 0.05, 0.1]
    assert pressure.psi_trigger("some 5 1000000", False) == "some 5 1000000"  # as given
    assert pressure.v1_level("medium") == "medium,hierarchy"


def test_capabilities_are_read_from_the_effective_set() -> None:
    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n"
    assert not pressure.has_capability(pressure.CAP_SYS_RESOURCE, status)
    assert pressure.has_capability(21, status)  # CAP_SYS_ADMIN
    assert pressure.has_capability(pressure.CAP_SYS_RESOURCE, "CapEff:\t0000000001000000\n")
    assert not pressure.has_capability(pressure.CAP_SYS_RESOURCE, "Name:\tpython\n")


def test_rate_limit_lets_one_event_per_level_per_interval() -> None:
    limit = pressure.RateLimit(1.0)
    times = [10.0, 10.2, 10.99, 11.0, 11.5, 12.1]
    assert [limit.allow("low", t) for t in times] == [True, False, False, True, False, True]
    assert limit.allow("critical", 12.2)  # each level on its own
    assert not limit.allow("low", 12.2)


def test_v1_watcher_reports_each_signalled_level_once_per_interval(tmp_path: Path) -> None:
    """The whole v1 watcher against plain files: the test signals the eventfds as the kernel would."""
    path = tmp_path / "h"
    path.mkdir()
    (path / "memory.pressure_level").write_text("")
    (path / "cgroup.event_control").write_text("")
    seen: list[str] = []

    async def on_pressure(level: str) -> None:
        seen.append(level)

    async def main() -> pressure.Registration:
        registration = pressure.register(v1.V1(), path, ["low", "critical"], True)
        fds = {level: fd for fd, level in registration.levels.items()}
        # One registration per level, as cgroup.event_control takes it (the last one stays).
        assert (path / "cgroup.event_control").read_text() == (
            f"{fds['critical']} {registration.control} critical,hierarchy"
        )
        assert registration.kernel == {"low": "low,hierarchy", "critical": "critical,hierarchy"}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pressure.watch, path, on_pressure, registration)
            os.eventfd_write(fds["critical"], 1)
            os.eventfd_write(fds["low"], 7)  # a burst: one event
            with trio.fail_after(5):
                while len(seen) < 2:
                    await trio.sleep(0.01)
            assert seen == ["low", "critical"]  # in the order watched
            os.eventfd_write(fds["low"], 1)
            await trio.sleep(0.1)
            assert seen == ["low", "critical"]  # within a second of the last: dropped
            path.rename(tmp_path / "gone")  # the cgroup removed: the kernel signals every eventfd
            os.eventfd_write(fds["low"], 1)
            os.eventfd_write(fds["critical"], 1)
        return registration  # the watch ended by itself

    registration = trio.run(main)
    assert seen == ["low", "critical"]
    for fd in [*registration.levels, registration.control]:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed with the watch


def test_pressure_registration_of_a_vanished_cgroup_raises_and_leaves_no_fd(
    tmp_path: Path,
) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    for b in (v1.V1(), v2.V2()):
        with pytest.raises(FileNotFoundError):
            pressure.register(b, tmp_path / "gone", ["low"], True)
    assert sorted(os.listdir("/proc/self/fd")) == before


# -- the real kernel of this machine ----------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates real cgroups")
#: The cgroup2 mount of this host: /sys/fs/cgroup on a v2-only host, /sys/fs/cgroup/unified
#: on a hybrid one (its core files, freeze, kill and cpu.stat, work with no controller).
V2_MOUNT = parse_mountinfo(Path("/proc/self/mountinfo").read_text())[1] or Path("/nowhere")
V1_MEMORY = Path("/sys/fs/cgroup/memory")


@pytest.fixture
def scratch_cgroup(request: pytest.FixtureRequest) -> Iterator[Path]:
    root: Path = request.param
    if not (root / "cgroup.procs").exists():
        pytest.skip(f"no cgroup hierarchy at {root}")
    path = root / f"corral-unit-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    for pid in backend.procs(path):
        os.kill(pid, 9)
    for _ in range(100):
        try:
            path.rmdir()
            break
        except OSError:
            trio.run(trio.sleep, 0.02)


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V2_MOUNT], indirect=True)
def test_real_v2_freeze_kill_and_cpu_usage(scratch_cgroup: Path) -> None:
    b = v2.V2()
    group = ContainerCgroups(
        "unit", {"freezer": (2, scratch_cgroup), "cpuacct": (2, scratch_cgroup)}
    )
    sleepers = [
        subprocess.Popen(["sh", "-c", f"echo $$ > {scratch_cgroup}/cgroup.procs; exec sleep 60"])
        for _ in range(3)
    ]
    try:
        wanted = {p.pid for p in sleepers}
        deadline = time.monotonic() + 10  # each shell moves itself; slow under emulation
        while set(backend.procs(scratch_cgroup)) != wanted and time.monotonic() < deadline:
            trio.run(trio.sleep, 0.02)
        assert set(backend.procs(scratch_cgroup)) == wanted
        keep = sleepers[0].pid
        assert trio.run(group.kill_all_but, keep) == 2
        assert [p.wait(timeout=5) for p in sleepers[1:]] == [-9, -9]
        assert not b.frozen(scratch_cgroup)  # thawed again
        assert backend.procs(scratch_cgroup) == [keep]
        assert b.cpu_usage_ns(scratch_cgroup) > 0
        assert b.kill_all(scratch_cgroup)
        assert sleepers[0].wait(timeout=5) == -9
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V2_MOUNT], indirect=True)
def test_real_v2_device_filter_lets_only_the_allowed_devices_be_opened(
    scratch_cgroup: Path,
) -> None:
    if not devices.supported():
        pytest.skip("this kernel does not load cgroup device programs")
    v2.V2().setup_child("devices", scratch_cgroup)
    # A shell in the cgroup opens an allowed device, then one of the host's that is not.
    script = (
        f"echo $$ > {scratch_cgroup}/cgroup.procs; head -c 4 /dev/urandom | wc -c; "
        "exec 3< /dev/loop-control && echo opened"
    )
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert done.stdout.split() == ["4"]
    assert "Operation not permitted" in done.stderr
    os.close(os.open("/dev/loop-control", os.O_RDONLY))  # the host may: the filter said no


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V1_MEMORY], indirect=True)
def test_real_v1_oom_is_seen_through_the_eventfd(scratch_cgroup: Path) -> None:
    b = v1.V1()
    b.setup_child("memory", scratch_cgroup)
    seen: list[int] = []

    async def main() -> None:
        async def on_oom(count: int) -> None:
            seen.append(count)

        async with trio.open_nursery() as nursery:
            await nursery.start(oom.watch, b, scratch_cgroup, 0, on_oom)
            b.set_memory(scratch_cgroup, 32 << 20)
            hog = await trio.run_process(
                [
                    "sh",
                    "-c",
                    f"echo $$ > {scratch_cgroup}/cgroup.procs; "
                    "exec dd if=/dev/zero of=/dev/null bs=100M count=1",
                ],
                check=False,
                capture_stderr=True,
            )
            assert hog.returncode == -9
            with trio.fail_after(5):
                while not seen:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen == [1]
    assert b.memory_stat(scratch_cgroup).oom_count == 1


#: A job that thrashes, then is OOM-killed: its memory grows while it reads its data file
#: again at each step, so the file's pages are reclaimed and read back (memory stall).
THRASHING_JOB = (
    "head -c 16777216 /dev/urandom > data; c=$(head -c 1048576 /dev/zero | tr '\\0' x); "
    "s=; while :; do s=$s$c; cat data > /dev/null; sleep 0.1; done"
)


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V2_MOUNT], indirect=True)
def test_real_v2_psi_trigger_is_seen_through_the_epoll(
    scratch_cgroup: Path, tmp_path: Path
) -> None:
    """A real PSI trigger, waited for as the plugin does, on this hybrid host.

    The stall comes from a v1 memory cgroup's limit: PSI counts it in the task's v2
    cgroup whatever hierarchy limits it. (A v2-only host runs the daemon's tests.)
    """
    if not (V1_MEMORY / "cgroup.procs").exists():
        pytest.skip("no v1 memory hierarchy to make memory stall with")
    privileged = pressure.has_capability(pressure.CAP_SYS_RESOURCE)
    limited = V1_MEMORY / scratch_cgroup.name
    limited.mkdir()
    seen: list[str] = []

    async def main() -> None:
        v1.V1().setup_child("memory", limited)
        v1.V1().set_memory(limited, 64 << 20)
        registration = pressure.register(v2.V2(), scratch_cgroup, ["low"], privileged)
        assert registration.kernel == {"low": pressure.psi_trigger("low", privileged)}

        async def on_pressure(level: str) -> None:
            seen.append(level)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pressure.watch, scratch_cgroup, on_pressure, registration)
            with trio.fail_after(120):  # never hang on a job that is not killed
                job = await trio.run_process(
                    [
                        "sh",
                        "-c",
                        f"echo $$ > {limited}/cgroup.procs; echo $$ > {scratch_cgroup}/cgroup.procs; "
                        f"exec sh -c {shlex.quote(THRASHING_JOB)}",
                    ],
                    cwd=tmp_path,
                    check=False,
                )
            assert job.returncode == -9  # OOM-killed in the end
            with trio.fail_after(5):  # a 2 s window is checked every 2 s
                while not seen:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        for pid in backend.procs(limited):
            os.kill(pid, 9)
        for _ in range(100):
            try:
                limited.rmdir()
                break
            except OSError:
                trio.run(trio.sleep, 0.02)
    assert seen[0] == "low"


V1_DEVICES = Path("/sys/fs/cgroup/devices")
V1_CPUSET = Path("/sys/fs/cgroup/cpuset")


def _device_list(path: Path) -> set[str]:
    return set((path / "devices.list").read_text().splitlines())


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V1_DEVICES], indirect=True)
def test_real_v1_containers_inherit_the_device_list_of_the_parent(scratch_cgroup: Path) -> None:
    b = v1.V1()
    b.setup_containers_parent("devices", scratch_cgroup)
    assert _device_list(scratch_cgroup) == set(v1.ALLOWED_DEVICES)
    child = scratch_cgroup / "h"
    child.mkdir()
    try:
        assert _device_list(child) == set(v1.ALLOWED_DEVICES)  # by the kernel, at mkdir
        b.setup_child("devices", child)
        assert _device_list(child) == set(v1.ALLOWED_DEVICES)
    finally:
        child.rmdir()


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V1_DEVICES], indirect=True)
@pytest.mark.parametrize("older", [None, "c 1:3 rwm"], ids=["allow-all", "older-list"])
def test_real_v1_a_parent_with_containers_still_gets_denying_containers(
    scratch_cgroup: Path, older: str | None
) -> None:
    """Containers from before the daemon started live under the parent. Its list, the
    kernel's allow-all, stays (deny-all is refused while it has children); an older
    daemon's (without fuse) is brought up to date rule by rule. The containers keep theirs."""
    b = v1.V1()
    if older:
        (scratch_cgroup / "devices.deny").write_text("a")
        (scratch_cgroup / "devices.allow").write_text(older)
    old = scratch_cgroup / "old"
    old.mkdir()
    child = scratch_cgroup / "h"
    try:
        b.setup_containers_parent("devices", scratch_cgroup)
        assert _device_list(scratch_cgroup) == (set(v1.ALLOWED_DEVICES) if older else {v1.ALL})
        assert _device_list(old) == {older or v1.ALL}
        child.mkdir()
        b.setup_child("devices", child)
        assert _device_list(child) == set(v1.ALLOWED_DEVICES)
    finally:
        for path in (child, old):
            if path.exists():
                path.rmdir()


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V1_CPUSET], indirect=True)
def test_real_v1_containers_get_cpus_and_mems_from_the_parent(scratch_cgroup: Path) -> None:
    b = v1.V1()
    b.setup_parent("cpuset", scratch_cgroup)
    b.setup_containers_parent("cpuset", scratch_cgroup)
    child = scratch_cgroup / "h"
    child.mkdir()
    try:
        for name in ("cpuset.cpus", "cpuset.mems"):
            expected = (scratch_cgroup / name).read_text()
            assert expected.strip() and (child / name).read_text() == expected
    finally:
        child.rmdir()


# -- counters kept open for the metrics ----------------------------------------------------


def test_counters_read_what_stats_reads_and_keep_their_files_open(v1_memory: Path) -> None:
    group = ContainerCgroups("unit", {"memory": (1, v1_memory)})
    budget = FdBudget(limit=10)
    counters = group.counters(budget, {"mem": 1 << 20})
    assert counters == {
        "memory_stat": {"usage": 4096, "max_usage": 8192, "oom_count": 2, "limit": 1 << 20}
    }
    assert counters["memory_stat"]["usage"] == group.stats()["memory_stat"]["usage"]
    assert budget.take() and budget.take()  # 3 of 10 are open: 7 were left
    (v1_memory / "memory.usage_in_bytes").write_text("8192\n")  # read again, from offset 0
    assert group.counters(budget, {})["memory_stat"]["usage"] == 8192
    group.close_counters()
    assert [budget.take() for _ in range(9)] == [True] * 8 + [False]  # all 3 given back


def test_v1_oom_count_adds_the_jobs_kills_and_the_counters_the_last_counted(
    v1_memory: Path,
) -> None:
    """v1 counts a kill in the victim's own memory cgroup only (a job's): info and the OOM
    watcher add the jobs' to the container's 2; a scrape adds them as last counted."""
    job = v1_memory / "job-1"
    job.mkdir()
    (job / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    group = ContainerCgroups("unit", {"memory": (1, v1_memory)})
    assert group.counters(FdBudget(), {})["memory_stat"]["oom_count"] == 2  # not counted yet
    assert group.oom_kills() == 5
    assert group.stats()["memory_stat"]["oom_count"] == 5
    assert group.counters(FdBudget(), {})["memory_stat"]["oom_count"] == 5
    group.close_counters()
    v2_group = ContainerCgroups("unit", {"memory": (2, v1_memory)})
    (v1_memory / "memory.events").write_text("oom 1\noom_kill 2\n")
    assert v2_group.oom_kills() == 2  # v2 counts the jobs' in the container's already


def test_counters_past_the_budget_are_read_all_the_same(v1_memory: Path) -> None:
    group = ContainerCgroups("unit", {"memory": (1, v1_memory)})
    budget = FdBudget(limit=1)
    for _ in range(2):
        assert group.counters(budget, {})["memory_stat"]["oom_count"] == 2
    assert not budget.take()  # the one allowed is kept, the others were closed after reading
    group.close_counters()
    assert budget.take()


def test_counters_of_a_missing_file_are_none(v1_memory: Path) -> None:
    (v1_memory / "memory.max_usage_in_bytes").unlink()
    group = ContainerCgroups("unit", {"memory": (1, v1_memory)})
    assert group.counters(FdBudget(), {})["memory_stat"]["max_usage"] is None


@needs_root
@pytest.mark.parametrize("scratch_cgroup", [V1_MEMORY], indirect=True)
def test_real_counters_are_read_anew_through_an_open_file_and_none_once_removed(
    scratch_cgroup: Path,
) -> None:
    child = scratch_cgroup / "c"
    child.mkdir()
    group = ContainerCgroups("unit", {"memory": (1, child)})
    budget = FdBudget(limit=100)
    assert group.counters(budget, {})["memory_stat"]["usage"] == 0
    # A shell that joins and allocates a few MB: its pages are charged to the cgroup.
    script = f"echo $$ > {child}/cgroup.procs; x=$(head -c 4000000 /dev/zero | tr '\\0' a); exec sleep 60"
    sleeper = subprocess.Popen(["sh", "-c", script])
    try:
        for _ in range(250):
            if (group.counters(budget, {})["memory_stat"]["max_usage"] or 0) > 4_000_000:
                break
            trio.run(trio.sleep, 0.02)
        counters = group.counters(budget, {})["memory_stat"]
        assert counters["max_usage"] > 4_000_000 and counters["usage"] > 0
    finally:
        sleeper.kill()
        sleeper.wait()
    for _ in range(100):  # the sleeper leaves the cgroup a moment after its exit
        try:
            child.rmdir()  # the open files do not keep it
            break
        except OSError:
            trio.run(trio.sleep, 0.02)
    assert not child.exists()
    assert group.counters(budget, {})["memory_stat"]["usage"] is None
    group.close_counters()
