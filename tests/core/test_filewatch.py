"""The directory watch that wakes ``stream`` readers at each write of a job's output."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from supervisor.filewatch import DirectoryWatch
from supervisor.jobs import STREAM_WATCH_MAX, Job


def test_a_write_wakes_the_watch_with_the_files_name(tmp_path: Path) -> None:
    (tmp_path / "stdout").write_bytes(b"")

    async def main() -> list[set[str]]:
        watch = DirectoryWatch(tmp_path)
        try:
            seen = [await watch.wait(0.01)]  # nothing written yet
            with open(tmp_path / "stdout", "ab") as out:
                out.write(b"a")
            (tmp_path / "status").write_text("0\n")
            seen.append(await watch.wait(60))
            seen.append(await watch.wait(0.01))  # each write told once
            return seen
        finally:
            watch.close()

    assert trio.run(main) == [set(), {"stdout", "status"}, set()]


def test_a_stream_ends_at_the_exit_when_no_write_is_coming(tmp_path: Path) -> None:
    """The status was written before the reader watched (no write will wake it): the exit
    itself ends the stream, not the watch's timeout."""
    (tmp_path / "stdout").write_bytes(b"out")
    (tmp_path / "status").write_text("0\n")
    job = Job(1, tmp_path)

    async def main() -> tuple[list[bytes], float]:
        chunks: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def exit_later() -> None:
                await trio.sleep(0.05)
                job.finish(0)

            nursery.start_soon(exit_later)
            async for _, chunk in job.stream(1 << 20):
                chunks.append(chunk)
        return chunks, trio.current_time()

    clock = trio.testing.MockClock(autojump_threshold=0)
    chunks, ended = trio.run(main, clock=clock)
    assert chunks == [b"out"]
    assert ended < STREAM_WATCH_MAX  # 0.05 s of virtual time, not the watch's 0.25 s
