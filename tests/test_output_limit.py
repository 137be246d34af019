"""The output cap holds without gaps: whichever process of a job writes, whenever.

The container's init copies each output stream from a pipe into its file and stops
at the cap, at the byte: a background child writing after the job's first process
exited, or a burst after a quiet start, cannot make the file on the host's disk
larger. The cut is told: the event, ``link``'s status 137, a ``["cut", STREAM]``
line of ``stream``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.isolation.build import CFLAGS, SOURCE
from tests.conftest import Daemon, wait_until

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def capped(artifacts: tuple[Path, Path]) -> Iterator[Daemon]:
    d = Daemon(*artifacts, tables={"containers": {"output_limit": LIMIT}}).start()
    yield d
    d.close()


def _output_file(daemon: Daemon, handle: str, job: int) -> Path:
    return daemon.depot / handle / "jobs" / str(job) / "stdout"


def test_a_background_child_cannot_write_past_the_cap(capped: Daemon) -> None:
    """Its output counts, after the job's first process exited, and is cut at the cap."""
    with capped.client() as c:
        handle = c.create()
        job = c.spawn(handle, "(sleep 0.5; head -c 50000000 /dev/zero) & exit 0")
        wait_until(
            lambda: "command exceeded maximum output" in c.info(handle)["events"],
            timeout=30,
            what="the cut of the background child's output",
        )
        assert _output_file(capped, handle, job).stat().st_size == LIMIT
        status, out, _, report = c.link(handle, job, ended=True)
        assert status == 137 and len(out) == LIMIT  # killed for its output, as a shell says
        # The first process had exited by itself; the daemon's kill is still told.
        assert report["ended"] == {"exit_code": 0, "signal": None, "killed_by": "output_limit"}
        c.destroy(handle)


def test_a_burst_after_a_quiet_start_is_cut_at_the_byte(capped: Daemon) -> None:
    """No polling gap: 50 MB at once after a quiet second still leaves exactly the cap."""
    with capped.client() as c:
        handle = c.create()
        job = c.spawn(handle, "sleep 1; head -c 50000000 /dev/zero; echo survived >&2")
        lines = list(c.stream(handle, job, encoding="base64"))
        assert lines[-1] == ("cut", "stdout")
        assert _output_file(capped, handle, job).stat().st_size == LIMIT
        status, out, err = c.link(handle, job, encoding="base64")
        assert status == 137 and err == ""  # killed at the cut: "survived" never printed
        c.destroy(handle)


def test_output_up_to_the_cap_is_whole_and_not_cut(capped: Daemon) -> None:
    with capped.client() as c:
        handle = c.create()
        status, out, err = c.run(handle, f"yes x | head -c {LIMIT}; echo e >&2")
        assert (status, out, err) == (0, "x\n" * (LIMIT // 2), "e\n")
        c.destroy(handle)


def test_killed_by_output_limit_beside_the_containers_info(capped: Daemon) -> None:
    """``info`` with ``ended``: one fourth item (link/run), one final payload (stream)."""
    with capped.client() as c:
        handle = c.create()
        script = f"head -c {2 * LIMIT} /dev/zero"
        status, out, err, extra = c.run(handle, script, encoding="base64", ended=True, info=True)
        assert status == 137 and len(base64.b64decode(out)) == LIMIT and err == ""
        assert set(extra) == {"info", "ended"} and extra["info"]["state"] == "active"
        assert extra["ended"] == {"exit_code": None, "signal": 9, "killed_by": "output_limit"}
        assert "command exceeded maximum output" in extra["info"]["events"]
        job = c.spawn(handle, script)
        c.sock.sendall(
            json.dumps(
                ["stream", handle, job, {"encoding": "base64", "ended": True, "info": True}]
            ).encode()
            + b"\n"
        )
        lines: list[object] = []
        while not (lines and isinstance(lines[-1], dict)):
            lines.append(json.loads(c.file.readline()))
        assert lines[-2] == ["cut", "stdout"]
        final = lines[-1]["payload"]
        assert set(final) == {"info", "status", "ended"} and final["status"] == 137
        assert final["ended"]["killed_by"] == "output_limit"
        assert final["info"]["state"] == "active"
        c.destroy(handle)


def test_a_terminal_jobs_output_is_cut_at_the_cap(capped: Daemon) -> None:
    """A terminal's output goes through the same capped copy: cut at the byte, told alike."""
    with capped.client() as c:
        handle = c.create()
        job = c.spawn(handle, "yes x", tty={"rows": 24, "cols": 80})
        lines = list(c.stream(handle, job, encoding="base64"))
        assert lines[-1] == ("cut", "stdout")
        assert all(name == "stdout" for name, _ in lines[:-1])
        assert _output_file(capped, handle, job).stat().st_size == LIMIT
        status, out, err, report = c.link(handle, job, encoding="base64", ended=True)
        data = base64.b64decode(out)
        assert status == 137 and len(data) == LIMIT and err == ""
        assert data.startswith(b"x\r\nx\r\n")  # the terminal's own line ends
        assert report["ended"]["killed_by"] == "output_limit"
        assert "command exceeded maximum output" in c.info(handle)["events"]
        c.destroy(handle)


def test_a_terminal_jobs_other_process_groups_go_at_the_cut(capped: Daemon) -> None:
    """A shell with job control (``set -m``) may give a background job a group of its
    own, which the init's kill of the job's group misses: the job's cgroup takes it."""
    with capped.client() as c:
        handle = c.create()
        job = c.spawn(
            handle, "set -m; (exec yes x) & sleep 100; wait", tty={"rows": 24, "cols": 80}
        )
        status, _, _, report = c.link(handle, job, ended=True)
        assert status == 137 and report["ended"]["killed_by"] == "output_limit"
        wait_until(
            lambda: c.run(handle, "pidof yes sleep")[0] != 0,
            timeout=30,
            what="the job's other process groups to be killed",
        )
        c.destroy(handle)


def test_an_init_from_before_the_output_pumps_still_runs_jobs(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """A container whose init predates ``limit=`` (started before an upgrade) still runs
    jobs: their output goes to the files directly, uncapped, and the daemon says so."""
    source = tmp_path / "old_init.c"
    source.write_text(SOURCE.read_text().replace('!strcmp(key, "limit")', '!strcmp(key, "-")'))
    old_init = tmp_path / "corral-init"
    subprocess.run(["gcc", *CFLAGS, "-o", str(old_init), str(source)], check=True)
    d = Daemon(old_init, artifacts[1], tables={"containers": {"output_limit": LIMIT}}).start()
    try:
        with d.client() as c:
            handle = c.create()
            status, out, _ = c.run(handle, f"head -c {2 * LIMIT} /dev/zero | wc -c")
            assert (status, out.strip()) == (0, str(2 * LIMIT))
            assert d.log_records("container init too old to cap output; job output not capped")
    finally:
        d.close()
