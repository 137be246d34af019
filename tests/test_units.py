"""Unit tests of pure logic: config, framing helpers, the launch spec, the state table."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.isolation import spec
from plugins.isolation.sandbox import decode, encode, spawn_message
from plugins.isolation.seccomp import Filters
from plugins.isolation.userns import HOST_IDS, IdBlocks, IdMap
from supervisor import config
from supervisor.container import ALLOWED, TRANSITIONS, State
from supervisor.errors import InvalidRequest, ProtocolViolation
from supervisor.protocol import decode_request, encode_error, encode_reply
from supervisor.sandbox import JobRequest, LaunchPlan, Mount


def test_config_defaults_and_overrides() -> None:
    c = config.parse(
        '[daemon]\nsocket = "/tmp/x.sock"\n[containers]\ngrace_time = false\n[net]\npool = "10.0.0.0/22"\n'
    )
    assert c.daemon.socket == Path("/tmp/x.sock")
    assert c.daemon.max_line_bytes == 1 << 20
    assert c.containers.grace_time is None
    assert c.tables == {"net": {"pool": "10.0.0.0/22"}}
    assert config.Config().containers.grace_time == 300


@pytest.mark.parametrize(
    "text, words",
    [
        ("[daemon]\nsockt = '/x'", "sockt: unknown setting"),
        ("[daemon]\nsocket = 'relative'", "absolute path"),
        (
            "[containers]\noutput_limit = -1",
            r"output_limit: must be a positive whole number, got -1",
        ),
        ("[containers]\ngrace_time = true", r"grace_time: must be seconds >= 0 or false"),
        ("[daemon]\nlog_level = 'loud'", r"log_level: must be one of debug, info, warning, error"),
        ("[plugins]\nblock = 'net'", r"\[plugins\] block: must be a list of strings"),
        ("[daemon", "not valid TOML"),
    ],
)
def test_config_errors_name_the_setting(text: str, words: str) -> None:
    with pytest.raises(config.ConfigError, match=words):
        config.parse(text)


def test_decode_request() -> None:
    assert decode_request(b'["spawn", "h", "echo"]') == ("spawn", ["h", "echo"])
    with pytest.raises(ProtocolViolation):
        decode_request(b"\xff")
    with pytest.raises(ProtocolViolation):
        decode_request(b"[")
    with pytest.raises(InvalidRequest):
        decode_request(b'"ping"')


def test_replies_are_ascii_lines() -> None:
    assert encode_reply("pong") == b'{"type":"object","payload":"pong"}\n'
    line = encode_reply("\udcff caf\u00e9")  # an undecodable byte carried as a surrogate
    assert line.isascii() and line.endswith(b"\n")
    assert (
        encode_error("unknown_handle", "x")
        == b'{"type":"error","payload":{"code":"unknown_handle","message":"x"}}\n'
    )


def test_state_table_is_consistent() -> None:
    assert TRANSITIONS[State.DESTROYED] == frozenset()
    assert TRANSITIONS[State.STOPPED] == {State.ACTIVE, State.DESTROYED}  # start, destroy
    assert ALLOWED["spawn"] == {State.ACTIVE}
    assert ALLOWED["start"] == {State.STOPPED}


def test_spec_sends_the_setup_then_the_plans_mounts_and_cgroups() -> None:
    plan = LaunchPlan(
        root_dir=Path("/d/rootfs"),
        root_mount=Mount("overlay", "overlay", "/", (), "lowerdir=/b,upperdir=/u,workdir=/w"),
        mounts=[Mount("none", "/host/data", "/data", ("bind", "ro"))],
        cgroup_procs=[Path("/sys/fs/cgroup/pids/corral/h/cgroup.procs")],
    )
    setup = spec.render_setup(plan, "h", Path("/d/init.sock"), label=Path("/d")).splitlines()
    assert setup[:3] == ["label\t/d", "userns\t0\t4294967295", "root\t/d/rootfs"]
    assert setup[3].startswith("mount\toverlay\toverlay\t/\t-\tlowerdir=")
    proc = setup.index("mount\tproc\tproc\t/proc\tnosuid,nodev,noexec,mkdir\t-")
    # The launcher applies what comes before the proc mount, PID 1 the rest.
    early, late = setup[:proc], setup[proc + 1 :]
    assert early[-3:] == ["hostname\th", "loopback", "socket\t/d/init.sock"]

    def targets(lines: list[str]) -> list[str]:
        return [line.split("\t")[3] for line in lines if line.startswith("mount\t")]

    assert not any(t.startswith("/proc") for t in targets(early))
    assert all(t.startswith("/proc/") for t in targets(late)) and len(late) > 5
    assert spec.render_rest(plan).splitlines() == [
        "mount\tnone\t/host/data\t/data\tbind,ro\t-",
        "cgroup\t/sys/fs/cgroup/pids/corral/h/cgroup.procs",
        "end",
    ]
    with pytest.raises(spec.SpecError):
        spec.render_setup(LaunchPlan(root_dir=Path("/a\tb")), "h", Path("/s"), label=Path("/a"))
    # The filters come right after the label, in hex ("-": none): the container's, then a
    # privileged job's and an unprivileged one's own. Without a rest, each job loads its
    # kind's whole filter; with one, PID 1 loads the privileged filter, unprivileged jobs
    # the rest on top.
    for filters, fields in [
        (Filters(bytes(range(8)), bytes(16)), ["-", "0" * 32, "0001020304050607"]),
        (Filters(bytes(range(8)), bytes(16), bytes(8)), ["0" * 32, "-", "0" * 16]),
        (Filters(bytes(range(8)), bytes(16), b""), ["0" * 32, "-", "-"]),
    ]:
        rendered = spec.render_setup(plan, "h", Path("/d/init.sock"), Path("/d"), filters)
        assert rendered.splitlines()[:4] == [
            "label\t/d",
            "\t".join(["seccomp", *fields]),
            "userns\t0\t4294967295",
            "root\t/d/rootfs",
        ]


def test_spec_of_a_container_with_ids_of_its_own() -> None:
    """The block in the userns line; the root overlay, binds and /dev tmpfs theirs."""
    plan = LaunchPlan(
        root_dir=Path("/d/rootfs"),
        root_mount=Mount("overlay", "overlay", "/", (), "lowerdir=/b,upperdir=/u,workdir=/w"),
        mounts=[
            Mount("ext4", "/d/disk.img", "/d/disk", ("loop", "host")),
            Mount("none", "/host/data", "/data", ("bind", "ro")),
        ],
    )
    ids = IdMap(0x10000000, 65536)
    setup = spec.render_setup(plan, "h", Path("/d/init.sock"), Path("/d"), None, ids).splitlines()
    assert setup[1] == "userns\t268435456\t65536"
    assert setup[3] == "mount\text4\t/d/disk.img\t/d/disk\tloop,host\t-"  # the host's own
    assert setup[4].startswith("mount\toverlay\toverlay\t/\tidmap\tlowerdir=")
    assert (
        "mount\ttmpfs\ttmpfs\t/dev\tnosuid,noexec,mkdir\tmode=755,size=1024k,uid=268435456,gid=268435456"
        in setup
    )
    assert (
        spec.render_rest(plan, ids).splitlines()[0]
        == "mount\tnone\t/host/data\t/data\tbind,ro,idmap\t-"
    )


def test_spec_of_a_fuse_container() -> None:
    """``admin`` right after the ids (the init reads it before it pivots), and /dev/fuse."""
    plan = LaunchPlan(root_dir=Path("/d/rootfs"))
    plain = spec.render_setup(plan, "h", Path("/d/init.sock"), Path("/d")).splitlines()
    setup = spec.render_setup(plan, "h", Path("/d/init.sock"), Path("/d"), admin=True).splitlines()
    assert setup[1:3] == ["userns\t0\t4294967295", "admin"]
    fuse = "mknod\t/dev/fuse\tc\t10\t229\t666"
    assert set(setup) - set(plain) == {"admin", fuse}
    assert setup.index(fuse) == setup.index("mknod\t/dev/tty\tc\t5\t0\t666") + 1


def test_spawn_message_format() -> None:
    message = spawn_message(
        JobRequest(
            job_id=4,
            argv=("/bin/sh", "-c", "echo hi"),
            env=(("A", "1"),),
            user="nobody",
            rlimits=(("nofile", 10, None),),
        )
    )
    assert decode(message) == [
        "spawn",
        "id=4",
        "privileged=0",
        "user=nobody",
        "env=A=1",
        "rlimit=nofile:10:unlimited",
        "arg=/bin/sh",
        "arg=-c",
        "arg=echo hi",
    ]
    assert encode("a", "b") == b"a\0b\0"


def test_depot_keeps_two_slots_and_survives_a_torn_write(tmp_path: Path) -> None:
    from supervisor.depot import Depot, read_record

    depot = Depot(tmp_path / "depot")
    depot.open()
    depot.create("h")
    for n in range(3):
        depot.save("h", {"n": n, "pad": "x" * (30 - 10 * n)})  # shorter each time
    assert sorted(p.name for p in depot.path("h").glob("record.*")) == ["record.0", "record.1"]
    assert read_record(depot.path("h")) == {"n": 2, "pad": "x" * 10}
    # As if the daemon died writing version 3 (n=2) over slot 1, which held version 1.
    slot = depot.path("h") / "record.1"
    blob = slot.read_bytes()
    start = blob.index(b"\n") + 1  # the JSON: half new, half old
    slot.write_bytes(blob[:start] + b'{"n": 0, "pad"' + blob[start + 14 :])
    assert dict(Depot(depot.root).records()) == {"h": {"n": 1, "pad": "x" * 20}}
    slot.write_bytes(b"corral-record 4 999 0\n{}")
    assert read_record(depot.path("h")) == {"n": 1, "pad": "x" * 20}


def test_depot_reads_and_converts_a_record_of_the_old_layout(tmp_path: Path) -> None:
    from supervisor.depot import Depot, read_record

    old = tmp_path / "depot" / "h"
    old.mkdir(parents=True)
    (old / "state.6.json").write_text('{"n": 6}')
    (old / "state.7.json").write_text('{"n": 7, "tor')  # torn by a crash
    depot = Depot(tmp_path / "depot")
    assert dict(depot.records()) == {"h": {"n": 6}}
    assert sorted(p.name for p in old.iterdir()) == ["record.1"]  # version 7, rewritten
    depot.save("h", {"n": 8})
    assert read_record(old) == {"n": 8}


def test_depot_discard_moves_a_container_out_of_the_records(tmp_path: Path) -> None:
    from supervisor.depot import Depot

    depot = Depot(tmp_path / "depot")
    depot.open()
    for handle in ("h", "k"):
        depot.create(handle)
        depot.save(handle, {"handle": handle})
    trash = depot.discard("h")
    assert trash is not None and (trash / "record.1").exists()
    assert dict(depot.records()) == {"k": {"handle": "k"}}
    depot.create("h")  # the handle is free again, and so is its next trash name
    second = depot.discard("h")
    assert second is not None and second != trash and depot.trash_left() == sorted([trash, second])
    assert depot.discard("never-made") is None


def test_depot_recycles_a_destroyed_directory_emptied_for_the_next_create(tmp_path: Path) -> None:
    from supervisor import depot as depot_module
    from supervisor.depot import Depot, read_record

    depot = Depot(tmp_path / "depot")
    depot.open()
    depot.spare_directories = {"upper": 0o755}  # as a plugin declares it
    old = depot.create("old")
    depot.save("old", {"secret": 1})
    depot.save("old", {"secret": 2})
    (old / "jobs" / "1").mkdir()
    (old / "jobs" / "1" / "stdout").write_text("old output")
    (old / "upper" / "tmp").mkdir(parents=True)
    (old / "upper" / "tmp" / "secret").write_text("x")
    (old / "upper").chmod(0o700)  # as a container's chmod of / leaves it
    (old / "other").mkdir()
    (old / "init.sock").write_text("")
    trash = depot.discard("old")
    assert trash is not None and depot.recycle(trash)
    (spare,) = depot.spare.iterdir()
    assert sorted(p.name for p in spare.iterdir()) == ["jobs", "record.0", "record.1", "upper"]
    assert not any((spare / "jobs").iterdir()) and not any((spare / "upper").iterdir())
    assert (spare / "upper").stat().st_mode & 0o7777 == 0o755
    assert (spare / "record.0").stat().st_size == (spare / "record.1").stat().st_size == 0
    new = depot.create("new")  # the spare, renamed
    assert not spare.exists() and read_record(new) is None
    depot.save("new", {"n": 1})
    assert dict(depot.records()) == {"new": {"n": 1}}
    with pytest.raises(FileExistsError):
        depot.create("new")
    # Spares are bounded; a daemon's spares are deleted with the trash at the next start.
    handles = [f"c{i}" for i in range(depot_module.MAX_SPARES + 1)]
    for handle in handles:
        depot.create(handle)
    recycled = [depot.recycle(depot.discard(handle) or Path("/nonexistent")) for handle in handles]
    assert recycled == [True] * depot_module.MAX_SPARES + [False]
    again = Depot(tmp_path / "depot")
    again.open()
    assert not any(again.spare.iterdir())
    assert len(again.trash_left()) >= depot_module.MAX_SPARES


def test_stream_chunk_lines() -> None:
    import base64
    import json

    from supervisor.protocol import encode_stream_chunk

    raw = b"\xff\x00ab\n"
    line = encode_stream_chunk("stdout", raw, "base64")
    assert json.loads(line) == ["stdout", base64.b64encode(raw).decode()]
    name, text = json.loads(encode_stream_chunk("stderr", raw, "utf-8"))
    assert name == "stderr" and text.encode("utf-8", "surrogateescape") == raw


def test_request_stats_count_time_and_bucket() -> None:
    from supervisor.requests import BUCKETS, RequestStats

    stats = RequestStats()
    stats.record("info", 0.0004, failed=False)
    stats.record("info", 0.003, failed=True)
    stats.record("info", 99.0, failed=False)
    info = stats.commands["info"]
    assert (info.count, info.errors) == (3, 1)
    assert info.seconds == pytest.approx(99.0034)
    assert info.buckets[BUCKETS.index(0.0005)] == 1
    assert info.buckets[BUCKETS.index(0.005)] == 1
    assert info.buckets[-1] == 1  # past the last bound
    assert sum(info.buckets) == info.count


def test_id_blocks_never_give_one_block_twice() -> None:
    blocks = IdBlocks(first_id=1 << 20, blocks=3)
    a, b = blocks.take(), blocks.take()
    assert (a.first, b.first, a.count) == (1 << 20, (1 << 20) + 65536, 65536)
    assert blocks.claim((1 << 20) + 2 * 65536).first == (1 << 20) + 2 * 65536  # restored
    with pytest.raises(LookupError, match="all 3 blocks"):
        blocks.take()
    blocks.give_back(a)
    blocks.give_back(HOST_IDS)  # the host's ids are no block: nothing to give back
    assert blocks.take() == a
    with pytest.raises(ValueError, match="starts no block"):
        blocks.claim((1 << 20) + 5)
    blocks.give_back(IdMap(1 << 30, 65536))  # a block of a range configured before: ignored
