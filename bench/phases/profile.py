"""Profile: py-spy on the daemon during cold runs (not part of the timed figures).

Three passes: a CPU flame graph, collapsed stacks for CPU and for wall time
including idle; the collapsed stacks are summarized by :func:`analyse_collapsed`.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.host import DEVNULL, PY_SPY
from bench.phases.common import Bench
from supervisor.testing import REPO


def measure(bench: Bench, iterations: int) -> dict[str, Any]:
    """Three py-spy passes of *iterations* cold runs each; files in the run's out dir."""
    daemon = bench.daemon
    if not PY_SPY.exists():
        return {"error": f"{PY_SPY} not found (pip install py-spy into the venv)"}

    def loop() -> None:
        for _ in range(iterations):
            with daemon.client() as c:
                h = c.create()
                c.run(h, "/bin/true")
                c.destroy(h)

    out: dict[str, Any] = {"iterations": iterations}
    passes = {
        "svg": (["--format", "flamegraph"], bench.out / "profile-cold.svg"),
        "cpu": (["--format", "raw"], bench.out / "profile-cold-cpu.txt"),
        "wall": (["--format", "raw", "--idle"], bench.out / "profile-cold-wall.txt"),
    }
    for label, (flags, path) in passes.items():
        cmd = [
            str(PY_SPY),
            "record",
            "--pid",
            str(daemon.pid),
            "--rate",
            "250",
            *flags,
            "-o",
            str(path),
        ]
        spy = subprocess.Popen(cmd, stdin=DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.5)  # py-spy attaches before the loop starts
        t0 = time.perf_counter()
        try:
            loop()
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                spy_out = spy.communicate(timeout=60)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                spy.kill()
                spy_out = spy.communicate()[0].decode(errors="replace")
        out[f"{label}_loop_s"] = time.perf_counter() - t0
        if not path.exists():
            out[f"{label}_error"] = spy_out[-500:]
            continue
        out[f"{label}_file"] = (
            str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        )
        if label in ("cpu", "wall"):
            out[label] = analyse_collapsed(path)
    return out


def analyse_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Where corrald's samples went, from py-spy's collapsed stacks.

    Samples are split into the trio thread (stacks through ``unrolled_run``) and
    trio's worker threads (``to_thread``); a worker waiting for work
    (``WorkerThread._work`` as the leaf) and the trio thread waiting in epoll
    (``get_events``) are idle, whatever py-spy decided (its idle detection misses
    both here). Reported: the share of
    every sample per Corral function (inclusive), the leaf functions of busy
    samples (self), and the Corral function nearest to each busy leaf.
    """
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    nearest: dict[str, int] = {}
    kinds = {
        "trio thread busy": 0,
        "trio thread idle (epoll)": 0,
        "worker busy": 0,
        "worker idle": 0,
        "other": 0,
    }
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = [_frame_name(f) for f in stack.split(";") if f]
        if not names:
            continue
        leaf = names[-1]
        in_trio = any(n.startswith("run (trio/_core/_run.py)") for n in names)
        in_worker = any(n.startswith("WorkerThread._work ") for n in names)
        if in_trio:
            kind = (
                "trio thread idle (epoll)"
                if leaf.startswith("EpollIOManager.get_events")
                else "trio thread busy"
            )
        elif in_worker:
            kind = "worker idle" if leaf.startswith("WorkerThread._work ") else "worker busy"
        else:
            kind = "other"
        kinds[kind] += count
        if "idle" in kind:
            continue
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for name in set(names):
            if _is_corral(name):
                incl_counts[name] = incl_counts.get(name, 0) + count
        corral_frames = [n for n in names if _is_corral(n)]
        if corral_frames:
            nearest[corral_frames[-1]] = nearest.get(corral_frames[-1], 0) + count

    def ranked(counts: dict[str, int]) -> list[list[Any]]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * c / total, 1)] for name, c in best]

    return {
        "samples": total,
        "kinds_percent": {k: round(100 * v / total, 1) if total else 0 for k, v in kinds.items()},
        "top_self_percent": ranked(self_counts),
        "top_corral_inclusive_percent": ranked(incl_counts),
        "top_corral_nearest_percent": ranked(nearest),
    }


def _is_corral(name: str) -> bool:
    """A function of Corral's own code (not the daemon's entry point, which holds every sample)."""
    if name.startswith(("main (supervisor/daemon.py)", "<module> (supervisor/daemon.py)")):
        return False
    return "(supervisor/" in name or "(plugins/" in name


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:LINE)"
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("/work/main/", "site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/work/main/":
                file = "/" + file
            break
    return f"{func} ({file})"
