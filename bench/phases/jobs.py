"""Jobs people talk to: keystroke to echo through a terminal job, and ``signal`` delivery.

- Keystroke: a terminal job runs ``cat`` on its terminal made raw with its echo
  off (``cat`` sends each byte back, as an editor or a remote shell echoes), one
  byte is written with ``stdin`` and the round trip ends when ``stream``, on
  another connection, brings it back. The floor is the same round trip through a pty made
  on the host (Python's ``pty``, ``cat`` on its slave), no daemon.
- Signal: ``signal`` USR1 to a running job that traps it, from the request to the
  reply (the init has sent the signal by then).
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
import tty
from typing import Any

from bench.host import log
from bench.phases.common import Bench
from bench.stats import summarize


def measure(bench: Bench, keystrokes: int, signals: int) -> dict[str, Any]:
    """Round trips of *keystrokes* bytes, each through the daemon and through a host pty,
    and *signals* signal requests; latencies in ms."""
    out: dict[str, Any] = {"keystrokes": keystrokes, "signals": signals}
    with bench.daemon.client(timeout=60) as c:
        handle = c.create()
        try:
            log(f"  keystroke to echo x {keystrokes} (terminal job)")
            out["keystroke_ms"] = summarize(keystroke_daemon(bench, c, handle, keystrokes))
            log(f"  signal x {signals}")
            out["signal_ms"] = summarize(signal_delivery(c, handle, signals))
        finally:
            c.destroy(handle)
    log(f"  keystroke to echo x {keystrokes} (host pty)")
    out["host_pty_ms"] = summarize(keystroke_host(keystrokes))
    return out


def keystroke_daemon(bench: Bench, c: Any, handle: str, n: int) -> list[float]:
    job = c.spawn(handle, "stty raw -echo; echo ready; exec cat", tty={"rows": 24, "cols": 80})
    samples: list[float] = []
    with bench.daemon.client(timeout=60) as reader:
        chunks = reader.stream(handle, job)
        seen = ""
        while "ready" not in seen:
            seen += next(chunks)[1]
        for i in range(n):
            key = chr(ord("a") + i % 26)
            t0 = time.perf_counter()
            c.call("stdin", handle, job, key)
            got = ""
            while key not in got:
                got += next(chunks)[1]
            samples.append((time.perf_counter() - t0) * 1000)
        c.signal(handle, job, "KILL")
    c.link(handle, job)
    return samples


def keystroke_host(n: int) -> list[float]:
    master, slave = pty.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(["cat"], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    samples: list[float] = []
    try:
        for i in range(n):
            key = bytes([ord("a") + i % 26])
            t0 = time.perf_counter()
            os.write(master, key)
            got = b""
            while key not in got:
                select.select([master], [], [])
                got += os.read(master, 1024)
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return samples


def signal_delivery(c: Any, handle: str, n: int) -> list[float]:
    process = c.popen(handle, "trap : USR1; echo ready; while :; do sleep 1; done")
    for _, data in process.output():  # a signal before the trap would end the job
        if b"ready" in data:
            break
    process.close()
    job = process.id
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.signal(handle, job, "USR1")
        samples.append((time.perf_counter() - t0) * 1000)
    c.signal(handle, job, "KILL")
    c.link(handle, job)
    return samples
