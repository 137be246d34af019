"""Shaping: what a bandwidth limit adds to a cold run (create with ``network.bandwidth``,
run /bin/true, destroy), against the same cold run without one, round-robin."""

from __future__ import annotations

import time
from typing import Any

from bench.phases.common import Bench, interleave
from bench.stats import summarize

#: 10 Mbit/s, bursts of 64 KiB.
BANDWIDTH = {"rate": 1_250_000, "burst": 65536}


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* recorded rounds of cold runs with and without a bandwidth limit."""
    daemon = bench.daemon
    creates: dict[str, list[float]] = {"plain": [], "limited": []}

    def cold(kind: str, config: dict[str, Any] | None) -> float:
        t0 = time.perf_counter()
        with daemon.client() as c:
            handle = c.create(config)
            t1 = time.perf_counter()
            status, _, err = c.run(handle, "/bin/true")
            c.destroy(handle)
        t2 = time.perf_counter()
        if status != 0:
            raise RuntimeError(f"/bin/true exited {status}: {err}")
        if bench.recording:
            creates[kind].append((t1 - t0) * 1000)
        return (t2 - t0) * 1000

    samples = interleave(
        bench,
        {
            "plain": lambda: cold("plain", None),
            "limited": lambda: cold("limited", {"network": {"bandwidth": BANDWIDTH}}),
        },
        n,
    )
    return {
        "bandwidth": BANDWIDTH,
        "samples_ms": samples,
        "stats": {k: summarize(v) for k, v in samples.items()},
        "create": {k: summarize(v) for k, v in creates.items()},
    }
