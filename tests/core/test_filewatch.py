"""The directory watch that wakes ``stream`` readers at each write of a job's output."""

from __future__ import annotations

from pathlib import Path

import trio

from supervisor.filewatch import DirectoryWatch


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
