"""Stream: a job writing N bytes to stdout, read with ``stream`` from the first byte to the end.

Each job is also timed writing to a file in its container with nobody streaming:
busybox's own producers are slow, and that speed is a ceiling for the stream.
Then :func:`slow_readers`: the daemon's memory while many clients stream a job's
output far slower than it comes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import ExitStack
from typing import Any

from bench.daemon import BenchDaemon
from bench.host import cpu_ticks, log, rss_kib
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
    try:
        out["slow_readers"] = slow_readers(bench)
    except Exception as exc:
        out["slow_readers"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"slow readers failed: {out['slow_readers']['error']}")
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


#: Slow readers: how many, how much each reads and how often, for how long.
SLOW_READERS = 100
SLOW_READ_BYTES = 4096
SLOW_READ_EVERY = 0.1
SLOW_SECONDS = 10.0
#: The job: about 20 MB/s of text for as long as it runs, far more than the readers take.
SLOW_PRODUCER = "while :; do yes | head -c 1000000; sleep 0.05; done"


def slow_readers(
    bench: Bench, readers: int = SLOW_READERS, seconds: float = SLOW_SECONDS
) -> dict[str, Any]:
    """The daemon's RSS while *readers* clients ``stream`` one job's output, each reading
    :data:`SLOW_READ_BYTES` every :data:`SLOW_READ_EVERY` s, for *seconds*: before,
    each second, and once they have gone."""
    daemon = bench.daemon
    out: dict[str, Any] = {
        "readers": readers,
        "seconds": seconds,
        "producer": SLOW_PRODUCER,
        "read_bytes": SLOW_READ_BYTES,
        "read_every_s": SLOW_READ_EVERY,
    }
    with daemon.client() as c:
        handle = c.create()
        try:
            time.sleep(0.5)
            out["rss_before_kib"] = rss_kib(daemon.pid)
            job = c.spawn(handle, SLOW_PRODUCER)
            request = json.dumps(["stream", handle, job, {}]).encode() + b"\n"
            samples: list[int] = []
            with ExitStack() as stack:
                socks = []
                for _ in range(readers):
                    s = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                    s.connect(str(daemon.socket))
                    s.sendall(request)
                    s.setblocking(False)
                    socks.append(s)
                start = time.monotonic()
                next_sample = start + 1
                while time.monotonic() - start < seconds:
                    for s in socks:
                        try:
                            s.recv(SLOW_READ_BYTES)
                        except BlockingIOError:
                            pass
                    time.sleep(SLOW_READ_EVERY)
                    if time.monotonic() >= next_sample:
                        samples.append(rss_kib(daemon.pid))
                        next_sample += 1
                out["written_mb"] = _output_mb(daemon, handle, job)
            time.sleep(1.0)
            out["rss_each_second_kib"] = samples
            out["rss_after_kib"] = rss_kib(daemon.pid)
        finally:
            c.destroy(handle)
    return out


def _output_mb(daemon: BenchDaemon, handle: str, job: int) -> float:
    """What the job has written so far (its stdout file in the depot), MB."""
    try:
        return (daemon.depot / handle / "jobs" / str(job) / "stdout").stat().st_size / 1e6
    except OSError:
        return float("nan")
