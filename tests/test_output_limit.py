"""The output cap holds without gaps: whichever process of a job writes, whenever.

The container's init copies each output stream from a pipe into its file and stops
at the cap, at the byte: a background child writing after the job's first process
exited, or a burst after a quiet start, cannot make the file on the host's disk
larger. The cut is told: the event, ``link``'s status 137, a ``["cut", STREAM]``
line of ``stream``.
"""

from __future__ import annotations

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
        status, out, _ = c.link(handle, job)
        assert status == 137 and len(out) == LIMIT  # killed for its output, as a shell says
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
