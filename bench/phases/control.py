"""Control plane: ``ping`` and ``info`` with 1, 10 and 100 clients, containers present.

Each client is a process of its own (fork) with its own blocking connection,
sending the next request as soon as the reply arrives, so the daemon, not the
clients' event loop, is what is measured.
"""

from __future__ import annotations

import array
import json
import multiprocessing
import os
import time
from contextlib import suppress
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bench.host import cpu_ticks, log
from bench.phases.common import Bench
from bench.stats import summarize
from supervisor.client import Client


def measure(bench: Bench, containers: int, levels: list[int], duration: float) -> dict[str, Any]:
    """With *containers* present, each request type at each number of clients in *levels*."""
    daemon = bench.daemon
    out: dict[str, Any] = {"containers": containers, "duration_s": duration, "levels": {}}
    handles: list[str] = []
    keeper = daemon.client()  # holds the containers' references for the phase
    try:
        t0 = time.perf_counter()
        for _ in range(containers):
            handles.append(keeper.create())
        out["create_all_s"] = time.perf_counter() - t0
        for command in ("ping", "info"):
            for clients in levels:
                log(f"  {command} x {clients} clients")
                out["levels"][f"{command}/{clients}"] = load(
                    bench, command, clients, handles, duration
                )
    finally:
        t0 = time.perf_counter()
        for h in handles:
            with suppress(Exception):
                keeper.destroy(h)
        out["destroy_all_s"] = time.perf_counter() - t0
        keeper.close()
    return out


def load(
    bench: Bench, command: str, clients: int, handles: list[str], duration: float
) -> dict[str, Any]:
    """*clients* processes sending *command* for *duration* s after a warm-up: latency
    summary (ms), throughput, errors and the daemon's CPU use."""
    daemon = bench.daemon
    ctx = multiprocessing.get_context("fork")
    warm = min(1.0, duration / 4)
    # Every client is forked and connected before the start, so none measures the others' start.
    start = time.monotonic() + 1.0 + clients * 0.01
    stop = start + warm + duration
    pipes: list[Connection] = []
    procs: list[BaseProcess] = []
    latencies = array.array("d")
    errors = 0
    try:
        for i in range(clients):
            recv, send = ctx.Pipe(duplex=False)
            handle = handles[i % len(handles)] if handles else ""
            p = ctx.Process(
                target=_load_worker,
                args=(str(daemon.socket), command, handle, start, start + warm, stop, send),
            )
            p.start()
            send.close()
            pipes.append(recv)
            procs.append(p)
        tick = 1000 / os.sysconf("SC_CLK_TCK")
        time.sleep(max(0.0, start + warm - time.monotonic()))
        cpu0, _ = cpu_ticks(daemon.pid)
        time.sleep(max(0.0, stop - time.monotonic()))
        cpu1, _ = cpu_ticks(daemon.pid)
        for recv, client in zip(pipes, procs, strict=False):
            try:
                data = recv.recv_bytes()
                errors += int.from_bytes(data[:8], "little")
                latencies.frombytes(data[8:])
            except EOFError:
                errors += 1
            client.join(timeout=30)
    finally:
        # Interrupted (Ctrl-C, SIGTERM), a client blocks writing its latencies to a pipe
        # nobody reads, and the exit would wait for it forever.
        for client in procs:
            if client.is_alive():
                client.kill()
                client.join()
    ms = [x * 1000 for x in latencies]
    stats = summarize(ms)
    stats.update(
        {
            "clients": clients,
            "requests": len(ms),
            "throughput_per_s": len(ms) / duration,
            "errors": errors,
            "daemon_cpu_percent": (cpu1 - cpu0) * tick / (duration * 1000) * 100,
        }
    )
    return stats


def _load_worker(
    sock: str,
    command: str,
    handle: str,
    start: float,
    record_from: float,
    stop: float,
    out: Connection,
) -> None:
    """One load client: its own connection; records latencies of requests in [record_from, stop)."""
    lat = array.array("d")
    errors = 0
    try:
        c = Client(sock, timeout=30)
        request = json.dumps([command, handle] if command == "info" else [command]).encode() + b"\n"
        while time.monotonic() < start:
            time.sleep(min(0.01, max(0.0, start - time.monotonic())))
        # The raw socket and line reader: the Client's own parsing would be measured too.
        sock_ = c.sock
        readline = c.file.readline
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                break
            sock_.sendall(request)
            line = readline()
            t1 = time.monotonic()
            if not line or b'"type":"error"' in line.replace(b" ", b""):
                errors += 1
                if not line:
                    break
                continue
            if t0 >= record_from and t1 <= stop:
                lat.append(t1 - t0)
        c.close()
    except Exception:
        errors += 1
    out.send_bytes(errors.to_bytes(8, "little") + lat.tobytes())
    out.close()
