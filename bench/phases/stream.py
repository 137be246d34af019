"""Stream: a job writing N bytes to stdout, read with ``stream`` from the first byte to the end.

Each job is also timed writing to a file in its container with nobody streaming:
busybox's own producers are slow, and that speed is a ceiling for the stream.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.daemon import BenchDaemon
from bench.host import cpu_ticks, log
from bench.phases.common import Bench
from bench.stats import summarize
from supervisor.client import Client


def measure(bench: Bench, size: int, runs: int) -> dict[str, Any]:
    """Stream a job's *size* bytes of stdout; also time the same job writing to a file alone."""
    daemon = bench.daemon
    out: dict[str, Any] = {"bytes": size, "runs": runs, "variants": {}}
    # A producer faster than any stream: this one shows Corral's own ceiling.
    dd = f"dd if=/dev/zero bs=1000000 count={size // 1_000_000} 2>/dev/null"
    variants = {
        "yes | head, utf-8": (f"yes | head -c {size}", "utf-8"),
        "yes | head, raw": (f"yes | head -c {size}", "raw"),
        # Zero bytes as UTF-8 JSON would be "\u0000", six bytes each: base64.
        "head /dev/zero, base64": (f"head -c {size} /dev/zero", "base64"),
        "dd bs=1MB /dev/zero, base64": (dd, "base64"),
        "dd bs=1MB /dev/zero, raw": (dd, "raw"),
    }
    for label, (script, encoding) in variants.items():
        rates: list[float] = []
        alone: list[float] = []
        errs: list[str] = []
        cpu: list[dict[str, float]] = []
        for _ in range(runs):
            try:
                rate, usage = stream_once(daemon, script, encoding, size)
                rates.append(rate)
                cpu.append(usage)
                alone.append(job_alone(daemon, script, size))
            except Exception as exc:
                errs.append(f"{type(exc).__name__}: {exc}")
                log(f"stream {label} failed: {errs[-1]}")
        out["variants"][label] = {
            "script": script,
            "encoding": encoding,
            "mb_per_s": summarize(rates),
            "samples": rates,
            "job_alone_mb_per_s": summarize(alone),
            "job_alone_samples": alone,
            "cpu": cpu,
            "errors": errs,
        }
    return out


def job_alone(daemon: BenchDaemon, script: str, size: int) -> float:
    """MB/s of the job writing to a file in its own container, nobody streaming."""
    with daemon.client(timeout=600) as c:
        handle = c.create()
        try:
            t0 = time.perf_counter()
            status, _, err = c.run(handle, f"{script} > $HOME/bench.out; rm -f $HOME/bench.out")
            elapsed = time.perf_counter() - t0
            if status != 0:
                raise RuntimeError(f"job alone exited {status}: {err}")
            return size / 1e6 / elapsed
        finally:
            c.destroy(handle)


def stream_once(
    daemon: BenchDaemon, script: str, encoding: str, size: int
) -> tuple[float, dict[str, float]]:
    """MB/s of one streamed run of *script*, and the CPU seconds of the daemon and the client.

    Raises:
        RuntimeError: the stream did not bring *size* bytes.
    """
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    with daemon.client(timeout=600) as c:
        handle = c.create()
        try:
            cpu0, _ = cpu_ticks(daemon.pid)
            client0 = time.process_time()
            t0 = time.perf_counter()
            job = c.spawn(handle, script)
            got = streamed_bytes(c, handle, job, encoding)
            elapsed = time.perf_counter() - t0
            cpu1, _ = cpu_ticks(daemon.pid)
            usage = {
                "seconds": elapsed,
                "daemon_cpu_s": (cpu1 - cpu0) * tick / 1000,
                "client_cpu_s": time.process_time() - client0,
            }
            if got != size:
                raise RuntimeError(f"streamed {got} bytes, expected {size}")
            return got / 1e6 / elapsed, usage
        finally:
            c.destroy(handle)


def streamed_bytes(c: Client, handle: str, job: int, encoding: str) -> int:
    """The bytes of stdout *job* wrote, as ``stream`` brings them in *encoding*."""
    if encoding == "raw":  # the bytes themselves after each line: nothing to decode
        return sum(len(data) for name, data in c.stream_bytes(handle, job) if name == "stdout")
    got = 0
    opts = {"encoding": "base64"} if encoding == "base64" else {}
    for name, chunk in c.stream(handle, job, **opts):
        if name != "stdout":
            continue
        # Count decoded bytes without decoding: the client's CPU is measured too.
        if encoding == "base64":
            got += len(chunk) // 4 * 3 - chunk[-2:].count("=")
        else:
            got += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogateescape"))
    return got
