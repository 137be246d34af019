"""What the phases share: the run's state, the round-robin, the daemon's CPU per call."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon import BenchDaemon
from bench.host import Janitor, cpu_ticks, log, processes, timed
from bench.peers import Peers

#: A tool of the round-robin: one run, its wall ms (raises when it fails).
Tool = Callable[[], float]


@dataclass
class Bench:
    """The run as the phases see it: the daemon, the peers, settings, and where errors go."""

    daemon: BenchDaemon
    peers: Peers
    janitor: Janitor
    #: The results' "errors", by phase (or phase/tool).
    errors: dict[str, Any]
    #: Rounds of the round-robin run before the recorded ones.
    warmup: int
    #: Where RESULTS.md, results.json and the profile files go.
    out: Path
    #: False during warm-up rounds, whose samples are dropped.
    recording: bool = True


def timer(make: Callable[[], list[str]]) -> Tool:
    """A tool of the round-robin: run a fresh command line from *make*, return its wall ms."""
    return lambda: timed(make())


def run_true(client: Any, handle: str) -> float:
    """One Corral run of /bin/true in *handle* over *client*'s open connection; its wall ms."""
    t0 = time.perf_counter()
    status, _, err = client.run(handle, "/bin/true")
    ms = (time.perf_counter() - t0) * 1000
    if status != 0:
        raise RuntimeError(f"/bin/true exited {status}: {err}")
    return ms


def add_cold_peers(bench: Bench, tools: dict[str, Tool], phase: str) -> None:
    """Add ``crun run`` and bwrap on the bench's rootfs to *tools*, each that runs here;
    name the others' reasons in the errors of *phase*."""
    peers = bench.peers
    for peer in (peers.crun, peers.bwrap):
        if peer.available and peers.check(peer.cold_label, peer.cold_cmd()):
            tools[peer.cold_label] = timer(peer.cold_cmd)
        else:
            bench.errors[f"{phase}/{peer.cold_label}"] = peers.errors.get(peer.cold_label, "absent")


def interleave(bench: Bench, tools: dict[str, Tool], n: int) -> dict[str, list[float]]:
    """Round-robin: each iteration runs every tool once, starting at a rotating tool.

    Drift (other work on the machine) then hits all tools alike. A tool failing 3
    times is dropped, with an error.
    """
    samples: dict[str, list[float]] = {name: [] for name in tools}
    failures: dict[str, int] = dict.fromkeys(tools, 0)
    names = list(tools)
    warmup = bench.warmup
    # The first `warmup` rounds are run but not recorded.
    for i in range(warmup + n):
        recording = bench.recording = i >= warmup
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            if name not in tools:
                continue
            try:
                ms = tools[name]()
            except Exception as exc:
                failures[name] += 1
                log(f"{name} failed: {exc}")
                if failures[name] >= 3:
                    bench.errors[f"{name}"] = f"dropped after 3 failures: {exc}"
                    del tools[name]
                continue
            if recording:
                samples[name].append(ms)
        if (i + 1) % 50 == 0:
            log(f"  round {i + 1}/{warmup + n}")
    bench.recording = True
    return samples


def daemon_cpu_per_call(daemon: BenchDaemon, fn: Callable[[], Any], n: int) -> dict[str, float]:
    """CPU ms per call of the daemon itself and of the processes it and its zygote reaped
    (launchers, container inits with their jobs), over *n* calls."""
    tick = 1000 / os.sysconf("SC_CLK_TCK")

    def ticks() -> tuple[int, int]:
        own, kids = cpu_ticks(daemon.pid)
        for proc in processes():  # the zygote: alive, so not in the daemon's children's
            if proc.ppid == daemon.pid and proc.argv[1:2] == [b"zygote"]:
                zygote_own, zygote_kids = cpu_ticks(proc.pid)
                kids += zygote_own + zygote_kids
        return own, kids

    own0, kids0 = ticks()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    wall = (time.perf_counter() - t0) * 1000 / n
    own1, kids1 = ticks()
    return {
        "daemon": (own1 - own0) * tick / n,
        "daemon_children": (kids1 - kids0) * tick / n,
        "wall": wall,
        "calls": n,
    }
